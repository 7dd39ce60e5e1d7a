"""Compare eval_counterfact runs record by record (case_id): each method against a baseline run
on exactly the records both scored, e.g. a new preset against the default's 200-record run.

    python bench/paired.py --run results/counterfact-test-local-250 \
        --run results/counterfact-test-local-300 --run results/counterfact-test-local-350 \
        --base results/counterfact-test-tparts-250 default-tparts \
        --base results/counterfact-test-tparts-350 default-tparts \
        --base results/counterfact-test-unedited unedited
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("efficacy", "paraphrase", "neighborhood")


def rows(folder: str) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for method, rs in json.loads((Path(folder) / "results.json").read_text())["rows"].items():
        out.setdefault(method, {}).update({r["case_id"]: r for r in rs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="results folder (repeatable)")
    ap.add_argument(
        "--base",
        nargs=2,
        action="append",
        default=[],
        metavar=("FOLDER", "METHOD"),
        help="a baseline: results folder and method name (repeatable; one method's folders join)",
    )
    args = ap.parse_args()
    runs: dict[str, dict[int, dict]] = {}
    for f in args.run:
        for m, rs in rows(f).items():
            runs.setdefault(m, {}).update(rs)
    bases: dict[str, dict[int, dict]] = {}  # the same method in several folders: joined
    for f, m in args.base:
        bases.setdefault(m, {}).update(rows(f)[m])
    print("| method | n | Efficacy | Paraphrase | Neighborhood |")
    print("|---|---|---|---|---|")
    for m, rs in runs.items():
        ids = [c for c in rs if all(c in b for b in bases.values())]
        for name, src in [(m, rs), *bases.items()]:
            vals = " | ".join(f"{100 * sum(src[c][k] for c in ids) / len(ids):.1f}" for k in KEYS)
            print(f"| {name} | {len(ids)} | {vals} |")


if __name__ == "__main__":
    main()
