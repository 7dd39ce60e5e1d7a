"""Which edits a stack keeps: each edit's efficacy right after it was made (a
bench/sequential.py checkpoint's ``per_edit``) against its efficacy under the first N edits
stacked, by the edit's age (edits 1-100, 101-200, ...). An edit that took and no longer holds
was forgotten; one that never took was not.

    .venv/bin/python bench/forgetting.py --checkpoint runs/zsre-share033 --dataset zsre \
        --n 500 --out bench/results/forgetting-zsre-share033-500

The records are those the checkpoint's stack was made on (their digest is checked) and the
stack is rebuilt from its edit files exactly as a resumed run rebuilds it. Writes
forgetting.md / .json under ``--out``.

``--metric tokens`` scores CounterFact edits as zsRE's are, by the token accuracy of the new
target after the rewrite prompt, instead of ROME's efficacy (the new target more probable than
the old one), which an edit keeps long after its answer stops being the model's: the stack is
then rebuilt one edit at a time to score each edit right after it (the run stored only ROME's
efficacy). For zsRE the two metrics are the same.

    .venv/bin/python bench/forgetting.py --checkpoint runs/dev-share033 --dataset counterfact \
        --split dev --records 250 --n 250 --bucket 50 --metric tokens --out ...
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

from bench import checkpoints as ck
from bench import sequential
from bench.reports import write_report
from ftedit.core import evaluate as ev
from ftedit.core.live import LiveWeights
from ftedit.core.models import load_model


def token_efficacy(model, tok, records) -> list[float]:
    """Per record, the token accuracy (%) of its new target after its rewrite prompt (zsRE:
    of answers[0] after the question, its efficacy)."""
    probes = []
    for r in records:
        if "src" in r:
            probes.append(ev.zsre_probes(r)["efficacy"])
        else:
            rw = r["requested_rewrite"]
            probes.append(
                (rw["prompt"].format(rw["subject"]), " " + rw["target_new"]["str"].strip())
            )
    prompts, targets = zip(*probes, strict=True)
    return [100 * a for a in ev.token_accuracy(model, tok, prompts, targets)]


def run(
    model,
    tok,
    records,
    checkpoint: Path,
    n: int,
    base: dict | None = None,
    metric: str = "efficacy",
) -> list[dict]:
    """Per edit 1..n: its record, efficacy right after it (the checkpoint's) and now, with the
    first ``n`` of the checkpoint's edits stacked on ``model`` (left so). ``metric`` "tokens":
    :func:`token_efficacy` instead, right after each edit scored on the stack rebuilt up to it.
    SystemExit if the checkpoint was made on other records, another base or holds fewer than
    ``n`` edits."""
    state = json.loads((checkpoint / "state.json").read_text())
    settings = state["settings"]
    if settings["records"] != ck.records_id(records):
        raise SystemExit(
            f"checkpoint {checkpoint} was made on other records ({settings['records']}): "
            "give the --dataset, --split and --n of its run"
        )
    if base is not None and settings["base"] != base:
        raise SystemExit(f"checkpoint {checkpoint} was made on another base model")
    made = state["per_edit"]
    if not 1 <= n <= len(made):
        raise SystemExit(f"checkpoint {checkpoint} holds {len(made)} edits; --n {n} asks for more")
    live = LiveWeights(model)
    if metric == "tokens":
        then = []
        for i, rec in enumerate(records[:n], 1):
            live.deltas[i] = ck.load_edit(checkpoint, i)
            live.set_active(range(1, i + 1))  # writes edit i's tensors
            then += token_efficacy(model, tok, [rec])
        now = token_efficacy(model, tok, records[:n])
        return [
            {"edit": i, "case_id": made[i - 1]["case_id"], "right_after": a, "now": b}
            for i, (a, b) in enumerate(zip(then, now, strict=True), 1)
        ]
    ck.stack_from(checkpoint, n, live)
    return [
        {
            "edit": i,
            "case_id": made[i - 1]["case_id"],
            "right_after": made[i - 1]["efficacy_now"],
            "now": sequential.efficacy(model, tok, [rec]),
        }
        for i, rec in enumerate(records[:n], 1)
    ]


def by_age(rows: list[dict], bucket: int) -> list[dict]:
    """Means over edits 1..bucket, bucket+1..2*bucket, ...: right after, now, and the part of
    right after that is gone now (an edit that holds more now than then counts 0)."""
    out = []
    for lo in range(0, len(rows), bucket):
        part = rows[lo : lo + bucket]
        out.append(
            {
                "edits": f"{lo + 1}-{lo + len(part)}",
                "n": len(part),
                "right_after": statistics.fmean(r["right_after"] for r in part),
                "now": statistics.fmean(r["now"] for r in part),
                "lost": statistics.fmean(max(0.0, r["right_after"] - r["now"]) for r in part),
            }
        )
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a bench/sequential.py --checkpoint folder")
    p.add_argument("--dataset", choices=["counterfact", "zsre"], default="zsre")
    p.add_argument("--split", choices=sorted(ev.SPLITS), default="test")
    p.add_argument("--records", type=int, default=1000, help="the --n of the checkpoint's run")
    p.add_argument("--n", type=int, required=True, help="stack the first N edits")
    p.add_argument("--bucket", type=int, default=100)
    p.add_argument(
        "--metric",
        choices=["efficacy", "tokens"],
        default="efficacy",
        help="tokens: CounterFact scored by the new target's token accuracy, as zsRE is",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    zsre = args.dataset == "zsre"
    data = ev.DATA_DIR / ("zsre-sample.json" if zsre else "counterfact-sample.json")
    records = ev.load_records(data, None if zsre else args.split, args.records)
    lm = load_model()
    ckpt = Path(args.checkpoint)
    rows = run(lm.model, lm.tok, records, ckpt, args.n, lm.fingerprint.to_dict(), args.metric)
    ages = by_age(rows, args.bucket)
    md = (
        f"The first {args.n} edits of {ckpt} stacked: each edit's "
        f"{'token accuracy of its new target' if args.metric == 'tokens' else 'efficacy'} "
        f"right after it was made and now, by age ({lm.fingerprint.name})\n\n"
        "| edits | n | right after | now | lost (took, no longer holds) |\n|---|---|---|---|---|\n"
        + "".join(
            f"| {a['edits']} | {a['n']} | {a['right_after']:.1f} | {a['now']:.1f} | "
            f"{a['lost']:.1f} |\n"
            for a in ages
        )
        + f"\nAll {args.n}: right after {statistics.fmean(r['right_after'] for r in rows):.1f}, "
        f"now {statistics.fmean(r['now'] for r in rows):.1f}.\n"
    )
    write_report(args.out, "forgetting", md, {"by_age": ages, "edits": rows})
    print(md)


if __name__ == "__main__":
    main()
