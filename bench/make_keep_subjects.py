"""Write the keep pool (``ftedit/core/data/keep_subjects.txt``): other subjects for the keep
prompts, from CounterFact dev records only.

    .venv/bin/python bench/make_keep_subjects.py              # the shipped pool
    .venv/bin/python bench/make_keep_subjects.py --records 60 250 --exclude 0 60 --out POOL

The subjects of the records' requested rewrites and (unless ``--no-prompts``) the subjects
their neighbourhood and attribute prompts are about: each such prompt is one of the relation's
rewrite templates (as the dev records give them) filled with another subject, read back by
matching the template. Any name that occurs anywhere in a record of ``--exclude`` (by default
the test split, 250-499; even inside a longer word) is dropped, so the pool never names what
an evaluation scores; a dev experiment excludes its own records the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, no install

from ftedit import paths  # noqa: E402

DATA = paths.data_dir() / "counterfact-sample.json"
OUT = ROOT / "ftedit" / "core" / "data" / "keep_subjects.txt"
HEADER = (
    "# Other subjects for the keep prompts (hparams.keep_subjects): the subjects of CounterFact\n"
    "# records {lo}-{hi_1} (dev; shared/data/counterfact-sample.json; CounterFact is MIT,\n"
    "# Copyright (c) 2022 Kevin Meng){prompts}, less every name found in records {ex_lo}-{ex_hi_1}.\n"
    "# Built by bench/make_keep_subjects.py. One per line.\n"
)


def _texts(record: dict) -> str:
    """Every string a record holds (prompts of every kind, targets, subject), lower-cased."""
    return json.dumps(record, ensure_ascii=False).lower()


def pool(records: list[dict], prompts: bool, excluded: list[dict]) -> list[str]:
    templates: dict[str, set[str]] = defaultdict(set)
    for r in records:
        templates[r["requested_rewrite"]["relation_id"]].add(r["requested_rewrite"]["prompt"])
    pats = {
        rid: [
            re.compile("^" + re.escape(t).replace(r"\{\}", "(.+?)") + "$")
            for t in sorted(ts, key=len, reverse=True)
        ]
        for rid, ts in templates.items()
    }
    found: list[str] = []
    for r in records:
        found.append(r["requested_rewrite"]["subject"].strip())
        if not prompts:
            continue
        for p in r.get("neighborhood_prompts", []) + r.get("attribute_prompts", []):
            for pat in pats[r["requested_rewrite"]["relation_id"]]:
                m = pat.match(p)
                if m:
                    found.append(m.group(1).strip())
                    break
    found = [_clean(s, set(found)) for s in found]
    seen = "\n".join(_texts(r) for r in excluded)
    out = []
    for s in dict.fromkeys(found):
        if s and s.lower() not in seen:
            out.append(s)
    return out


def _clean(name: str, names: set[str]) -> str:
    """A name read back through a template that lacked a word of the prompt: "Henry Cow,
    that" ("{} was founded by" on "Henry Cow, that was founded by") loses the clause word, and
    "Chicago's" its possessive where "Chicago" is a name too (not "McDonald's")."""
    name = re.sub(r",\s*(that|which|who|whose)$", "", name).strip()
    for s in ("'s", "\u2019s"):
        if name.endswith(s) and name[: -len(s)] in names:
            return name[: -len(s)]
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", nargs=2, type=int, default=(0, 250), metavar=("LO", "HI"))
    ap.add_argument("--exclude", nargs=2, type=int, default=(250, 500), metavar=("LO", "HI"))
    ap.add_argument("--no-prompts", dest="prompts", action="store_false")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    (lo, hi), (ex_lo, ex_hi) = args.records, args.exclude
    if hi > 250:
        sys.exit("--records must stay in the dev split (0-249)")
    data = json.loads(DATA.read_text())
    subjects = pool(data[lo:hi], args.prompts, data[ex_lo:ex_hi])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = HEADER.format(
        lo=lo,
        hi_1=hi - 1,
        ex_lo=ex_lo,
        ex_hi_1=ex_hi - 1,
        prompts="\n# and of their neighbourhood and attribute prompts" if args.prompts else "",
    )
    args.out.write_text(header + "\n".join(subjects) + "\n")
    print(f"{len(subjects)} subjects -> {args.out}")


if __name__ == "__main__":
    main()
