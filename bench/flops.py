"""FLOPs per edit and how close the training steps get to this CPU's float32 matmul peak.

    .venv/bin/python bench/flops.py --preset default --preset fast --preset smollm2-ft-l \
        --n 3 --out bench/results/flops

For each preset and each of the first ``--n`` dev records (CounterFact 0-249; tuning data, so
nothing of the test split is touched), one edit runs twice: once under
``torch.utils.flop_counter.FlopCounterMode`` (matmul / attention FLOPs, forward and backward,
of the whole ``compute_deltas`` and of its training loop ``ft._train`` alone) and once timed
without the counter (the counter's dispatch overhead would slow the clock). The peak is a
``torch.mm`` of two 2048 x 2048 float32 matrices (best of 5) at the same thread count, and, to
show what the step's own shapes allow, the same for one [tokens x 576] x [576 x 1536] product.
Prints and writes ``flops.md`` / ``flops.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from ftedit.core import evaluate as ev
from ftedit.core import ft
from ftedit.core.hparams import load_preset
from ftedit.core.models import load_model
from ftedit.core.requests import EditRequest


def mm_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Best-of GFLOP/s of one float32 torch.mm [m, k] x [k, n]."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    reps = max(1, int(2e9 // (2 * m * k * n)))  # ~2 GFLOP per timing
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * m * k * n / best / 1e9


class _TrainProbe:
    """Wraps ft._train: its FLOPs (when counting) or its seconds (when timing)."""

    def __init__(self):
        self.orig, self.flops, self.seconds, self.counting = ft._train, 0, 0.0, False

    def __call__(self, *args, **kwargs):
        if self.counting:
            with FlopCounterMode(display=False) as fc:
                out = self.orig(*args, **kwargs)
            self.flops = fc.get_total_flops()
            return out
        t0 = time.perf_counter()
        out = self.orig(*args, **kwargs)
        self.seconds = time.perf_counter() - t0
        return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", action="append", default=[], help="preset name (repeatable)")
    p.add_argument("--n", type=int, default=3, help="dev records per preset")
    p.add_argument("--data", default=None, help="counterfact-sample.json (default: shared)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    data = args.data or ev.DATA_DIR / "counterfact-sample.json"
    records = ev.load_records(data, "dev", args.n)
    lm = load_model()
    tokens = 64  # about the training batch: 4 texts x ~16 tokens
    peak, step_shape = mm_gflops(2048, 2048, 2048), mm_gflops(tokens, 576, 1536)
    probe = _TrainProbe()
    ft._train = probe
    rows = {}
    for name in args.preset or ["default"]:
        hp = load_preset(name)
        per = []
        for rec in records:
            req = EditRequest.from_counterfact(rec)
            ft.compute_deltas(lm.model, lm.tok, [req], hp)  # warm caches (keep pool, statistics)
            probe.counting = True
            with FlopCounterMode(display=False) as fc:
                res = ft.compute_deltas(lm.model, lm.tok, [req], hp)
            total, train = fc.get_total_flops(), probe.flops
            probe.counting = False
            timed = ft.compute_deltas(lm.model, lm.tok, [req], hp)
            assert timed.steps == res.steps  # same seed, same edit: the counts are this run's
            per.append(
                dict(
                    steps=res.steps,
                    gflop=total / 1e9,
                    train_gflop=train / 1e9,
                    seconds=timed.seconds,
                    train_seconds=probe.seconds,
                )
            )
            print(name, per[-1], flush=True)
        med = {k: statistics.median(r[k] for r in per) for k in per[0]}
        med["train_gflops_per_s"] = statistics.median(
            r["train_gflop"] / r["train_seconds"] for r in per
        )
        rows[name] = med
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        (
            f"FLOPs per edit, SmolLM2-135M float32, {args.threads} thread(s), medians over dev records"
            f" 0-{args.n - 1}. torch.mm peak: {peak:.1f} GFLOP/s (2048^3), {step_shape:.1f} GFLOP/s"
            f" at the step's shape ({tokens}x576 @ 576x1536)."
        ),
        "",
        (
            "| preset | steps | GFLOP / edit | of which training | s / edit | training s "
            "| training GFLOP/s | % of mm peak |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['steps']:.0f} | {m['gflop']:.0f} | {m['train_gflop']:.0f} "
            f"| {m['seconds']:.2f} | {m['train_seconds']:.2f} | {m['train_gflops_per_s']:.1f} "
            f"| {100 * m['train_gflops_per_s'] / peak:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "flops.md").write_text(text)
    (out / "flops.json").write_text(
        json.dumps({"peak_gflops": peak, "step_shape_gflops": step_shape, "rows": rows}, indent=1)
    )
    print(text)


if __name__ == "__main__":
    main()
