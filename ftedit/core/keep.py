"""The keep penalty's prompts: which other subjects an edit must leave alone.

ROME's essence prompt "{subject} is a" and the request's relation prompt filled with other
subjects: the stand-ins below, or (``hparams.keep_subjects``) the subjects of the dev pool
``data/keep_subjects.txt`` nearest to the edited one by hidden state after the top edited
block. ``ft.compute_deltas`` turns these prompts into the penalty.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ftedit.core.batch import _chunks
from ftedit.core.hparams import FTHyperParams
from ftedit.core.memo import WeightsMemo, weights_state
from ftedit.core.models import blocks_of
from ftedit.core.requests import EditRequest
from ftedit.errors import HParamsError

# Stand-ins for "some other subject" in the KL prompts: the request's own relation prompt
# with these in the subject's place should keep its pre-edit prediction, which pushes the
# edit onto the subject rather than onto the relation (where it would move every neighbour).
KL_SUBJECTS = ("it", "this one", "the other one")
KEEP_SUBJECTS_FILE = Path(__file__).parent / "data" / "keep_subjects.txt"
DEFAULT_TEMPLATE = FTHyperParams.rewrite_module_tmp  # "model.layers.{}.mlp.down_proj"


@functools.cache
def _subject_pool() -> tuple[str, ...]:
    lines = KEEP_SUBJECTS_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(x.strip() for x in lines if x.strip() and not x.startswith("#"))


class _Stop(Exception):
    pass


def _template_blocks(model, template: str, layer: int | None = None) -> torch.nn.ModuleList:
    blocks = blocks_of(model, template)
    if blocks is None:
        raise HParamsError(f"keep_subjects: {template!r} does not index a list of blocks")
    if layer is not None and layer >= len(blocks):
        raise HParamsError(
            f"keep_rank_layer {layer}: this model has blocks 0-{len(blocks) - 1}; choose one of them"
        )
    return blocks


@torch.no_grad()
def subject_vectors(
    model, tok, subjects: Sequence[str], layer: int, template: str = DEFAULT_TEMPLATE
) -> torch.Tensor:
    """Unit vectors [N, d]: each subject's last-token hidden state after block ``layer`` of the
    blocks ``template`` indexes, the subject read alone (the blocks above are not run)."""
    blocks = _template_blocks(model, template, layer)
    got: list[torch.Tensor] = []

    def grab(module, args, out):
        got.append(out[0] if isinstance(out, tuple) else out)
        raise _Stop

    dev = model.get_input_embeddings().weight.device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    handle = blocks[layer].register_forward_hook(grab)
    vecs = []
    try:
        for chunk in _chunks(list(subjects), 64):
            enc = tok([" " + t for t in chunk], add_special_tokens=False)["input_ids"]
            L = max(len(x) for x in enc)
            ids = torch.tensor([[pad] * (L - len(x)) + x for x in enc], device=dev)
            mask = torch.tensor([[0] * (L - len(x)) + [1] * len(x) for x in enc], device=dev)
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            got.clear()
            try:
                model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            except _Stop:
                pass
            vecs.append(F.normalize(got[0][:, -1].float(), dim=-1))
    finally:
        handle.remove()
    return torch.cat(vecs)


_POOL_CACHE = WeightsMemo()


def _pool_key(model, tok, layer: int, template: str = DEFAULT_TEMPLATE) -> tuple:
    """What the pool's vectors depend on: model, tokenizer, layer, pool, and the state of every
    weight they read (ftedit/core/memo.py)."""
    blocks = _template_blocks(model, template, layer)
    params = [model.get_input_embeddings().weight]
    params += [p for i in range(layer + 1) for p in blocks[i].parameters()]
    key = (id(model), id(tok), layer, template, _subject_pool())
    return key + weights_state(params)


def _pool_vectors(model, tok, layer: int, template: str = DEFAULT_TEMPLATE) -> torch.Tensor:
    """subject_vectors of the whole pool, cached while the weights they read are unchanged."""
    return _POOL_CACHE.get(
        _pool_key(model, tok, layer, template),
        lambda: subject_vectors(model, tok, _subject_pool(), layer, template),
    )


def pool_written_back(before: dict[int, int], after: dict[int, int]) -> None:
    """compute_deltas wrote the weights back bit for bit: the pool's vectors still hold
    (memo.WeightsMemo.written_back)."""
    _POOL_CACHE.written_back(before, after)


def nearest_subjects(
    model, tok, subject: str, k: int, layer: int, template: str = DEFAULT_TEMPLATE
) -> list[str]:
    """The ``k`` subjects of the keep pool nearest to ``subject``: cosine of their last-token
    hidden states after block ``layer`` (hparams.keep_rank_layer), so a city gets cities and a
    person people, the subjects whose answers an edit of this one is most likely to drag
    along. Deterministic for given weights; never the subject itself or a name containing it
    or contained in it."""
    key = subject.strip().lower()
    pool = _subject_pool()
    keep = [i for i, s in enumerate(pool) if key not in s.lower() and s.lower() not in key]
    if k <= 0 or not keep:
        return []
    pool_vecs = _pool_vectors(model, tok, layer, template)
    sims = pool_vecs @ subject_vectors(model, tok, [subject], layer, template)[0]
    order = sorted(keep, key=lambda i: (-round(float(sims[i]), 6), pool[i]))
    return [pool[i] for i in order[:k]]


def kl_texts(
    requests: Sequence[EditRequest], others: Sequence[Sequence[str]] | None = None
) -> list[tuple[str, str | None]]:
    """(prompt, guarded target) pairs of the keep penalty: ROME's essence prompt
    ("{subject} is a", no guard) and each relation prompt with other subjects (``others[i]``
    for request i; the stand-ins where not given), whose probability of the request's
    target_new must not rise."""
    out = [(f"{r.subject} is a", None) for r in requests]
    for i, r in enumerate(requests):
        subs = others[i] if others is not None and others[i] else KL_SUBJECTS
        out += [(r.prompt.format(s), r.target_new) for s in subs]
    return list(dict.fromkeys(out))


def rank_layer(hp: FTHyperParams) -> int:
    """The block whose outputs choose the nearest pool subjects (hparams.keep_rank_layer; by
    default the one under the lowest edited block, whose outputs no edit of these layers
    changes, so the pool's vectors are computed once per model)."""
    if hp.keep_rank_layer is not None:
        return hp.keep_rank_layer
    return max(min(hp.layers) - 1, 0)


def keep_others(model, tok, requests, hp: FTHyperParams) -> list[list[str]] | None:
    """The other subjects each request's keep prompts use (None: the stand-ins)."""
    if not hp.keep_subjects:
        return None
    at, tmpl = rank_layer(hp), hp.rewrite_module_tmp
    return [nearest_subjects(model, tok, r.subject, hp.keep_subjects, at, tmpl) for r in requests]
