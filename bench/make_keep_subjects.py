"""Write ``ftedit/core/data/keep_subjects.txt``: the subjects of CounterFact dev records 0-249.

    .venv/bin/python bench/make_keep_subjects.py

Only the dev split is read, so the test split (250-499) stays unseen by everything the keep
penalty uses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, no install

from ftedit import paths  # noqa: E402

DATA = paths.data_dir() / "counterfact-sample.json"
OUT = ROOT / "ftedit" / "core" / "data" / "keep_subjects.txt"
HEADER = (
    "# Other subjects for the keep penalty (hparams.keep_subjects): the subjects of CounterFact\n"
    "# records 0-249 (the dev split of shared/data/counterfact-sample.json; CounterFact is MIT,\n"
    "# Copyright (c) 2022 Kevin Meng). Built by bench/make_keep_subjects.py. One per line.\n"
)


def main() -> None:
    subjects: list[str] = []
    for record in json.loads(DATA.read_text())[:250]:
        s = record["requested_rewrite"]["subject"].strip()
        if s not in subjects:
            subjects.append(s)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(HEADER + "\n".join(subjects) + "\n")
    print(f"{len(subjects)} subjects -> {OUT}")


if __name__ == "__main__":
    main()
