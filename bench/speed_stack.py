"""Seconds of one edit stacked on N earlier ones: where the time goes, and today's paths against
older ones, in the same run.

    .venv/bin/python bench/speed_stack.py --prior 0 100 200 --repeats 3 --out bench/results/speed-stack

The timed edit is zsRE record N; the earlier edits are records 0..N-1, given as ``prior`` (their
questions and answers are read as a stacked edit reads them). The weights stay the unedited
model's, so the work is that of an edit on an N-edit stack and the values are not: the keys of
the earlier edits are read, ranked and joined the same way, whatever the weights.
Per N: median seconds of the whole edit, of building its projector (the keep basis, the earlier
edits' keys among it) and of keep_prior_exact's final projection, for two variants, interleaved;
and how far apart their deltas are (rounding only). ``--compare`` picks them:

- ``complement`` (stop 27): the final projection onto the keep basis's complement
  (``nullspace.COMPLEMENT_ABOVE`` = 0.5, as shipped) against the one off the basis itself;
- ``keys`` (stop 28): today's reading of the earlier edits' keys (each subject key inside its
  question's pass, ``edit_keys.HEADS_INSIDE``; eigenvectors of k k^T once the keys outnumber the
  inputs, ``edit_keys.GRAM_ABOVE``; the questions read from the lowest edited block up, the
  blocks below kept from the edit before, ``edit_keys.BELOW_CACHE``: before each timed edit an
  untimed read of the N-1 earlier ones fills that cache, as the edit before does in a stacked
  run) against stop 27's (subject keys in a pass of their own, an SVD of all the keys, every
  question read whole).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from bench.reports import write_report
from ftedit.core import edit_keys as ek
from ftedit.core import evaluate as ev
from ftedit.core import ft
from ftedit.core import nullspace as ns
from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.core.models import load_model
from ftedit.core.requests import EditRequest

# --compare -> {variant: {(module, constant): value}}, today's first
COMPARE = {
    "complement": {"complement": {}, "off the basis": {(ns, "COMPLEMENT_ABOVE"): float("inf")}},
    "keys": {
        "today": {},
        "stop 27": {
            (ek, "HEADS_INSIDE"): False,
            (ek, "GRAM_ABOVE"): float("inf"),
            (ek, "BELOW_CACHE"): False,
        },
    },
}


def _timed(owner, name: str, spent: list[float]):
    """Wrap ``owner.name`` so that each call adds its seconds to ``spent``; returns the original."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t)

    setattr(owner, name, wrapper)
    return real


def one_edit(model, tok, hp: FTHyperParams, req, prior) -> dict:
    """One edit's seconds: whole, projector built, final projection; and its deltas."""
    setup: list[float] = []
    final: list[float] = []
    real_p = _timed(ft, "projector", setup)
    real_f = _timed(ns.Projector, "off_final_", final)
    try:
        t = time.perf_counter()
        res = ft.compute_deltas(model, tok, [req], hp, prior=prior)
        total = time.perf_counter() - t
    finally:
        ft.projector, ns.Projector.off_final_ = real_p, real_f
    return {"total": total, "projector": sum(setup), "final": sum(final), "deltas": res.deltas}


def measure(model, tok, hp, records, n_prior: int, repeats: int, variants: dict) -> dict:
    reqs = [EditRequest.from_zsre(r) for r in records[: n_prior + 1]]
    seconds = {v: {"total": [], "projector": [], "final": []} for v in variants}
    deltas = {}
    for _ in range(repeats):
        for variant, consts in variants.items():  # interleaved: drift hits both alike
            shipped = {(m, c): getattr(m, c) for m, c in consts}
            try:
                for (m, c), value in consts.items():
                    setattr(m, c, value)
                if ek.BELOW_CACHE and n_prior:  # as in a stacked run: the read of the edit
                    # before this one kept its batches, and this one adds one question
                    ek.keep_bases(model, tok, hp, [reqs[n_prior]], reqs[: n_prior - 1])
                r = one_edit(model, tok, hp, reqs[n_prior], reqs[:n_prior])
            finally:
                for (m, c), value in shipped.items():
                    setattr(m, c, value)
            for k in seconds[variant]:
                seconds[variant][k].append(r[k])
            deltas[variant] = r["deltas"]
    a, b = (deltas[v] for v in variants)
    rel = max(float((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-30)) for k in a)
    med = {v: {k: statistics.median(x) for k, x in s.items()} for v, s in seconds.items()}
    return {"prior": n_prior, "median_seconds": med, "delta_rel_diff": rel}


def table(head: str, rows: list[dict], variants: dict) -> str:
    a, b = variants
    md = (
        f"{head}\n\n| N | s / edit, {a} | s / edit, {b} | ratio | projector built, {a} | "
        f"projector built, {b} | final projection, {a} | final projection, {b} | deltas' "
        "relative difference |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        x, y = (r["median_seconds"][v] for v in variants)
        md += (
            f"| {r['prior']} | {x['total']:.2f} | {y['total']:.2f} | "
            f"{y['total'] / x['total']:.2f}x | {x['projector']:.2f} | {y['projector']:.2f} | "
            f"{x['final']:.2f} | {y['final']:.2f} | {r['delta_rel_diff']:.1e} |\n"
        )
    return md


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", type=int, nargs="+", default=[0, 100, 200])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="default")
    p.add_argument("--hparams", default=None, help="hparams JSON file (instead of --preset)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compare", choices=sorted(COMPARE), default="keys")
    p.add_argument("--out", default=None, help="folder for speed_stack.md / .json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    hp = FTHyperParams.from_json(args.hparams) if args.hparams else load_preset(args.preset)
    if not hp.keep_prior_exact:
        hp = hp.replace(keep_prior_exact=20)  # the projection this compares is keep_prior_exact's
    lm = load_model()
    records = ev.load_records(ev.DATA_DIR / "zsre-sample.json", None, max(args.prior) + 1)
    ft.compute_deltas(lm.model, lm.tok, [EditRequest.from_zsre(records[-1])], hp)  # caches warm
    variants = COMPARE[args.compare]
    rows = []
    for n in args.prior:
        rows.append(measure(lm.model, lm.tok, hp, records, n, args.repeats, variants))
        print(json.dumps(rows[-1]), flush=True)
    head = (
        f"One zsRE edit stacked on N earlier ones (their requests; unedited weights), "
        f"{lm.fingerprint.name}, keep_prior_exact {hp.keep_prior_exact}, {args.threads} "
        f"thread(s), median of {args.repeats}, variants interleaved (--compare {args.compare})"
    )
    md = table(head, rows, variants)
    print(md)
    write_report(args.out, "speed_stack", md, rows)


if __name__ == "__main__":
    main()
