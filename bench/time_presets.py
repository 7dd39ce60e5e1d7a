"""Seconds per edit of several presets, interleaved record by record, so load on a shared CPU
falls on every preset alike (eval_counterfact runs one method after another).

    .venv/bin/python bench/time_presets.py --split test --n 10 --preset default --preset fast \
        --preset smollm2-ft-l --out bench/results/time-presets

Only ``compute_deltas`` is timed (no scoring). What an edit reads from the weights and caches
per state of them (training prefixes, the keep pool's vectors: ftedit/core/memo.py) stays cached
from record to record here, since every record is edited from the same weights; ``--cold``
clears it before each edit, as an edit made after another one (new weights) pays it. Prints
and writes ``times.md`` / ``times.json``: median seconds and steps per preset, and each
preset's median ratio to the first one's on the same record.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from bench.reports import write_report
from ftedit.core import evaluate as ev
from ftedit.core import keep, prefixes
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.core.models import load_model
from ftedit.core.requests import EditRequest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", action="append", default=[])
    p.add_argument("--hparams", action="append", default=[], help="hparams JSON (repeatable)")
    p.add_argument("--split", default="test", choices=sorted(ev.SPLITS))
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--data", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stop-at", default=None, help="HH:MM: stop before a record after it")
    p.add_argument("--out", required=True)
    p.add_argument("--cold", action="store_true", help="no cached prefixes / pool per edit")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    data = args.data or ev.DATA_DIR / "counterfact-sample.json"
    records = ev.load_records(data, args.split, args.n, args.start)
    todo = {n: load_preset(n) for n in args.preset}
    todo.update({Path(f).stem: FTHyperParams.from_json(f) for f in args.hparams})
    lm = load_model()
    deadline = ev.stop_time(args.stop_at)
    for hp in todo.values():  # warm once: keep pool, null-space statistics, allocator
        compute_deltas(lm.model, lm.tok, [EditRequest.from_counterfact(records[0])], hp)
    rows: dict[str, list[dict]] = {n: [] for n in todo}
    for rec in records:
        if deadline is not None and time.time() > deadline:
            break
        req = EditRequest.from_counterfact(rec)
        for name, hp in todo.items():
            if args.cold:
                keep._POOL_CACHE.clear()
                prefixes._CACHE.clear()
            res = compute_deltas(lm.model, lm.tok, [req], hp)
            rows[name].append({"case_id": rec["case_id"], "s": res.seconds, "steps": res.steps})
        print({n: round(r[-1]["s"], 2) for n, r in rows.items()}, flush=True)
    first = next(iter(rows))
    lines = [
        (
            f"compute_deltas seconds, interleaved per record, {len(rows[first])} {args.split} "
            f"records from {args.start}, {args.threads} thread(s)"
            + (", cold caches (prefixes, keep pool) per edit" if args.cold else "")
        ),
        "",
        f"| preset | median s / edit | median steps | median ratio to {first} |",
        "|---|---|---|---|",
    ]
    for name, rs in rows.items():
        ratio = statistics.median(r["s"] / f["s"] for r, f in zip(rs, rows[first], strict=True))
        lines.append(
            f"| {name} | {statistics.median(r['s'] for r in rs):.2f} "
            f"| {statistics.median(r['steps'] for r in rs):g} | {ratio:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    write_report(args.out, "times", text, rows)
    print(text)


if __name__ == "__main__":
    main()
