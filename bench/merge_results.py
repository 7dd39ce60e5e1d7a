"""Join eval reports: more methods on the same records, more records in consecutive ranges.

    .venv/bin/python bench/merge_results.py --out bench/results/counterfact-test-200 \
        bench/results/counterfact-test bench/results/counterfact-test-350

Each input is an ``--out`` folder of ``bench/eval_counterfact.py`` (same dataset, split and
generation settings). Inputs on the same records contribute their methods side by side (two
jobs can share the cores); over the record ranges, the merged report keeps the methods every
range has, with the same hyperparameters in each, and summarises their per-record rows afresh:
it is what one run over the joined records would have written (``results.md``, ``results.json``, ``results.png``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from ftedit.core import evaluate as ev

SAME = ("dataset", "split", "gen_prompts", "gen_tokens", "gen_records")
RANGE = re.compile(r"records (\d+)-(\d+)")


def _metrics(dataset: str) -> tuple[str, ...]:
    return ev.CF_METRICS if dataset == "counterfact" else ev.ZSRE_METRICS


def _span(report: dict) -> tuple[int, int]:
    found = RANGE.search(report.get("title", ""))
    if found is None:
        sys.exit(f"no 'records A-B' in the title {report.get('title')!r}: not an eval report")
    return int(found[1]), int(found[2])


def _values(hparams: dict | None) -> dict | None:
    """What trains: the hyperparameters without their free-text ``note``."""
    return {k: v for k, v in hparams.items() if k != "note"} if hparams else hparams


def _join_methods(reports: list[dict]) -> dict:
    """Reports on the same records: one report with all their methods (none in two)."""
    out = dict(reports[0], hparams={}, summaries={}, rows={})
    for r in reports:
        for m in r["summaries"]:
            if m in out["summaries"]:
                sys.exit(f"method {m!r} is in two reports on records {_span(r)}")
            out["hparams"][m], out["summaries"][m] = r["hparams"][m], r["summaries"][m]
            out["rows"][m] = r["rows"][m]
    return out


def merge(reports: list[dict]) -> dict:
    first = reports[0]
    for r in reports[1:]:
        for k in SAME:
            if r.get(k) != first.get(k):
                sys.exit(f"reports differ in {k}: {first.get(k)!r} vs {r.get(k)!r}")
    # Reports on the same records add methods; reports on the next records add records.
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in reports:
        groups.setdefault(_span(r), []).append(r)
    reports = [_join_methods(g) for g in groups.values()]
    spans = list(groups)
    for (_, hi), (lo, _) in itertools.pairwise(spans):
        if lo != hi + 1:
            sys.exit(f"record ranges are not consecutive: {spans}")
    names = [m for m in reports[0]["summaries"] if all(m in r["summaries"] for r in reports)]
    if not names:
        sys.exit("no method is in every record range")
    for m in names:
        if any(_values(r["hparams"][m]) != _values(reports[0]["hparams"][m]) for r in reports):
            sys.exit(f"method {m!r} has other hyperparameters in some report")
    rows = {m: [row for r in reports for row in r["rows"][m]] for m in names}
    title = RANGE.sub(f"records {spans[0][0]}-{spans[-1][1]}", first["title"], count=1)
    return {
        **{k: first.get(k) for k in SAME},
        "title": title,
        "records": sum(r["records"] for r in reports),
        "merged_from": [f"{r['title']}: {', '.join(r['summaries'])}" for r in reports],
        "hparams": {m: reports[0]["hparams"][m] for m in names},
        "summaries": {m: ev.summarize(rows[m], _metrics(first["dataset"])) for m in names},
        "rows": rows,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="report folders, in record order")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    if len(args.inputs) < 2:
        sys.exit("give at least two report folders")
    reports = [json.loads((Path(d) / "results.json").read_text()) for d in args.inputs]
    merged = merge(reports)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = ev.markdown_table(merged["summaries"], _metrics(merged["dataset"]))
    (out / "results.md").write_text(f"{merged['title']}\n\n{table}")
    (out / "results.json").write_text(json.dumps(merged, indent=1))
    ev.save_chart(merged["summaries"], out / "results.png", merged["title"])
    print(f"{merged['title']}\n\n{table}")


if __name__ == "__main__":
    main()
