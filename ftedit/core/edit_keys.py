"""The inputs ("keys") the edited matrices see on given texts, and orthonormal bases of them.

One forward pass up to the top edited block, stopped there by a hook, collects what each edited
module reads: on every token (the null-space statistics and the keep prompts) or only the last
(a subject read alone). ``keep_basis`` spans what an edit must leave alone, ``subject_basis``
what it may act on (ftedit/core/nullspace.py projects each step with them).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ftedit.core.batch import _chunks
from ftedit.core.chat import TRAIN_ASK, chat_prompt
from ftedit.core.hparams import FTHyperParams
from ftedit.core.keep import (
    keep_others,
    kl_texts,
    nearest_subjects,
    rank_layer,
    subject_vectors,
)
from ftedit.core.memo import WeightsMemo, weights_state
from ftedit.core.models import blocks_of, module_device
from ftedit.core.precision import to_device
from ftedit.core.prefixes import random_prefixes
from ftedit.errors import HParamsError

CONTEXTS_FILE = Path(__file__).parent / "data" / "contexts.txt"
# A stacked edit reads each earlier edit's subject key inside its question's teacher-forced
# pass where it can (_answer_passes), and _add_prior takes the eigenvectors of k k^T instead of
# an SVD of the keys k once they outnumber the inputs GRAM_ABOVE times; both read at call time
# so bench/speed_stack.py can time the older paths (rounding apart, the same basis).
HEADS_INSIDE = True
GRAM_ABOVE = 1.0
# ... and reads those questions from the lowest edited block up, the blocks below having run
# once for them (_below_cache; rounding apart, the same keys)
BELOW_CACHE = True


def _modules(model, hp: FTHyperParams) -> dict[int, torch.nn.Module]:
    names = dict(model.named_modules())
    out = {}
    for layer in hp.layers:
        mod = names.get(hp.rewrite_module_tmp.format(layer))
        if mod is None or not hasattr(mod, "weight") or mod.weight.dim() != 2:
            raise HParamsError(
                f"nullspace needs {hp.rewrite_module_tmp.format(layer)!r} to be a module with "
                "a 2-D weight (a Linear or GPT-2's Conv1D); set nullspace 0 for this template"
            )
        out[layer] = mod
    return out


def _in_dim(mod: torch.nn.Module) -> int:
    """Input width: Linear stores [out, in], GPT-2's Conv1D [in, out] (and has ``nf``)."""
    return mod.weight.shape[0] if hasattr(mod, "nf") else mod.weight.shape[1]


class _Stop(Exception):
    pass


