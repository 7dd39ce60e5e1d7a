"""Constrained fine-tuning (ROME's FT / FT-L): compute an edit's deltas without keeping them.

Faithful to ``execute_ft`` (see shared/seed): Adam on the chosen layers' parameters only,
a loss on the new target, a clamp to a box of half-width ``norm_constraint`` around the
pre-edit values after every step, an early stop when the epoch's mean loss falls under
``early_stop_loss``, and the result returned as deltas while the model is left bit-identical.

Deliberate differences from the reference loop, none of which changes what is optimised:
tokenisation happens once; logits are computed only where the loss reads them; padding is
handled on either side (explicit position ids, the real last prompt token); the target loss
mask comes from the target's attention mask (ROME masks ``unk`` ids, which lets pad ids into
the loss when targets of different lengths share a batch); parameter names match the
template at dotted boundaries ("h.1" does not match "h.11").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ftedit.deltas import Deltas
from ftedit.errors import HParamsError, RequestError
from ftedit.hparams import FTHyperParams
from ftedit.models import num_layers
from ftedit.requests import EditRequest

Callback = Callable[[int, int, float], None]  # (step, num_steps, epoch mean loss)
PREFIX_SEEDS = ("The", "Therefore", "Because", "I", "You")


@dataclass
class EditResult:
    """What training produced: float32 deltas against the weights it started from."""

    deltas: Deltas
    losses: list[float]
    steps: int
    seconds: float
    stopped_early: bool


def weights_to_edit(model: torch.nn.Module, hparams: FTHyperParams) -> dict[str, torch.nn.Parameter]:
    """The parameters FT trains, checked against the model (layers in range, template matches)."""
    n = num_layers(model)
    bad = [i for i in hparams.layers if i >= n]
    if bad:
        raise HParamsError(f"layers {bad} out of range: this model has layers 0..{n - 1}")
    params = dict(model.named_parameters())
    out = {}
    for layer in hparams.layers:
        prefix = hparams.rewrite_module_tmp.format(layer)
        hits = {k: p for k, p in params.items() if _matches(k, prefix) and p.is_floating_point()}
        if not hits:
            example = next((k for k in params if ".0." in k and "mlp" in k), next(iter(params)))
            raise HParamsError(
                f"rewrite_module_tmp {hparams.rewrite_module_tmp!r} matches no parameter for "
                f"layer {layer}; this model's names look like {example!r}"
            )
        out.update(hits)
    return dict(sorted(out.items()))


def _matches(name: str, prefix: str) -> bool:
    return ("." + name + ".").find("." + prefix + ".") >= 0


@dataclass
class _Batch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    score_pos: torch.Tensor  # [B, T] position whose logits score target token j
    target_ids: torch.Tensor  # [B, T]
    target_mask: torch.Tensor  # [B, T]


def encode(tok, texts: Sequence[str], targets: Sequence[str], objective: str,
           device: torch.device | str = "cpu", padding_side: str | None = None) -> _Batch:
    """Tokenise prompts and targets once, padded on ``padding_side`` (default: the tokenizer's)."""
    side = padding_side or getattr(tok, "padding_side", "right")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = [tok(t)["input_ids"] for t in texts]
    tgts = [tok(t, add_special_tokens=False)["input_ids"] for t in targets]
    for t, ids in zip(targets, tgts):
        if not ids:
            raise RequestError(f"target {t!r} tokenises to nothing; give a non-empty target")
    seqs = [p + (g[:-1] if objective == "target_new" else []) for p, g in zip(prompts, tgts)]
    L, T = max(map(len, seqs)), max(map(len, tgts))
    B = len(seqs)
    ids = torch.full((B, L), pad, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    score = torch.zeros((B, T), dtype=torch.long)
    tids = torch.full((B, T), pad, dtype=torch.long)
    tmask = torch.zeros((B, T), dtype=torch.long)
    for i, (s, p, g) in enumerate(zip(seqs, prompts, tgts)):
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
    return _Batch(ids.to(dev), mask.to(dev), pos.to(dev), score.to(dev), tids.to(dev), tmask.to(dev))


def _head_is_plain(model) -> bool:
    cfg = model.config
    return not any(getattr(cfg, a, None) for a in ("final_logit_softcapping", "logit_scale"))


def target_logprobs(model: torch.nn.Module, batch: _Batch) -> torch.Tensor:
    """log p(target token j | its scoring position), [B, T]; logits only where needed."""
    rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)[:, None]
    kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
              position_ids=batch.position_ids, use_cache=False)
    if _head_is_plain(model):
        hidden = model.base_model(**kw).last_hidden_state
        uniq = batch.score_pos  # prompt_last repeats one position: compute its logits once
        if bool((uniq == uniq[:, :1]).all()):
            h = hidden[rows[:, 0], uniq[:, 0]]
            logp = F.log_softmax(model.get_output_embeddings()(h).float(), dim=-1)
            return logp.gather(1, batch.target_ids)
        h = hidden[rows, batch.score_pos]
        logp = F.log_softmax(model.get_output_embeddings()(h).float(), dim=-1)
    else:
        logits = model(**kw).logits
        logp = F.log_softmax(logits[rows, batch.score_pos].float(), dim=-1)
    return logp.gather(2, batch.target_ids[..., None])[..., 0]


