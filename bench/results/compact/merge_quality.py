"""Join the two halves of the compact quality run (issue 15) into one table.

    python bench/results/compact/merge_quality.py quality-250-300.log quality-301-349.jsonl

The first half (records 250-300) survives only as its per-record lines (efficacy /
paraphrase / neighbourhood per form; the process was killed before its table); the second
half (301-349, `bench_store.py --out`) has full rows, so magnitudes and bytes come from it.
"""

import json
import re
import statistics
import sys
from pathlib import Path

FORMS = ["dense", "lowrank:32", "lowrank:8"]
LINE = re.compile(r"(dense|lowrank:\d+): (\d)/([\d.]+)/([\d.]+)")
MAGS = ("efficacy_magnitude", "paraphrase_magnitude", "neighborhood_magnitude")


def main(log: str, jsonl: str) -> None:
    rows, full = {}, {}
    for line in Path(log).read_text().replace("\r", "\n").splitlines():
        if line.startswith("record "):
            rec = int(line.split()[1].rstrip(":"))
            rows[rec] = {
                f: {"efficacy": float(e), "paraphrase": float(p), "neighborhood": float(n)}
                for f, e, p, n in LINE.findall(line)
            }
    for line in Path(jsonl).read_text().splitlines():
        d = json.loads(line)
        full[d["record"]] = rows[d["record"]] = {f: d[f] for f in FORMS}
    recs = sorted(rows)
    print(f"records {recs[0]}-{recs[-1]}, n={len(recs)}; magnitudes and bytes: {len(full)}")
    print(
        "| stored as | n | Eff. | Para. | Neigh. | Eff. mag. | Para. mag. | Neigh. mag. | bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for f in FORMS:

        def mean(k, rs, f=f):
            return 100 * statistics.fmean(rs[r][f][k] for r in rs)

        rates = [f"{mean(k, rows):.1f}" for k in ("efficacy", "paraphrase", "neighborhood")]
        mags = [f"{mean(k, full):.1f}" for k in MAGS]
        size = statistics.fmean(full[r][f]["bytes"] for r in full)
        print(f"| {f} | {len(recs)} | " + " | ".join(rates + mags) + f" | {size:,.0f} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