@torch.no_grad()
def _each_key(
    model,
    tok,
    hp: FTHyperParams,
    texts: list[str] | list[tuple[str, str]],
    sink,
    desc: str | None,
    last: bool = False,
    but_last: bool = False,
    below: dict | None = None,
) -> int:
    """Run ``texts`` through the blocks up to the top edited one (a hook stops the forward
    there) and call ``sink(layer, keys [tokens, in])`` with each edited module's inputs at the
    non-pad tokens (``last``: at each text's last token only; ``but_last``: at all but it).
    A (prompt, target) pair is read teacher-forced, as the edit trains and zsRE scores it:
    the prompt's tokens then the target's but its last, keyed from the prompt's last token on
    (the positions that predict the target); a (prompt, target, n) triple is keyed at its
    n-th token as well (the last of a token prefix of the prompt, read in the same pass).
    ``below`` (:func:`_below_cache`) keeps the lowest edited block's inputs per batch, so a
    batch read again runs only the blocks from there up; its batches are the texts of one
    token length each, in the order given (no padding; a text added to the end changes one
    batch). Returns the number of tokens."""
    mods = _modules(model, hp)
    dev = model.get_input_embeddings().weight.device
    count = 0
    mask: list[torch.Tensor] = []
    top = max(mods)
    out_to = [sink]  # where grab sends the keys (a check of the replay collects them apart)

    def grab(layer):
        def hook(module, args):
            out_to[0](layer, args[0][mask[0]].float())
            if layer == top:
                raise _Stop

        return hook

    def spans(chunk) -> list[tuple[list[int], int, int]]:
        """Token ids, first keyed position, one more keyed position before it (-1: none)."""
        if isinstance(chunk[0], str):
            return [(x[:64], 0, -1) for x in tok(chunk, add_special_tokens=False)["input_ids"]]
        ps = tok([c[0] for c in chunk], add_special_tokens=False)["input_ids"]
        ts = tok([c[1] for c in chunk], add_special_tokens=False)["input_ids"]
        out = []
        for c, p, t in zip(chunk, ps, ts, strict=True):
            ids = p + t[:-1]
            cut = max(len(ids) - 64, 0)  # a long text keeps its end, where the target is
            also = c[2] - 1 - cut if len(c) > 2 and c[2] else -1
            if len(c) > 2 and c[2] and not 0 <= also < len(p) - 1 - cut:
                raise ValueError(f"_each_key: token {c[2]} of {c[0]!r} is not read apart")
            out.append((ids[cut:], max(len(p) - 1 - cut, 0), also))
        return out

    blocks = blocks_of(model, hp.rewrite_module_tmp) if below is not None else None
    if blocks is None or below.get("off"):
        below = None
        texts = sorted(texts, key=lambda t: len(t) if isinstance(t, str) else len(t[0] + t[1]))
        chunks = (spans(c) for c in _chunks(texts, 32))
    else:  # batches of one length each, in the order given: stable as texts are appended
        by_len: dict[int, list] = {}
        for e in spans(texts) if texts else []:
            by_len.setdefault(len(e[0]), []).append(e)
        chunks = (c for n in sorted(by_len) for c in _chunks(by_len[n], 32))
    handles = [m.register_forward_pre_hook(grab(i)) for i, m in mods.items()]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    used: set = set()
    try:
        for enc in tqdm(list(chunks), desc=desc, disable=desc is None):
            L = max(len(x) for x, _, _ in enc)
            ids = torch.tensor([x + [pad] * (L - len(x)) for x, _, _ in enc], device=dev)
            att = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x, _, _ in enc], device=dev)
            sel = att.bool()
            for i, (_, lo, also) in enumerate(enc):
                sel[i, :lo] = False
                if also >= 0:
                    sel[i, also] = True
            ends = (torch.arange(len(enc)), att.sum(1) - 1)  # right padding: last real token
            if last:
                sel = torch.zeros_like(sel)
                sel[ends] = True
            elif but_last:
                sel[ends] = False
            mask[:] = [sel]
            count += int(att.sum())
            if below is None:
                _forward(model, ids, att)
            else:
                used.add(_forward_below(model, blocks[min(mods) :], ids, att, below, out_to))
        if below is not None:  # what this read did not use (a batch an added text changed)
            for key in [k for k in below if isinstance(k, tuple) and k not in used]:
                del below[key]
    finally:
        for h in handles:
            h.remove()
    return count


def _forward(model, ids: torch.Tensor, att: torch.Tensor, first=None) -> tuple | None:
    """The model's forward on a batch, to the hook that stops it; with ``first`` (a block),
    what that block received: its positional arguments and keywords."""
    got = {}

    def keep(module, args, kwargs):
        got["in"] = (args, dict(kwargs))

    handle = first.register_forward_pre_hook(keep, with_kwargs=True) if first is not None else None
    try:
        model(input_ids=ids, attention_mask=att, use_cache=False)
    except _Stop:
        pass
    finally:
        if handle is not None:
            handle.remove()
    return got.get("in")