def batch_loss(model: torch.nn.Module, batch: _Batch) -> torch.Tensor:
    """Mean over requests of the mean target-token NLL (ROME's loss; exact for prompt_last)."""
    lp = target_logprobs(model, batch)
    m = batch.target_mask.to(lp.dtype)
    return (-(lp * m).sum(1) / m.sum(1)).mean()


def _chunks(xs: Sequence, n: int) -> list:
    return [xs[i : i + n] for i in range(0, len(xs), n)]


@torch.no_grad()
def random_prefixes(model, tok, n: int, length: int, seed: int) -> list[str]:
    """ROME's context templates: short texts the model writes itself, used as prompt prefixes."""
    dev = model.get_input_embeddings().weight.device
    out = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(n):
            start = tok(PREFIX_SEEDS[i % len(PREFIX_SEEDS)], return_tensors="pt").to(dev)
            gen = model.generate(**start, do_sample=True, top_k=5, max_new_tokens=length,
                                 pad_token_id=tok.pad_token_id)
            text = tok.decode(gen[0], skip_special_tokens=True).replace("{", "").replace("}", "")
            out.append(" ".join(text.split()) + ".")
    return out


def training_texts(model, tok, requests: Sequence[EditRequest], hp: FTHyperParams):
    """The (prompt text, target) pairs trained on: each request, then behind each prefix."""
    texts = [r.text for r in requests]
    targets = [r.target_new for r in requests]
    if hp.num_prefixes:
        for p in random_prefixes(model, tok, hp.num_prefixes, hp.prefix_len, hp.seed):
            texts += [f"{p} {r.text}" for r in requests]
            targets += [r.target_new for r in requests]
    return texts, targets


def compute_deltas(model: torch.nn.Module, tok, requests: Sequence[EditRequest],
                   hparams: FTHyperParams, callback: Callback | None = None) -> EditResult:
    """Train the edit and return its deltas. Pure: the model is bit-identical afterwards,
    also when this raises or is interrupted (weights and ``requires_grad`` restored in finally)."""
    if not requests:
        raise RequestError("no requests given: pass at least one EditRequest")
    if hparams.kl_factor:
        raise HParamsError("kl_factor > 0 is not implemented yet; set it to 0")
    for r in requests:
        r.check_length(tok)
    weights = weights_to_edit(model, hparams)
    t0 = time.perf_counter()
    copy = {k: v.detach().clone() for k, v in weights.items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    dev = model.get_input_embeddings().weight.device
    losses: list[float] = []
    stopped = False
    try:
        model.eval()
        texts, targets = training_texts(model, tok, requests, hparams)
        batches = [
            encode(tok, tx, tg, hparams.objective, dev)
            for tx, tg in zip(_chunks(texts, hparams.batch_size), _chunks(targets, hparams.batch_size))
        ]
        for n, p in model.named_parameters():
            p.requires_grad_(n in weights)
        opt = torch.optim.Adam(list(weights.values()), lr=hparams.lr,
                               weight_decay=hparams.weight_decay)
        eps = hparams.norm_constraint
        for step in tqdm(range(hparams.num_steps), desc="FT edit", leave=False):
            total, count = 0.0, 0
            for b in batches:
                opt.zero_grad(set_to_none=True)
                loss = batch_loss(model, b)
                value = loss.item()
                bs = b.input_ids.shape[0]
                total, count = total + value * bs, count + bs
                if value >= hparams.early_stop_loss:
                    loss.backward()
                    opt.step()
                if eps is not None:
                    with torch.no_grad():
                        for k, v in weights.items():
                            v.copy_(torch.clamp(v, min=copy[k] - eps, max=copy[k] + eps))
            losses.append(total / count)
            if callback is not None:
                callback(step + 1, hparams.num_steps, losses[-1])
            if losses[-1] < hparams.early_stop_loss:
                stopped = True
                break
        deltas = Deltas({k: weights[k].detach().float() - copy[k].float() for k in weights})
    finally:
        with torch.no_grad():
            for k, v in weights.items():
                v.copy_(copy[k])
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
    if not deltas.is_finite():
        raise HParamsError("training diverged (non-finite deltas); lower lr or num_steps")
    return EditResult(deltas, losses, len(losses), time.perf_counter() - t0, stopped)
