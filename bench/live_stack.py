"""Memory and seconds of a long stack of live edits: packed deltas with kept sums (stop 31)
against dense float32 deltas summed whole at every change (stop 30), in the same run.

    .venv/bin/python bench/live_stack.py --n 400 --every 100 --out bench/results/live-stack

Each of N edits is a rank-32 delta of every matrix the default preset edits, given as the
bfloat16 factors its stored form holds (``lowrank:32``; random, as the measured work does not
depend on the values). Four copies of the model each carry the same stack:

- ``packed`` (today): ``Deltas`` of :class:`storage.codec.Packed` values, rebuilt when summed;
  ``LiveWeights`` continues its kept float32 sum, so stacking one more edit rebuilds one,
  keeps rebuilt values up to ``live.REBUILT_BYTES`` (1 GiB) and partial sums at every
  16th edit (sparser past ``live.MARKS_BYTES``, 256 MiB);
- ``packed-31`` (stop 31): the same with no partial sums kept (``marks_budget`` 0);
- ``packed-0``: neither rebuilt values nor partial sums kept;
- ``dense`` (stop 30): the same deltas rebuilt once and held as float32 tensors, and the kept
  sums dropped before every change, so each change sums the whole stack from the base.

At every ``--every`` edits: the bytes the stack's deltas (and kept rebuilt values and partial
sums) hold; the median seconds of stacking the next edit (made live, then taken off again,
``--repeats`` times) and of making the whole stack live again after a revert; the seconds of
the first revert of the middle edit (the app's revert of an old edit) and of the third last
(an undo of a recent one): a repeat of the same revert would start from its own marks.
The live weights of the copies are compared bit for bit at each point.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from bench.reports import write_report
from ftedit.core.deltas import Deltas
from ftedit.core.ft import weights_to_edit
from ftedit.core.hparams import load_preset
from ftedit.core.live import LiveWeights
from ftedit.core.models import load_model
from storage import codec

RANK = 32


def make_edit(shapes: dict[str, tuple[int, int]], g: torch.Generator) -> dict[str, codec.Packed]:
    form = f"lowrank:{RANK}"
    return {
        n: codec.Packed(
            {
                ".u": (torch.randn(r, RANK, generator=g) * 1e-2).to(torch.bfloat16),
                ".v": (torch.randn(RANK, c, generator=g) * 1e-2).to(torch.bfloat16),
            },
            form,
            (r, c),
        )
        for n, (r, c) in shapes.items()
    }


def timed(live: LiveWeights, ids: list[int], whole: bool) -> float:
    if whole:  # stop 30: no kept sums
        live.sums.clear()
        live.marks.clear()
        live.marks_bytes = 0
    t = time.perf_counter()
    live.set_active(ids)
    return time.perf_counter() - t


def point(lives: dict[str, LiveWeights], k: int, repeats: int) -> dict:
    """Figures with edits 1..k live and edit k+1 registered (not live)."""
    row: dict = {"edits": k}
    for v, live in lives.items():
        whole = v == "dense"
        stack, more = list(range(1, k + 1)), list(range(1, k + 2))
        push, revert, reapply, recent = [], [], [], []
        for _ in range(repeats):  # the first revert is the one that counts: a repeat may
            push.append(timed(live, more, whole))  # start from that revert's own marks
            timed(live, stack, whole)
            revert.append(timed(live, [i for i in stack if i != (k + 1) // 2], whole))
            reapply.append(timed(live, stack, whole))
            recent.append(timed(live, [i for i in stack if i != max(k - 2, 1)], whole))
            timed(live, stack, whole)
        revert, recent = revert[:1], recent[:1]
        row[v] = {
            "bytes": sum(live.deltas[i].nbytes for i in stack)
            + live.rebuilt_bytes
            + live.marks_bytes,
            "stack_s": statistics.median(push),
            "revert_middle_s": statistics.median(revert),
            "reapply_middle_s": statistics.median(reapply),
            "revert_recent_s": statistics.median(recent),
        }
    a, *others = (lives[v].params for v in lives)
    row["same_bits"] = all(torch.equal(a[n], b[n]) for b in others for n in lives["dense"].base)
    return row


def table(rows: list[dict], head: str) -> str:
    cols = [
        ("deltas held", lambda x: f"{x['bytes'] / 2**20:,.0f} MiB"),
        ("stack one more, s", lambda x: f"{x['stack_s']:.3f}"),
        ("revert the middle one, s", lambda x: f"{x['revert_middle_s']:.3f}"),
        ("reapply it, s", lambda x: f"{x['reapply_middle_s']:.3f}"),
        ("revert the third last, s", lambda x: f"{x['revert_recent_s']:.3f}"),
    ]
    variants = [v for v in rows[0] if isinstance(rows[0][v], dict)]
    md = f"{head}\n\n| edits live | " + " | ".join(f"{c}, {v}" for c, _ in cols for v in variants)
    md += " | same bits |\n|---" + "|---" * (len(cols) * len(variants) + 1) + "|\n"
    for r in rows:
        cells = [f(r[v]) for _, f in cols for v in variants]
        md += f"| {r['edits']} | " + " | ".join(cells) + f" | {r['same_bits']} |\n"
    return md


def run(model, n: int, every: int, repeats: int, names: list[str] | None = None) -> list[dict]:
    names = names or list(weights_to_edit(model, load_preset("default")))
    params = dict(model.named_parameters())
    shapes = {nm: tuple(params[nm].shape) for nm in names}
    variants = ("packed", "packed-31", "packed-0", "dense")
    lives = {v: LiveWeights(copy.deepcopy(model)) for v in variants}
    lives["packed-31"].marks_budget = 0  # stop 31: no partial sums kept
    lives["packed-0"].rebuilt_budget = lives["packed-0"].marks_budget = 0
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(1, n + 2):
        edit = make_edit(shapes, g)
        for v in variants[:-1]:
            lives[v].deltas[i] = Deltas(edit)
        lives["dense"].deltas[i] = Deltas({nm: p.tensor() for nm, p in edit.items()})
        k = i - 1  # edits 1..k are live, i is registered
        if k and k % every == 0:
            rows.append(point(lives, k, repeats))
            print(json.dumps(rows[-1]), flush=True)
        if i <= n:
            for v, live in lives.items():
                timed(live, list(range(1, i + 1)), v == "dense")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for live_stack.md / .json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    lm = load_model()
    rows = run(lm.model, args.n, args.every, args.repeats)
    head = (
        f"A stack of random rank-{RANK} edits of the default preset's matrices, "
        f"{lm.fingerprint.name}, {args.threads} thread(s), median of {args.repeats} "
        "(a revert: the first time; a repeat starts from its own marks)"
    )
    md = table(rows, head)
    print(md)
    write_report(args.out, "live_stack", md, rows)


if __name__ == "__main__":
    main()