def _replay(blocks, state: tuple) -> None:
    """Run ``blocks`` from the inputs ``state`` the first of them received, to the hook that
    stops it (blocks may sit on different devices, as with a device_map)."""
    (h, *rest), kwargs = state
    try:
        for block in blocks:
            dev = module_device(block)
            if dev is not None and h.device != dev:
                h, rest, kwargs = to_device(dev, h), to_device(dev, rest), to_device(dev, kwargs)
            out = block(h, *rest, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
    except _Stop:
        pass


def _forward_below(model, blocks, ids, att, below: dict, out_to: list) -> tuple:
    """One batch through the edited blocks: from the inputs of the lowest one kept in
    ``below`` for these tokens, else the whole forward, keeping them. The first kept batch
    of a cache is also replayed and must give the keys the whole forward gave (as
    ft._Runner checks its shortcut); if not, the cache is turned off and every batch runs
    the whole forward. Returns the batch's key in ``below``."""
    key = (tuple(ids.shape), ids.cpu().numpy().tobytes())
    if key in below:
        _replay(blocks, below[key])
        return key
    if below.get("checked"):
        state = _forward(model, ids, att, blocks[0])
    else:
        sink, full, again = out_to[0], [], []
        out_to[0] = lambda layer, k: full.append((layer, k))
        try:
            state = _forward(model, ids, att, blocks[0])
            if state is not None and torch.is_tensor(state[0][0] if state[0] else None):
                out_to[0] = lambda layer, k: again.append((layer, k))
                _replay(blocks, state)
        finally:
            out_to[0] = sink
        for layer, k in full:
            sink(layer, k)
        same = len(full) == len(again) and all(
            a == b and torch.allclose(x, y, rtol=1e-4, atol=1e-5)
            for (a, x), (b, y) in zip(full, again, strict=False)
        )
        below["checked" if same else "off"] = True
        if not same:
            return key
    if state is not None and state[0] and torch.is_tensor(state[0][0]):
        below[key] = state
    return key


_BELOW = WeightsMemo()


def _below_cache(model, hp: FTHyperParams) -> dict | None:
    """Where :func:`_each_key` keeps the lowest edited block's inputs per batch: one dict,
    the same while no weight below that block (nor outside the blocks) is written (an edit
    of the blocks from there up leaves it valid: memo.weights_state of the others); None for
    a layout without a block list."""
    blocks = blocks_of(model, hp.rewrite_module_tmp)
    if blocks is None:
        return None
    upper = {id(p) for b in blocks[min(hp.layers) :] for p in b.parameters()}
    params = [p for p in model.parameters() if id(p) not in upper]
    key = (id(model), hp.rewrite_module_tmp, min(hp.layers), *weights_state(params))
    return _BELOW.get(key, dict)


def keep_basis(model, tok, hp: FTHyperParams, requests, prior=()) -> dict[int, torch.Tensor]:
    """Per edited layer, the orthonormal keep basis [in, r]: :func:`keep_bases`' two parts side
    by side."""
    return join_bases(*keep_bases(model, tok, hp, requests, prior))


def join_bases(own: dict[int, torch.Tensor], earlier: dict[int, torch.Tensor]):
    """The two parts of :func:`keep_bases` as one basis per layer (own columns first)."""
    return {i: torch.cat([q, earlier[i]], dim=1) if i in earlier else q for i, q in own.items()}


def keep_bases(
    model, tok, hp: FTHyperParams, requests, prior=()
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per edited layer, an orthonormal basis Q [in, r] of the inputs the edited module sees on
    the keep prompts (the relation prompt with the ``keep_subjects`` nearest other subjects,
    keep.kl_texts without the essence prompt, which names the edited subject itself), at every
    token. A step with D Q = 0 leaves those prompts' outputs exactly as they were: the first
    edited layer's outputs on them are unchanged, so the next one's inputs are too, and so on.
    ``keep_subject_keys`` > 0 adds the last-token input of that many nearest pool subjects, each
    read alone: the key a prompt that starts with the subject has there, whatever its template
    (one key per subject, so many subjects cost little rank). ``keep_subject_parts`` adds the
    inputs at the subject's tokens before its last (:func:`subject_parts`), which other
    subjects that start the same way give token for token. ``keep_subject_siblings`` adds the
    last-token inputs of :func:`subject_siblings`, ``keep_prior_edits`` those of
    :func:`prior_heads` (earlier edits ``prior`` the edit is stacked on) and, with
    ``keep_prior_answers``, their inputs where each reads its own answer: those earlier edits'
    directions come as a second dict, orthonormal and orthogonal to Q (empty: no earlier edit
    kept)."""
    texts = [t for t, guard in kl_texts(requests, keep_others(model, tok, requests, hp)) if guard]
    keys: dict[int, list[torch.Tensor]] = {i: [] for i in hp.layers}

    def sink(layer: int, k: torch.Tensor) -> None:
        keys[layer].append(k)

    _each_key(model, tok, hp, texts, sink, None)
    if hp.keep_subject_keys:
        at, tmpl = rank_layer(hp), hp.rewrite_module_tmp
        near = [
            nearest_subjects(model, tok, r.subject, hp.keep_subject_keys, at, tmpl)
            for r in requests
        ]
        subs = sorted({s for n in near for s in n})
        _each_key(model, tok, hp, subs, sink, None, last=True)
    if hp.keep_subject_parts:
        parts = subject_parts(requests)
        if parts:
            _each_key(model, tok, hp, parts, sink, None, but_last=True)
    if hp.keep_subject_siblings:
        sibs = subject_siblings(model, tok, requests, hp.keep_subject_siblings)
        if sibs:
            _each_key(model, tok, hp, sibs, sink, None, last=True)
    out = {layer: _span(torch.cat(ks).double().T.cpu()) for layer, ks in keys.items()}
    heads = prior_heads(model, tok, hp, requests, prior) if hp.keep_prior_edits else []
    if not heads:
        return out, {}
    earlier: dict[int, list[torch.Tensor]] = {i: [] for i in hp.layers}

    def sink_earlier(layer: int, k: torch.Tensor) -> None:
        earlier[layer].append(k)

    if hp.keep_prior_answers:  # read again at every stacked edit: from the edited blocks up
        heads, pairs = _answer_passes(tok, heads, prior, HEADS_INSIDE)
        below = _below_cache(model, hp) if BELOW_CACHE else None
        _each_key(model, tok, hp, pairs, sink_earlier, None, below=below)
    if heads:
        _each_key(model, tok, hp, heads, sink_earlier, None, last=True)
    extra = {
        layer: _add_prior(out[layer], torch.cat(ks).double().T.cpu(), hp.keep_prior_share)
        for layer, ks in earlier.items()
    }
    return out, extra


def _answer_passes(tok, heads: list[str], prior, inside=True) -> tuple[list[str], list[tuple]]:
    """The teacher-forced (question, answer) reads of the earlier edits whose ``heads`` are
    kept, each head's key read inside the first of them whose question starts with the head's
    tokens (the key is the same: a causal model reads a prefix alike inside the whole; one pass
    instead of two), and the heads that are not such a prefix, to be read alone (``inside``
    False: all of them)."""
    kept = set(heads)  # in the earlier edits' order: the next edit's read adds to the end
    pairs = list(dict.fromkeys((r.text, r.target_new) for r in prior if r.head in kept))
    if not inside:
        return heads, pairs
    head_of = {}  # question -> its head (an earlier edit's question is its prompt filled in)
    for r in prior:
        if r.head in kept:
            head_of.setdefault(r.text, r.head)
    texts = sorted(set(heads) | {q for q, _ in pairs} | {a for _, a in pairs})
    ids = dict(zip(texts, tok(texts, add_special_tokens=False)["input_ids"], strict=True))
    read, out = set(), []  # the heads read inside a question
    for q, a in pairs:
        h, n = head_of[q], len(ids[head_of[q]])
        ok = h not in read and n < len(ids[q]) and ids[q][:n] == ids[h]
        if ok and len(ids[q]) + len(ids[a]) <= 65:  # not cut to its last 64 tokens
            out.append((q, a, n))
            read.add(h)
        else:
            out.append((q, a))
    return [h for h in heads if h not in read], out


def _add_prior(Q: torch.Tensor, k: torch.Tensor, share: float) -> torch.Tensor:
    """What the earlier edits' keys ``k`` [in, n] add to the keep basis ``Q`` [in, r]: an
    orthonormal basis [in, r'] of their directions outside it, the strongest first, at most
    ``share`` of the input width of them (0: all), so the edit keeps room to act on its own
    subject however many edits came before (AlphaEdit keeps the principal directions of its
    accumulated keys the same way)."""
    Qd = Q.double()
    floor = k.norm(dim=0).max() * 1e-6  # below: rounding of keys Q already spans
    k = k - Qd @ (Qd.T @ k)
    if k.shape[1] <= GRAM_ABOVE * k.shape[0]:
        u, sv, _ = torch.linalg.svd(k, full_matrices=False)
    else:  # more keys than inputs (a long stack): eigenvectors of k k^T [in, in], the same
        # directions in a time flat in n (bench/speed_stack.py); the floor then also covers
        # eigh's rounding of a squared spectrum (in * eps of the largest), so no noise
        # direction is taken for a key's
        e, u = torch.linalg.eigh(k @ k.T)
        sv, u = e.flip(0).clamp(min=0).sqrt(), u.flip(1)
        floor = max(floor, sv[0] * (k.shape[0] * torch.finfo(k.dtype).eps) ** 0.5)
    r = int((sv > floor).sum())
    if share:
        r = min(r, int(share * k.shape[0]))
    return u[:, :r].float()


def subject_parts(requests) -> list[str]:
    """The texts whose tokens before the last give the keys of the subject's proper token
    prefixes (keep_subject_parts): each multi-word subject alone, after a space and at its place
    in the prompt ("Airbus A350": what "Airbus", "Airbus A", "Airbus A3" ... give; a causal
    model reads a prefix the same inside the whole). Single words give no text."""
    out = []
    for r in requests:
        if len(r.subject.split()) > 1:
            out += [r.subject, " " + r.subject, r.head]
    return list(dict.fromkeys(out))


@torch.no_grad()
def subject_siblings(model, tok, requests, n: int) -> list[str]:
    """Texts that end in a sibling of each multi-token subject: the subject with its last
    token replaced by one of the ``n`` tokens the model finds likeliest after the rest, other
    than the real one ("Airbus A380" for "Airbus A350"), alone, after a space and at its place
    in the prompt (keep_subject_siblings). Such a subject's last-token key is close to the
    edited one's, so an edit on the edited key alone moves it (a CounterFact neighbour can be
    "Airbus A380"); keeping it makes the step act on what tells them apart. Subjects of one
    token give none."""
    dev = model.get_input_embeddings().weight.device
    skip = set(tok.all_special_ids)
    out = []
    for r in requests:
        for head in ("", " ", r.prompt[: r.prompt.index("{}")]):
            ids = tok(head + r.subject, add_special_tokens=False)["input_ids"][:64]
            if len(ids) - len(tok(head.strip(), add_special_tokens=False)["input_ids"]) < 2:
                continue  # the subject is one token here: it has no first tokens to share
            logits = model(input_ids=torch.tensor([ids[:-1]], device=dev), use_cache=False).logits
            top = logits[0, -1].topk(n + 16).indices.tolist()
            word = [  # a token with a letter or digit: "80", not "," or an end of text
                t
                for t in top
                if t != ids[-1] and t not in skip and any(c.isalnum() for c in tok.decode([t]))
            ]
            out += [tok.decode(ids[:-1] + [t]) for t in word[:n]]
    return list(dict.fromkeys(out))


def prior_heads(model, tok, hp: FTHyperParams, requests, prior) -> list[str]:
    """The prompts, cut after their subject, of the ``keep_prior_edits`` earlier edits
    (``prior``, requests) whose subjects are nearest the edited ones: cosine of the subjects'
    last-token hidden states after keep_rank_layer, as the keep pool is ranked
    (keep.nearest_subjects), highest over the edited subjects. An earlier edit of an edited
    subject is left out: a new fact for the same subject must move that key."""
    mine = {r.subject.strip().lower() for r in requests}
    cands = {}  # head -> subject, first occurrence order
    for r in prior:
        if r.subject.strip().lower() not in mine:
            cands.setdefault(r.head, r.subject)
    if not cands:
        return []
    heads = list(cands)
    if len(heads) <= hp.keep_prior_edits:
        return heads  # all are kept: no ranking to do
    at, tmpl = rank_layer(hp), hp.rewrite_module_tmp
    vecs = subject_vectors(model, tok, [cands[h] for h in heads], at, tmpl)
    own = subject_vectors(model, tok, [r.subject for r in requests], at, tmpl)
    sims = (vecs @ own.T).max(dim=1).values
    order = sorted(range(len(heads)), key=lambda i: (-round(float(sims[i]), 6), i))
    return [heads[i] for i in order[: hp.keep_prior_edits]]


def subject_basis(
    model, tok, hp: FTHyperParams, requests, keep: dict[int, torch.Tensor] | None, keys=None
) -> dict[int, torch.Tensor]:
    """Per edited layer, an orthonormal basis S [in, r] of the edited subjects' last-token
    inputs (:func:`subject_keys`, or ``keys`` if given), made orthogonal to the keep basis
    ``keep``: ROME's localisation (the edit acts on the subject's key only) without its closed
    form, so neighbours' template tokens are left alone too."""
    keys = keys if keys is not None else subject_keys(model, tok, hp, requests)
    out = {}
    for layer, k in keys.items():
        if keep is not None:
            Q = keep[layer].double()
            k = k - Q @ (Q.T @ k)
        out[layer] = _span(k)
    return out


def subject_room(
    keys: dict[int, torch.Tensor], own: dict[int, torch.Tensor], earlier: dict[int, torch.Tensor]
) -> dict[int, float]:
    """Per edited layer, the share of the subject keys ``keys`` (Frobenius norm) outside the
    keep basis that the earlier edits' directions ``earlier`` (orthogonal to ``own``) leave:
    1 with none, smaller the more of the keys they hold (hparams.keep_prior_box)."""
    out = {}
    for layer, k in keys.items():
        Q = own[layer].double()
        k = k - Q @ (Q.T @ k)
        E = earlier[layer].double() if layer in earlier else Q[:, :0]
        rest = (k - E @ (E.T @ k)).norm()
        out[layer] = float(rest / k.norm().clamp(min=1e-30))
    return out


def subject_keys(model, tok, hp: FTHyperParams, requests) -> dict[int, torch.Tensor]:
    """Per edited layer, the edited subjects' last-token inputs [in, n] (float64): the prompt
    up to the subject, alone and behind each training prefix and each of the
    ``subject_contexts`` generic contexts and, with ``chat_texts``, in the chat turn; the
    subject alone and after a space."""
    pre = [""]
    if hp.num_prefixes:
        pre += [
            p + " " for p in random_prefixes(model, tok, hp.num_prefixes, hp.prefix_len, hp.seed)
        ]
    if hp.subject_contexts > len(subject_contexts()):
        raise HParamsError(
            f"subject_contexts is {hp.subject_contexts}, but {CONTEXTS_FILE.name} holds "
            f"{len(subject_contexts())} contexts: set at most that many"
        )
    pre += [c + " " for c in subject_contexts()[: hp.subject_contexts]]
    texts = []
    for r in requests:
        head = r.head
        texts += [p + head for p in pre] + [r.subject, " " + r.subject]
        if hp.chat_texts:  # the chat turn it is also trained as (ft.training_texts), cut there
            ask = TRAIN_ASK.format(r.text)
            turn = chat_prompt(tok, ask)
            texts.append(turn[: turn.index(ask) + len(TRAIN_ASK.format(head))])
    keys: dict[int, list[torch.Tensor]] = {i: [] for i in hp.layers}
    _each_key(
        model, tok, hp, list(dict.fromkeys(texts)), lambda i, k: keys[i].append(k), None, True
    )
    return {layer: torch.cat(ks).double().T.cpu() for layer, ks in keys.items()}


@functools.cache
def subject_contexts() -> tuple[str, ...]:
    """The generic contexts of ``hparams.subject_contexts``, in file order."""
    lines = CONTEXTS_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(x for x in lines if x.strip() and not x.startswith("#"))


def _span(k: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis [in, r] of the columns of ``k`` (float64), directions with a
    singular value under 1e-6 of the largest dropped."""
    u, sv, _ = torch.linalg.svd(k, full_matrices=False)
    return u[:, sv > sv.max() * 1e-6].float()
