"""How much room an edit stacked on N earlier ones has left, and whether it still takes.

    .venv/bin/python bench/stack_room.py --prior 0 100 200 300 --records 10 \
        --hparams bench/hparams/seq26/default-exact.json --out bench/results/stack-room

For each N, the edits of records N .. N+records-1 are made one at a time on the unedited
weights with records 0 .. N-1 given as the earlier edits (``prior``: their keys are read,
ranked and kept as a stacked edit keeps them; the weights are not those of a real stack, so
this isolates what the keep basis alone does to a new edit). Per N, the medians of:

- *room*: the share of the edited subject's last-token key (the head read alone, as the edit
  keeps it) that lies outside the keep basis, mean over the edited layers: the part a step
  projected onto the subject's keys and off the keep basis can still act on;
- the keep basis's width: the edit's own keep prompts, and the earlier edits' directions;
- the edit's *efficacy right after it is made* (zsRE: token accuracy of the answer after the
  question; CounterFact: the new target preferred), its optimiser steps and its delta's norm.

A falling room with a falling efficacy says the edits stop taking because the keep basis
leaves them too little of their own key, not because the earlier edits are forgotten.
``--hparams`` may name several files: each is a row group, measured on the same records.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from bench.reports import write_report
from bench.sequential import efficacy  # the one efficacy a stack is scored with
from ftedit.core import evaluate as ev
from ftedit.core import ft
from ftedit.core.edit_keys import keep_bases
from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.core.key_reads import each_key
from ftedit.core.live import applied
from ftedit.core.models import load_model
from ftedit.core.requests import EditRequest


def room(model, tok, hp: FTHyperParams, req: EditRequest, prior) -> dict:
    """Room left to ``req``'s subject key by the keep basis, and the basis's two widths."""
    own, earlier, _ = keep_bases(model, tok, hp, [req], prior)
    keys: dict[int, torch.Tensor] = {}
    each_key(model, tok, hp, [req.head], lambda i, k: keys.setdefault(i, k[0]), None, True)
    shares = []
    for layer, k in keys.items():
        Q = torch.cat([own[layer], earlier[layer]], 1) if layer in earlier else own[layer]
        shares.append(float((k - Q @ (Q.T @ k)).norm() / k.norm()))
    layer = min(own)
    return {
        "room": statistics.fmean(shares),
        "own": own[layer].shape[1],
        "earlier": earlier[layer].shape[1] if earlier else 0,
    }


def measure(model, tok, hp, records, reqs, n_prior: int, count: int) -> dict:
    rows = []
    for j in range(n_prior, n_prior + count):
        row = room(model, tok, hp, reqs[j], reqs[:n_prior])
        res = ft.compute_deltas(model, tok, [reqs[j]], hp, prior=reqs[:n_prior])
        with applied(model, res.deltas):
            row["efficacy_now"] = efficacy(model, tok, [records[j]])
        row |= {"steps": res.steps, "delta_norm": res.deltas.norm()}
        rows.append(row)
        print(json.dumps({"prior": n_prior, "record": j, **row}), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["efficacy_mean"] = statistics.fmean(r["efficacy_now"] for r in rows)
    return {"prior": n_prior, "records": count, "median": med}


def table(head: str, groups: dict[str, list[dict]]) -> str:
    md = (
        f"{head}\n\n| hparams | N earlier | room (median) | keep basis: own / earlier | "
        "efficacy right after (mean) | steps | delta norm |\n|---|---|---|---|---|---|---|\n"
    )
    for name, rows in groups.items():
        for r in rows:
            m = r["median"]
            md += (
                f"| {name} | {r['prior']} | {m['room']:.3f} | {m['own']:.0f} / "
                f"{m['earlier']:.0f} | {m['efficacy_mean']:.1f} | {m['steps']:.0f} | "
                f"{m['delta_norm']:.2f} |\n"
            )
    return md


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["zsre", "counterfact"], default="zsre")
    p.add_argument("--split", choices=sorted(ev.SPLITS), default="dev", help="CounterFact only")
    p.add_argument("--prior", type=int, nargs="+", default=[0, 100, 200, 300])
    p.add_argument("--records", type=int, default=10, help="new edits measured per N")
    p.add_argument("--hparams", nargs="+", default=None, help="hparams JSON files")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for stack_room.md / .json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    hps = {Path(f).stem: FTHyperParams.from_json(f) for f in args.hparams or []}
    hps = hps or {"default": load_preset("default")}
    lm = load_model()
    need = max(args.prior) + args.records
    if args.dataset == "zsre":
        records = ev.load_records(ev.DATA_DIR / "zsre-sample.json", None, need)
        reqs = [EditRequest.from_zsre(r) for r in records]
    else:
        records = ev.load_records(ev.DATA_DIR / "counterfact-sample.json", args.split, need)
        reqs = [EditRequest.from_counterfact(r) for r in records]
    if len(records) < need:
        raise SystemExit(f"{len(records)} records, {need} needed: lower --prior or --records")
    groups = {
        name: [measure(lm.model, lm.tok, hp, records, reqs, n, args.records) for n in args.prior]
        for name, hp in hps.items()
    }
    head = (
        f"An edit stacked on N earlier {args.dataset} edits (their requests; unedited weights), "
        f"{lm.fingerprint.name}, {args.records} new edits per N, {args.threads} thread(s)"
    )
    md = table(head, groups)
    print(md)
    write_report(args.out, "stack_room", md, groups)


if __name__ == "__main__":
    main()
