"""Tokenised batches and the target log-probabilities FT's losses are built on.

Prompts and targets are tokenised once, padded on either side with explicit position ids (so
left padding gives the same loss), and logits are computed only at the positions the loss reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ftedit.errors import RequestError


@dataclass
class _Batch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    score_pos: torch.Tensor  # [B, T] position whose logits score target token j
    target_ids: torch.Tensor  # [B, T]
    target_mask: torch.Tensor  # [B, T]


def encode(
    tok,
    texts: Sequence[str],
    targets: Sequence[str],
    objective: str,
    device: torch.device | str = "cpu",
    padding_side: str | None = None,
) -> _Batch:
    """Tokenise prompts and targets once, padded on ``padding_side`` (default: the tokenizer's)."""
    side = padding_side or getattr(tok, "padding_side", "right")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = [tok(t)["input_ids"] for t in texts]
    tgts = [tok(t, add_special_tokens=False)["input_ids"] for t in targets]
    for t, ids in zip(targets, tgts, strict=True):
        if not ids:
            raise RequestError(f"target {t!r} tokenises to nothing; give a non-empty target")
    seqs = [
        p + (g[:-1] if objective == "target_new" else [])
        for p, g in zip(prompts, tgts, strict=True)
    ]
    L, T = max(map(len, seqs)), max(map(len, tgts))
    B = len(seqs)
    ids = torch.full((B, L), pad, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    score = torch.zeros((B, T), dtype=torch.long)
    tids = torch.full((B, T), pad, dtype=torch.long)
    tmask = torch.zeros((B, T), dtype=torch.long)
    for i, (s, p, g) in enumerate(zip(seqs, prompts, tgts, strict=True)):
        off = L - len(s) if side == "left" else 0
        ids[i, off : off + len(s)] = torch.tensor(s)
        mask[i, off : off + len(s)] = 1
        last = off + len(p) - 1  # the last prompt token
        if objective == "target_new":
            score[i, : len(g)] = torch.arange(last, last + len(g))
        else:
            score[i, : len(g)] = last
        tids[i, : len(g)] = torch.tensor(g)
        tmask[i, : len(g)] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    dev = torch.device(device)
    return _Batch(
        ids.to(dev), mask.to(dev), pos.to(dev), score.to(dev), tids.to(dev), tmask.to(dev)
    )


def _head_is_plain(model) -> bool:
    cfg = model.config
    return not any(getattr(cfg, a, None) for a in ("final_logit_softcapping", "logit_scale"))


def _model_inputs(batch: _Batch) -> dict:
    return {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "position_ids": batch.position_ids,
        "use_cache": False,
    }


def final_hidden(model, batch: _Batch) -> torch.Tensor:
    """Final hidden states [B, L, d] of the whole model (no head).

    Under accelerate's ``device_map`` every submodule carries its own hook, which moves its
    inputs to where it runs, so calling ``base_model`` runs them all; the one hook it skips is
    the top-level one that moves outputs back to the input device. The hidden state may thus
    sit on the last block's device: every index below follows the tensor it indexes.
    """
    return model.base_model(**_model_inputs(batch)).last_hidden_state


def last_logprobs(model, hidden: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """Next-token log-probs [B, V] at each row's first scoring position (the last prompt token
    for ``prompt_last``): the head runs on one position per row."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    h = hidden[rows, batch.score_pos[:, 0].to(hidden.device)]
    return F.log_softmax(model.get_output_embeddings()(h).float(), dim=-1)


def _head_logprobs(model, hidden: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """log p(target token j | its scoring position), [B, T], from final hidden states [B, L, d]."""
    pos = batch.score_pos
    if bool((pos == pos[:, :1]).all()):  # prompt_last: one position per row, its logits once
        logp = last_logprobs(model, hidden, batch)
        return logp.gather(1, batch.target_ids.to(logp.device))
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    h = hidden[rows, pos.to(hidden.device)]
    logp = F.log_softmax(model.get_output_embeddings()(h).float(), dim=-1)
    return logp.gather(2, batch.target_ids.to(logp.device)[..., None])[..., 0]


def target_logprobs(model: torch.nn.Module, batch: _Batch) -> torch.Tensor:
    """log p(target token j | its scoring position), [B, T], on the batch's device (as a
    dispatched model's own forward returns); logits only where needed."""
    if _head_is_plain(model):
        lp = _head_logprobs(model, final_hidden(model, batch), batch)
        return lp.to(batch.target_ids.device)
    logits = model(**_model_inputs(batch)).logits
    rows = torch.arange(batch.input_ids.shape[0], device=logits.device)[:, None]
    logp = F.log_softmax(logits[rows, batch.score_pos.to(logits.device)].float(), dim=-1)
    return logp.gather(2, batch.target_ids.to(logp.device)[..., None])[..., 0]


def batch_loss(model: torch.nn.Module, batch: _Batch) -> torch.Tensor:
    """Mean over requests of the mean target-token NLL (ROME's loss; exact for prompt_last)."""
    return _nll(target_logprobs(model, batch), batch)


def _nll(lp: torch.Tensor, batch: _Batch) -> torch.Tensor:
    m = batch.target_mask.to(device=lp.device, dtype=lp.dtype)
    return (-(lp * m).sum(1) / m.sum(1)).mean()


def _chunks(xs: Sequence, n: int) -> list:
    return [xs[i : i + n] for i in range(0, len(xs), n)]
