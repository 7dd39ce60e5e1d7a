"""One edit per dtype on the default model: P(target) before and after, max |delta| against the
box, seconds per edit, and the extra memory of the float32 masters (edited tensors only).

    FTEDIT_CACHE=~/.cache/ftedit-test-models .venv/bin/python bench/bench_dtype.py \
        --dtype float32 --dtype bfloat16 --dtype float16 --preset default

Nothing is stored: the deltas are applied (cast(base + delta), DESIGN.md's invariant) only to
score the edit, then the weights are restored bit for bit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftedit.core.deltas import compose
from ftedit.core.ft import compute_deltas, weights_to_edit
from ftedit.core.hparams import load_preset
from ftedit.core.metrics import target_probabilities
from ftedit.core.models import load_model
from ftedit.core.requests import EditRequest

EDITS = {
    "eiffel": EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris"),
    "lebron": EditRequest("{} plays the sport of", "LeBron James", "football", "basketball"),
}


def master_bytes(weights: dict, dtype: torch.dtype) -> int:
    """Extra bytes a half-precision edit holds over training in the weight's own dtype: the
    float32 master and float32 base (4 + 4 per element), and the widening to float32 of the
    box bounds, Adam's two moments and the gradient (2 + 2 + 2 + 2 + 2). None for float32."""
    n = sum(w.numel() for w in weights.values())
    return 0 if dtype == torch.float32 else n * (4 + 4 + 2 * 2 + 2 * 2 + 2)


def one(lm, req: EditRequest, hp, repeats: int) -> dict:
    model, tok = lm.model, lm.tok
    before = target_probabilities(model, tok, req)
    runs = [compute_deltas(model, tok, [req], hp) for _ in range(repeats)]
    res = runs[-1]
    params = dict(model.named_parameters())
    saved = {k: params[k].detach().clone() for k in res.deltas}
    try:
        with torch.no_grad():
            for k, d in res.deltas.items():
                params[k].copy_(compose(params[k].detach(), [d], params[k].dtype))
        after = target_probabilities(model, tok, req)
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                params[k].copy_(v)
    eps = hp.norm_constraint
    e32 = torch.tensor(eps if eps is not None else float("inf"), dtype=torch.float32)
    return {
        "p_new": (before["p_target_new"], after["p_target_new"]),
        "p_true": (before.get("p_target_true"), after.get("p_target_true")),
        "max_delta": res.deltas.max_abs(),
        "box": eps,
        "inside": all(bool((d.abs() <= e32).all()) for d in res.deltas.values()),
        "seconds": statistics.median(r.seconds for r in runs),
        "steps": res.steps,
        "extra_bytes": master_bytes(weights_to_edit(model, hp), next(iter(saved.values())).dtype),
    }


def _inside(r: dict) -> str:
    """ok, or by how much the box is passed (float32 keeps FT's bounds, which a rounding of
    base + eps can pass by a few 1e-8; bfloat16 / float16 bounds are exact)."""
    return "ok" if r["inside"] else f"OUT by {r['max_delta'] - r['box']:.1e}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--edit", action="append", choices=sorted(EDITS))
    p.add_argument("--preset", default="default")
    p.add_argument("--repeats", type=int, default=1, help="edits timed per case (median)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    hp = load_preset(args.preset)
    print(f"preset {args.preset}, {args.threads} thread(s), median of {args.repeats}")
    print("dtype     edit    P(new) before->after  P(true) before->after  max|d|/box  s/edit")
    for dtype in args.dtype or ["float32", "bfloat16", "float16"]:
        lm = load_model(dtype=dtype, device="cpu")
        for name in args.edit or sorted(EDITS):
            r = one(lm, EDITS[name], hp, args.repeats)
            (b, a), (tb, ta) = r["p_new"], r["p_true"]
            print(
                f"{dtype:<9} {name:<7} {b:.4f} -> {a:.4f}        {tb:.4f} -> {ta:.4f}"
                f"        {r['max_delta']:.6g}/{r['box']} {_inside(r)}"
                f"  {r['seconds']:.2f} ({r['steps']} steps)"
                f"  extra {r['extra_bytes'] / 2**20:.1f} MiB",
                flush=True,
            )
        del lm


if __name__ == "__main__":
    main()
