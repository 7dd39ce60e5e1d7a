"""Write ``ftedit/core/data/nullspace_prompts.txt``: generic prompts for the null-space statistics.

    .venv/bin/python bench/make_nullspace_prompts.py [path/to/counterfact-sample.json]

From CounterFact dev records 0-249 only: each record's rewrite prompt with its subject, its
paraphrase prompts and its generation prompts (deduplicated). Neighbourhood and attribute
prompts are left out on purpose: CounterFact draws neighbours from a small set of subjects
shared across records, and 40 % of the test split's neighbour prompts name a subject of the dev
neighbour prompts (bench/results/dev-tuning.md, third round), so statistics over them would
protect test neighbours by name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, no install

from ftedit import paths  # noqa: E402

DATA = paths.data_dir() / "counterfact-sample.json"
OUT = ROOT / "ftedit" / "core" / "data" / "nullspace_prompts.txt"
HEADER = (
    "# Generic prompts for the null-space statistics (hparams.nullspace): the rewrite,\n"
    "# paraphrase and generation prompts of CounterFact records 0-249 (the dev split of\n"
    "# shared/data/counterfact-sample.json; CounterFact is MIT, Copyright (c) 2022 Kevin Meng).\n"
    "# Built by bench/make_nullspace_prompts.py. One per line.\n"
)


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA  # a worktree may sit elsewhere
    prompts: dict[str, None] = {}
    for record in json.loads(data.read_text())[:250]:
        rw = record["requested_rewrite"]
        texts = [rw["prompt"].format(rw["subject"])]
        texts += record["paraphrase_prompts"] + record["generation_prompts"]
        for t in texts:
            t = " ".join(t.split())
            if t and not t.startswith("#"):
                prompts.setdefault(t, None)
    OUT.write_text(HEADER + "\n".join(prompts) + "\n")
    print(f"{len(prompts)} prompts -> {OUT}")


if __name__ == "__main__":
    main()
