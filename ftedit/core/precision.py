"""Precision and placement helpers for FT's loop: float32 master copies of the edited tensors,
the box around them, and moving a block's inputs to its device.

Why float32 masters: trained in bfloat16 / float16, Adam's second moment underflows in float16
(and its eps rounds to 0), and in both half dtypes the box bounds and every update are rounded
to a half step, so the L-infinity box of FT-L does not hold. peft keeps trainable tensors in
float32 on a half-precision base for the same reason.
"""

from __future__ import annotations

import torch


def float32_masters(weights: dict, copy: dict) -> tuple[dict, dict]:
    """(float32 masters, float32 base) of the edited tensors (name -> tensor).

    A float32 weight is its own master (and its copy its base): the computation is the one FT
    always did, bit for bit. A bfloat16 / float16 weight gets a float32 master that Adam updates
    and the box clamps; the weight is only the master cast before each forward. Trained in the
    weight's own dtype, Adam's second moment underflows in float16 (and its eps rounds to 0),
    and in both half dtypes the box bounds and each update are rounded to a half step.
    """
    masters, base = {}, {}
    for k, w in weights.items():
        if w.dtype == torch.float32:
            masters[k], base[k] = w, copy[k]
        else:
            base[k] = copy[k].float()
            masters[k] = base[k].clone()
    return masters, base


def box_bounds(base: torch.Tensor, eps: float, exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds base -/+ eps. ``exact``: pulled in by one float32 step where rounding put them
    past eps, so that every |master - base| <= eps holds in float32 (the half-precision path;
    float32 weights keep the bounds they always had, which may pass eps by one rounding)."""
    e = torch.tensor(eps, dtype=base.dtype, device=base.device)
    lo, hi = base - e, base + e
    if exact:  # monotone rounding: once the exact difference is <= eps, its rounding is too
        lo = torch.where(base - lo > e, torch.nextafter(lo, base), lo)
        hi = torch.where(hi - base > e, torch.nextafter(hi, base), hi)
    return lo, hi


def rows_into_box(d: torch.Tensor, eps: float, dim: int) -> torch.Tensor:
    """The change ``d`` with each output row (its peak taken over ``dim``) scaled down until
    |d| <= eps: a scaled row keeps its direction, so it stays in any input-side span."""
    peak = d.abs().amax(dim=dim, keepdim=True).clamp(min=1e-30)
    return d * (eps / peak).clamp(max=1.0)


def to_device(dev: torch.device, x):
    """``x`` (a tensor, or tensors in tuples / lists / dicts) moved to ``dev``."""
    if torch.is_tensor(x):
        return x.to(dev)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(dev, v) for v in x)
    if isinstance(x, dict):
        return {k: to_device(dev, v) for k, v in x.items()}
    return x
