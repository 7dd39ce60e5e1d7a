"""Orthonormal bases of the inputs ("keys") the edited matrices see on given texts.

The keys are read by ftedit/core/key_reads.py (one forward pass up to the top edited block):
on every token (the keep prompts) or only the last (a subject read alone). ``keep_basis`` spans
what an edit must leave alone, ``subject_basis`` what it may act on
(ftedit/core/nullspace.py projects each step with them).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ftedit.core.chat import TRAIN_ASK, chat_prompt
from ftedit.core.hparams import FTHyperParams
from ftedit.core.keep import (
    keep_others,
    kl_texts,
    nearest_subjects,
    rank_layer,
    subject_vectors,
)
from ftedit.core.key_reads import below_cache, each_key
from ftedit.core.prefixes import random_prefixes
from ftedit.errors import HParamsError

CONTEXTS_FILE = Path(__file__).parent / "data" / "contexts.txt"
# A stacked edit reads each earlier edit's subject key inside its question's teacher-forced
# pass where it can (_answer_passes), and _prior_parts takes the eigenvectors of k k^T instead of
# an SVD of the keys k once they outnumber the inputs GRAM_ABOVE times; both read at call time
# so bench/speed_stack.py can time the older paths (rounding apart, the same basis).
HEADS_INSIDE = True
GRAM_ABOVE = 1.0
# ... and reads those questions from the lowest edited block up, the blocks below having run
# once for them (below_cache; rounding apart, the same keys)
BELOW_CACHE = True


def keep_basis(model, tok, hp: FTHyperParams, requests, prior=()) -> dict[int, torch.Tensor]:
    """Per edited layer, the orthonormal keep basis [in, r]: :func:`keep_bases`' two parts side
    by side."""
    own, earlier, _ = keep_bases(model, tok, hp, requests, prior)
    return join_bases(own, earlier)


def join_bases(own: dict[int, torch.Tensor], earlier: dict[int, torch.Tensor]):
    """The two parts of :func:`keep_bases` as one basis per layer (own columns first)."""
    return {i: torch.cat([q, earlier[i]], dim=1) if i in earlier else q for i, q in own.items()}


def keep_bases(
    model, tok, hp: FTHyperParams, requests, prior=()
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], dict[int, tuple]]:
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
    kept). The third, with ``keep_prior_soft``, holds per layer the weights of the earlier keys'
    directions the share leaves out (:func:`_prior_parts`; empty otherwise)."""
    texts = [t for t, guard in kl_texts(requests, keep_others(model, tok, requests, hp)) if guard]
    keys: dict[int, list[torch.Tensor]] = {i: [] for i in hp.layers}

    def sink(layer: int, k: torch.Tensor) -> None:
        keys[layer].append(k)

    each_key(model, tok, hp, texts, sink, None)
    if hp.keep_subject_keys:
        at, tmpl = rank_layer(hp), hp.rewrite_module_tmp
        near = [
            nearest_subjects(model, tok, r.subject, hp.keep_subject_keys, at, tmpl)
            for r in requests
        ]
        subs = sorted({s for n in near for s in n})
        each_key(model, tok, hp, subs, sink, None, last=True)
    if hp.keep_subject_parts:
        parts = subject_parts(requests)
        if parts:
            each_key(model, tok, hp, parts, sink, None, but_last=True)
    if hp.keep_subject_siblings:
        sibs = subject_siblings(model, tok, requests, hp.keep_subject_siblings)
        if sibs:
            each_key(model, tok, hp, sibs, sink, None, last=True)
    out = {layer: _span(torch.cat(ks).double().T.cpu()) for layer, ks in keys.items()}
    heads = prior_heads(model, tok, hp, requests, prior) if hp.keep_prior_edits else []
    if not heads:
        return out, {}, {}
    earlier: dict[int, list[torch.Tensor]] = {i: [] for i in hp.layers}

    def sink_earlier(layer: int, k: torch.Tensor) -> None:
        earlier[layer].append(k)

    if hp.keep_prior_answers:  # read again at every stacked edit: from the edited blocks up
        heads, pairs = _answer_passes(tok, heads, prior, HEADS_INSIDE)
        below = below_cache(model, hp) if BELOW_CACHE else None
        each_key(model, tok, hp, pairs, sink_earlier, None, below=below)
    if heads:
        each_key(model, tok, hp, heads, sink_earlier, None, last=True)
    extra, soft = {}, {}
    for layer, ks in earlier.items():
        k = torch.cat(ks).double().T.cpu()
        extra[layer], rest = _prior_parts(out[layer], k, hp.keep_prior_share, hp.keep_prior_soft)
        if rest is not None:
            soft[layer] = rest
    return out, extra, soft


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


def _prior_parts(
    Q: torch.Tensor, k: torch.Tensor, share: float, soft: float
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """What the earlier edits' keys ``k`` [in, n] add to the keep basis ``Q`` [in, r]: an
    orthonormal basis E [in, r'] of their directions outside it, the strongest first, at most
    ``share`` of the input width of them (0: all), so the edit keeps room to act on its own
    subject however many edits came before (AlphaEdit keeps the principal directions of its
    accumulated keys the same way). Second, with ``soft`` > 0, the directions of the keys the
    share leaves out (outside Q and E) with their weights: (U [in, m] orthonormal, w [m]),
    w = 1 - 1 / (1 + soft * e / mean(e)), e their squared singular values and the mean over the
    input width (as nullspace.soft_projector). ``x - U (w * U^T x)`` is then
    (I + soft * R R^T / mean)^-1 x for the left-out keys R: MEMIT's and AlphaEdit's
    least-squares weighting of earlier keys, which subject_basis applies to the subject keys
    (None: nothing left out, or soft 0)."""
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
    n = int((sv > floor).sum())
    r = min(n, int(share * k.shape[0])) if share else n
    rest = None
    if soft and r < n:
        e = sv[r:n] ** 2
        rest = (u[:, r:n], 1 - 1 / (1 + soft * e / (e.sum() / k.shape[0])))
    return u[:, :r].float(), rest


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
    model,
    tok,
    hp: FTHyperParams,
    requests,
    keep: dict[int, torch.Tensor] | None,
    keys=None,
    soft: dict[int, tuple] | None = None,
) -> dict[int, torch.Tensor]:
    """Per edited layer, an orthonormal basis S [in, r] of the edited subjects' last-token
    inputs (:func:`subject_keys`, or ``keys`` if given), made orthogonal to the keep basis
    ``keep``: ROME's localisation (the edit acts on the subject's key only) without its closed
    form, so neighbours' template tokens are left alone too. With ``soft`` (keep_bases' third
    part), the keys are then weighted off the earlier keys the share left out, (I + s R
    R^T / mean)^-1 k: a step on S moves each such key the less, the more the earlier edits use
    its direction, instead of all of them freely (MEMIT's C^-1 k)."""
    keys = keys if keys is not None else subject_keys(model, tok, hp, requests)
    out = {}
    for layer, k in keys.items():
        if keep is not None:
            Q = keep[layer].double()
            k = k - Q @ (Q.T @ k)
        if soft and layer in soft:  # U is orthogonal to Q: k stays off it
            U, w = soft[layer]
            k = k - U @ (w[:, None] * (U.T @ k))
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
    each_key(model, tok, hp, list(dict.fromkeys(texts)), lambda i, k: keys[i].append(k), None, True)
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
