"""Chat efficacy: does an edit trained on a raw sentence show when the instruct model is asked?

    .venv/bin/python bench/eval_chat.py --split test --n 40 --preset fast \
        --out bench/results/chat-test

For each CounterFact record, from the unedited model: the rewrite is asked through the
tokenizer's chat template as "Complete the sentence: <prompt with the subject>" and scored three
ways, unedited and after the record's edit (one edit at a time, restored exactly afterwards):

- ``chat``: P(the assistant's answer starts with target_new) > P(... target_true) (whole
  target strings; the headline chat efficacy);
- ``chat_restated``: the same with the answer prefilled by the rewrite sentence (the model
  restates the sentence before answering, so this is where its answer word usually sits);
- ``greedy``: the greedy answer (24 tokens) names target_new and not target_true.

``--counterfact`` also scores ROME's efficacy / paraphrase / neighbourhood of the same edit (so
one run says what a training change does to both), with the edit's steps and seconds.

Writes ``results.md`` and ``rows.jsonl`` under ``--out``. Runs on consecutive records join
into one report: ``eval_chat.py join --out OUT --title "CounterFact test records 250-349"
DIR1 DIR2``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from ftedit.core import chat
from ftedit.core import evaluate as ev
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.core.metrics import counterfact_scores
from ftedit.core.models import load_model
from ftedit.core.requests import EditRequest

METRICS = ("chat", "chat_restated", "greedy")
CF = ("efficacy", "paraphrase", "neighborhood")


def score(model, tok, record: dict) -> dict:
    rw = record["requested_rewrite"]
    sentence = rw["prompt"].format(rw["subject"])
    new, true = rw["target_new"]["str"].strip(), rw["target_true"]["str"].strip()
    q = chat.COMPLETE.format(sentence)
    direct = chat.answer_logprobs(model, tok, q, [new, true])
    restated = chat.answer_logprobs(model, tok, q, [new, true], prefill=sentence)
    answer = chat.chat_generate(model, tok, q, 24)
    low = answer.lower()
    return {
        "chat": float(direct[0] > direct[1]),
        "chat_restated": float(restated[0] > restated[1]),
        "greedy": float(new.lower() in low and true.lower() not in low),
        "answer": answer,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fast", help="the edit's preset (default: fast)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override one hyperparameter of the preset, e.g. --set chat_texts=true",
    )
    p.add_argument("--split", choices=sorted(ev.SPLITS), default="test")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--data", default=str(ev.DATA_DIR / "counterfact-sample.json"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--stop-at", default=None, help="wall-clock HH:MM (local): stop and report")
    p.add_argument(
        "--counterfact",
        action="store_true",
        help="also score ROME's efficacy / paraphrase / neighbourhood, before and after",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    deadline = ev.stop_time(a.stop_at)
    records = ev.load_records(a.data, a.split, a.n, a.start)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model()
    model, tok = lm.model, lm.tok
    hp = load_preset(a.preset)
    overrides = {k: json.loads(v) for k, _, v in (x.partition("=") for x in a.set)}
    hp = FTHyperParams.from_dict({**hp.to_dict(), **overrides}) if overrides else hp
    method = a.preset + "".join(f" {k}={json.dumps(v)}" for k, v in overrides.items())
    rows = []
    with open(out / "rows.jsonl", "w") as f:
        for i, rec in enumerate(records):
            if deadline and time.time() > deadline:
                break
            t0 = time.perf_counter()
            before = score(model, tok, rec)
            if a.counterfact:
                before.update(counterfact_scores(model, tok, rec))
            res = compute_deltas(model, tok, [EditRequest.from_counterfact(rec)], hp)
            with ev.applied(model, res.deltas):
                after = score(model, tok, rec)
                if a.counterfact:
                    after.update(counterfact_scores(model, tok, rec))
            after.update(edit_seconds=res.seconds, steps=res.steps)
            row = {"case_id": rec.get("case_id"), "unedited": before, method: after}
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(f"{i + 1}/{len(records)} {after['answer']!r}", flush=True)
    lo = ev.SPLITS[a.split][0] + a.start
    title = f"CounterFact {a.split} records {lo}-{lo + len(rows) - 1}"
    write_report(out, rows, method, title)


def write_report(out: Path, rows: list[dict], preset: str, title: str) -> None:
    """results.md: each metric's rate (%) unedited and after the edit, and the command."""
    cols = METRICS + tuple(k for k in CF if rows and all(k in r["unedited"] for r in rows))
    lines = [
        f"# Chat efficacy, {title} ({len(rows)} edits, preset `{preset}`)",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for m in ("unedited", preset):
        vals = [
            100 * statistics.fmean(r[m][k] for r in rows) if rows else float("nan") for k in cols
        ]
        lines.append(f"| {m} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    secs = statistics.median(r["seconds"] for r in rows) if rows else float("nan")
    lines += ["", f"median {secs:.1f} s per record (both scorings and the edit)"]
    if rows and all("edit_seconds" in r[preset] for r in rows):
        lines.append(
            f"median edit {statistics.median(r[preset]['edit_seconds'] for r in rows):.1f} s, "
            f"{statistics.median(r[preset]['steps'] for r in rows):.0f} steps"
        )
    lines += ["", f"command: `{' '.join(sys.argv)}`"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def join(argv=None) -> None:
    """``eval_chat.py join --out OUT --preset P DIR...``: one report over consecutive runs."""
    p = argparse.ArgumentParser(description="join eval_chat.py runs on consecutive records")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="fast")
    p.add_argument("--title", required=True, help='e.g. "CounterFact test records 250-349"')
    p.add_argument("dirs", nargs="+")
    a = p.parse_args(argv)
    rows = [
        json.loads(line)
        for d in a.dirs
        for line in (Path(d) / "rows.jsonl").read_text().splitlines()
        if line.strip()
    ]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, rows, a.preset, a.title)


if __name__ == "__main__":
    join(sys.argv[2:]) if sys.argv[1:2] == ["join"] else main()
