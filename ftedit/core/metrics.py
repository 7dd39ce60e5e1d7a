"""CounterFact-style scores (ROME's definitions), target probabilities, greedy completion.

Probabilities are of the whole target string given the prompt (product over its tokens);
"success" compares mean token NLLs, as ROME's evaluation does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ftedit.core.batch import _chunks, encode, target_logprobs
from ftedit.core.requests import EditRequest


@torch.no_grad()
def target_nll(
    model, tok, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32
) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each target after its prompt, teacher-forced."""
    dev = model.get_input_embeddings().weight.device
    out = []
    for ps, ts in zip(
        _chunks(list(prompts), batch_size), _chunks(list(targets), batch_size), strict=True
    ):
        b = encode(tok, ps, ts, "target_new", dev)
        lp = target_logprobs(model, b)
        m = b.target_mask.to(lp.dtype)
        out += [(float(-s), int(n)) for s, n in zip((lp * m).sum(1), m.sum(1), strict=True)]
    return out


def mean_nll(model, tok, prompts: Sequence[str], targets: Sequence[str]) -> list[float]:
    return [s / n for s, n in target_nll(model, tok, prompts, targets)]


def complete(model, tok, prompt: str, max_new_tokens: int = 12) -> str:
    """Greedy continuation of ``prompt`` (the text after it, without special tokens)."""
    dev = model.get_input_embeddings().weight.device
    enc = tok(prompt, return_tensors="pt").to(dev)
    out = model.generate(
        **enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id
    )
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def target_probabilities(model, tok, request: EditRequest) -> dict:
    """P(target_new) and P(target_true) (None without one) after the request's prompt."""
    prompts = [request.text] * (2 if request.target_true else 1)
    targets = [request.target_new] + ([request.target_true] if request.target_true else [])
    nll = target_nll(model, tok, prompts, targets)
    return {
        "p_target_new": math.exp(-nll[0][0]),
        "p_target_true": math.exp(-nll[1][0]) if request.target_true else None,
    }


def rewrite_report(model, tok, request: EditRequest, max_new_tokens: int = 12) -> dict:
    """What a user looks at: greedy completion and P(target_new) / P(target_true)."""
    return {
        "completion": complete(model, tok, request.text, max_new_tokens),
        **target_probabilities(model, tok, request),
    }


def _space(s: str) -> str:
    return s if s.startswith(" ") else " " + s


def _prefers(model, tok, prompts: Sequence[str], a: str, b: str) -> list[tuple[bool, float]]:
    """For each prompt: (mean NLL of a < that of b, P(a) - P(b) with mean-token probs)."""
    if not prompts:
        return []
    n = len(prompts)
    nll = mean_nll(model, tok, list(prompts) * 2, [_space(a)] * n + [_space(b)] * n)
    return [(nll[i] < nll[n + i], math.exp(-nll[i]) - math.exp(-nll[n + i])) for i in range(n)]


def counterfact_scores(model, tok, record: dict) -> dict:
    """ROME's efficacy / paraphrase / neighborhood, success rates and magnitudes, for one record."""
    rw = record["requested_rewrite"]
    new, true = rw["target_new"]["str"], rw["target_true"]["str"]
    rewrite = _prefers(model, tok, [rw["prompt"].format(rw["subject"])], new, true)
    para = _prefers(model, tok, record.get("paraphrase_prompts", []), new, true)
    neigh = _prefers(model, tok, record.get("neighborhood_prompts", []), true, new)

    def mean(xs, i):
        return sum(x[i] for x in xs) / len(xs) if xs else float("nan")

    return {
        "efficacy": mean(rewrite, 0),
        "efficacy_magnitude": mean(rewrite, 1),
        "paraphrase": mean(para, 0),
        "paraphrase_magnitude": mean(para, 1),
        "neighborhood": mean(neigh, 0),
        "neighborhood_magnitude": mean(neigh, 1),
    }
