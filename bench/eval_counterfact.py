"""Score FT presets on CounterFact, one edit at a time from the unedited model (ROME Table 4).

    .venv/bin/python bench/eval_counterfact.py --split test --n 100 \
        --preset default --preset smollm2-ft-l --unedited --out bench/results/counterfact-test

Writes ``results.md`` (table), ``results.json`` (summaries, hparams, per-record rows) and
``results.png`` (chart) under ``--out``; per-record rows are also streamed to ``rows.jsonl`` so
an interrupted run still leaves its partial figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from ftedit.core import evaluate as ev
from ftedit.core import keep
from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.core.models import load_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", action="append", default=[], help="preset name (repeatable)")
    p.add_argument("--hparams", action="append", default=[], help="hparams JSON file (repeatable)")
    p.add_argument("--unedited", action="store_true", help="also score the unedited model")
    p.add_argument("--dataset", choices=["counterfact", "zsre"], default="counterfact")
    p.add_argument(
        "--split",
        choices=sorted(ev.SPLITS),
        default="dev",
        help="CounterFact split (zsRE: the first --n records of the sample)",
    )
    p.add_argument("--n", type=int, default=None, help="first N records of the split")
    p.add_argument(
        "--start", type=int, default=0, help="skip the split's first START records (then --n)"
    )
    p.add_argument("--data", default=None, help="records file (default: ../shared/data/...)")
    p.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2)")
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="weights dtype"
    )
    p.add_argument("--gen-prompts", type=int, default=2, help="generation prompts per record")
    p.add_argument("--gen-tokens", type=int, default=40, help="new tokens per generation")
    p.add_argument(
        "--gen-records",
        type=int,
        default=None,
        help="generation entropy on the first N records only (default: all)",
    )
    p.add_argument(
        "--keep-pool",
        default=None,
        help="keep pool file instead of ftedit/core/data/keep_subjects.txt (a dev experiment's "
        "pool without the scored records: bench/make_keep_subjects.py --exclude)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (shared CPUs: keep 1)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--stop-at",
        default=None,
        help="wall-clock HH:MM (local); methods stop there and report the records done",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="add these methods to the report already in --out (same records)",
    )
    return p.parse_args(argv)


def methods(args) -> dict[str, FTHyperParams | None]:
    out: dict[str, FTHyperParams | None] = {"unedited": None} if args.unedited else {}
    out.update({name: load_preset(name) for name in args.preset})
    out.update({Path(f).stem: FTHyperParams.from_json(f) for f in args.hparams})
    if not out:
        sys.exit("nothing to evaluate: give --preset, --hparams and/or --unedited")
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.keep_pool:
        if not Path(args.keep_pool).is_file():
            sys.exit(f"--keep-pool: no such file {args.keep_pool}")
        keep.KEEP_SUBJECTS_FILE = Path(args.keep_pool)
        keep._subject_pool.cache_clear()
    zsre = args.dataset == "zsre"
    data = args.data or ev.DATA_DIR / f"{args.dataset}-sample.json"
    try:
        records = ev.load_records(data, None if zsre else args.split, args.n, args.start)
    except ValueError as e:
        sys.exit(f"--start: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # only once the records are known to be there
    metrics = ev.ZSRE_METRICS if zsre else ev.CF_METRICS
    lm = load_model(args.model, dtype=args.dtype)
    todo = methods(args)
    lo = (0 if zsre else ev.SPLITS[args.split][0]) + args.start
    where = "zsRE (MEMIT convention)" if zsre else f"CounterFact {args.split}"
    title = (
        f"{where}, records {lo}-{lo + len(records) - 1}, {lm.fingerprint.name}, one edit at a time"
    )
    summaries, all_rows = {}, {}
    if args.append and (out / "results.json").exists():
        old = json.loads((out / "results.json").read_text())
        if old["records"] != len(records) or old["title"] != title:
            sys.exit(f"--append: {out} holds a report on other records ({old['title']})")
        summaries, all_rows = old["summaries"], old["rows"]
        todo = {**{k: _hp(v) for k, v in old["hparams"].items()}, **todo}
    with open(out / "rows.jsonl", "a" if args.append else "w") as stream:
        for name, hp in todo.items():
            if name in summaries:
                continue
            t0 = time.perf_counter()

            def progress(i, n, row, name=name, t0=t0):
                stream.write(json.dumps({"method": name, **row}) + "\n")
                stream.flush()
                print(
                    f"[{name}] {i}/{n} eff={row['efficacy']:.0f} para={row['paraphrase']:.2f} "
                    f"neigh={row['neighborhood']:.2f} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )

            kw = (
                {}
                if zsre
                else {
                    "gen_prompts": args.gen_prompts,
                    "gen_tokens": args.gen_tokens,
                    "gen_records": args.gen_records,
                }
            )
            kw["deadline"] = ev.stop_time(args.stop_at)
            rows = ev.evaluate(lm.model, lm.tok, records, hp, args.dataset, progress, **kw)
            all_rows[name], summaries[name] = rows, ev.summarize(rows, metrics)
            # Written after every method, so a run cut short keeps the methods it finished.
            write(out, title, args, len(records), todo, summaries, all_rows, metrics)
    (out / "rows.jsonl").unlink(missing_ok=True)  # a progress log: results.json has every row
    print(ev.markdown_table(summaries, metrics))


def _hp(d: dict | None) -> FTHyperParams | None:
    return FTHyperParams.from_dict(d) if d else None


def write(
    out: Path, title: str, args, n: int, todo: dict, summaries: dict, all_rows: dict, metrics
) -> None:
    (out / "results.md").write_text(f"{title}\n\n{ev.markdown_table(summaries, metrics)}")
    (out / "results.json").write_text(
        json.dumps(
            {
                "title": title,
                "dataset": args.dataset,
                "split": None if args.dataset == "zsre" else args.split,
                "records": n,
                "gen_prompts": args.gen_prompts,
                "gen_tokens": args.gen_tokens,
                "gen_records": args.gen_records,
                "keep_pool": args.keep_pool,
                "hparams": {k: (v.to_dict() if v else None) for k, v in todo.items()},
                "summaries": summaries,
                "rows": all_rows,
            },
            indent=1,
        )
    )
    ev.save_chart(summaries, out / "results.png", title)


if __name__ == "__main__":
    main()
