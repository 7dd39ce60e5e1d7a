"""Reading the inputs ("keys") the edited matrices see: one forward pass up to the top edited
block, stopped there by a hook, per batch of texts (ftedit/core/edit_keys.py builds the keep
and subject bases from them; ftedit/core/nullspace.py the second moments).

A stacked edit reads every earlier edit's question again at each edit; the blocks below the
lowest edited one never change under the edits, so their output per batch is kept
(:func:`below_cache`) and only the blocks from there up run again.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ftedit.core.batch import _chunks
from ftedit.core.hparams import FTHyperParams
from ftedit.core.memo import WeightsMemo, weights_state
from ftedit.core.models import blocks_of, module_device
from ftedit.core.precision import to_device
from ftedit.errors import HParamsError


def edited_modules(model, hp: FTHyperParams) -> dict[int, torch.nn.Module]:
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


def in_dim(mod: torch.nn.Module) -> int:
    """Input width: Linear stores [out, in], GPT-2's Conv1D [in, out] (and has ``nf``)."""
    return mod.weight.shape[0] if hasattr(mod, "nf") else mod.weight.shape[1]


class _Stop(Exception):
    pass


@torch.no_grad()
def each_key(
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
    ``below`` (:func:`below_cache`) keeps the lowest edited block's inputs per batch, so a
    batch read again runs only the blocks from there up; its batches are the texts of one
    token length each, in the order given (no padding; a text added to the end changes one
    batch). Returns the number of tokens."""
    mods = edited_modules(model, hp)
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
                raise ValueError(f"each_key: token {c[2]} of {c[0]!r} is not read apart")
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


def below_cache(model, hp: FTHyperParams) -> dict | None:
    """Where :func:`each_key` keeps the lowest edited block's inputs per batch: one dict,
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
