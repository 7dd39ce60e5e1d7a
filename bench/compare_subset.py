"""Summaries of every method of several eval reports, restricted to the records one report covers.

    .venv/bin/python bench/compare_subset.py bench/results/NEW bench/results/counterfact-test-200 \
        [--out bench/results/NEW/compare.md]

A run cut short by ``--stop-at`` covers fewer records than the earlier reports; this compares
them on the same records: the first folder's records (by ``case_id``) decide which rows of every
report count, and a method's summary is recomputed from those rows (``evaluate.summarize``).
A method name already taken by an earlier report (e.g. ``default`` before and after a change of
preset) is shown with its report's folder name.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from ftedit.core import evaluate as ev


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", help="eval --out folders; the first decides the records")
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    loaded = [json.loads((Path(r) / "results.json").read_text()) for r in args.reports]
    first = loaded[0]
    ids = {row["case_id"] for rows in first["rows"].values() for row in rows}
    summaries: dict[str, dict] = {}
    medians: dict[str, tuple[float, float]] = {}
    for folder, rep in zip(args.reports, loaded, strict=True):
        for name, rows in rep["rows"].items():
            kept = [r for r in rows if r["case_id"] in ids]
            label = name if name not in summaries else f"{name} ({Path(folder).name})"
            if kept and label not in summaries:
                summaries[label] = ev.summarize(kept, ev.CF_METRICS)
                if name != "unedited":  # the table's "s / edit" is a mean; goals are medians
                    medians[label] = (
                        statistics.median(r["seconds"] for r in kept),
                        statistics.median(r["steps"] for r in kept),
                    )
    text = (
        f"{first['title']}: every method on the same {len(ids)} records "
        f"(from {', '.join(args.reports)})\n\n{ev.markdown_table(summaries, ev.CF_METRICS)}"
    )
    text += "\nMedian s / edit (median steps): " + "; ".join(
        f"{k} {s:.1f} ({n:g})" for k, (s, n) in medians.items()
    )
    text += "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
