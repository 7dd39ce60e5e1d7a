"""ROME's context templates: short texts the model writes itself, put before the prompt.

FT trains on the request behind each prefix (``num_prefixes``) so the edit holds in context;
the null-space code reads the subject's key behind the same prefixes. Same seed and weights,
same texts: one edit asks twice, so they are generated once per state of the weights
(ftedit/core/memo.py).
"""

from __future__ import annotations

import torch

from ftedit.core.memo import WeightsMemo, weights_state
from ftedit.core.models import input_device

PREFIX_SEEDS = ("The", "Therefore", "Because", "I", "You")
_CACHE = WeightsMemo()


def prefixes_key(model, tok, n: int, length: int, seed: int) -> tuple:
    """What the prefixes depend on: the arguments and every weight (generation reads them all)."""
    return (id(model), id(tok), n, length, seed) + weights_state(model.parameters())


def prefixes_written_back(before: dict[int, int], after: dict[int, int]) -> None:
    """The weights were written back bit for bit (compute_deltas): the prefixes still hold."""
    _CACHE.written_back(before, after)


def random_prefixes(model, tok, n: int, length: int, seed: int) -> list[str]:
    """ROME's context templates: short texts the model writes itself, used as prompt prefixes."""
    key = prefixes_key(model, tok, n, length, seed)
    return list(_CACHE.get(key, lambda: tuple(_generate(model, tok, n, length, seed))))


@torch.no_grad()
def _generate(model, tok, n: int, length: int, seed: int) -> list[str]:
    dev = input_device(model)
    out = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(n):
            start = tok(PREFIX_SEEDS[i % len(PREFIX_SEEDS)], return_tensors="pt").to(dev)
            gen = model.generate(
                **start,
                do_sample=True,
                top_k=5,
                max_new_tokens=length,
                pad_token_id=tok.pad_token_id,
            )
            text = tok.decode(gen[0], skip_special_tokens=True).replace("{", "").replace("}", "")
            out.append(" ".join(text.split()) + ".")
    return out
