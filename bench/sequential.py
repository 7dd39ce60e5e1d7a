"""Sequential editing: stack N CounterFact test edits one after another, each trained on top of
the ones before (DESIGN.md's invariant: live = base + d_1 + ... + d_k, summed in float32).

    .venv/bin/python bench/sequential.py --preset default --n 100 --out bench/results/sequential

``--stop-at HH:MM`` stops stacking at that time and reports the edits made by then.

Every ``--every`` edits it scores the rewrite prompts of all edits so far (efficacy so far) and
the neighbourhood prompts of all N records (the probe whose unedited score is the baseline);
at the end, ROME's three scores over all N edits under the full stack.
Writes sequential.md / .json / .png under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from ftedit.core import evaluate as ev
from ftedit.core.compact import compact
from ftedit.core.ft import compute_deltas, weights_to_edit
from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.core.live import LiveWeights
from ftedit.core.metrics import _prefers
from ftedit.core.models import load_model
from ftedit.core.requests import EditRequest


def efficacy(model, tok, records) -> float:
    """Share of records whose rewrite prompt prefers target_new (ROME's efficacy)."""
    hits = []
    for r in records:
        rw = r["requested_rewrite"]
        ((ok, _),) = _prefers(
            model,
            tok,
            [rw["prompt"].format(rw["subject"])],
            rw["target_new"]["str"],
            rw["target_true"]["str"],
        )
        hits.append(ok)
    return 100 * statistics.fmean(hits)


def neighborhood(model, tok, records, per_record: int) -> float:
    """Share of neighbour prompts (the first ``per_record`` of every record) still preferring
    target_true."""
    hits = []
    for r in records:
        rw = r["requested_rewrite"]
        prompts = r["neighborhood_prompts"][:per_record]
        hits += [
            ok
            for ok, _ in _prefers(
                model, tok, prompts, rw["target_true"]["str"], rw["target_new"]["str"]
            )
        ]
    return 100 * statistics.fmean(hits)


def run(
    model,
    tok,
    records,
    hp: FTHyperParams,
    every: int,
    probe: int = 10,
    deadline: float | None = None,
) -> dict:
    """Stack the records' edits; past ``deadline`` (epoch seconds) stop stacking, score the
    stack as it is, and report over the edits made."""
    names = list(weights_to_edit(model, hp))
    live = LiveWeights(model)
    curve = [
        {
            "edits": 0,
            "efficacy_so_far": None,
            "neighborhood": neighborhood(model, tok, records, probe),
        }
    ]
    per_edit = []
    t0 = time.perf_counter()
    for i, rec in enumerate(records, 1):
        res = compute_deltas(model, tok, [EditRequest.from_counterfact(rec)], hp)
        live.deltas[i] = compact(res.deltas, hp.store_as)  # what the workspace would store
        live.set_active(range(1, i + 1), names)  # live = base + every delta so far
        per_edit.append(
            {
                "case_id": rec["case_id"],
                "steps": res.steps,
                "seconds": res.seconds,
                "final_loss": res.losses[-1],
                "efficacy_now": efficacy(model, tok, [rec]),
                "delta_norm": res.deltas.norm(),
            }
        )
        late = deadline is not None and time.time() >= deadline
        if i % every == 0 or i == len(records) or late:
            curve.append(
                {
                    "edits": i,
                    "efficacy_so_far": efficacy(model, tok, records[:i]),
                    "neighborhood": neighborhood(model, tok, records, probe),
                }
            )
            print(f"{i} edits ({time.perf_counter() - t0:.0f} s): {curve[-1]}", flush=True)
        if late:
            break
    edited = records[: len(per_edit)]
    final = ev.summarize([ev.score_counterfact(model, tok, r, gen_tokens=0) for r in edited])
    live.set_active([], names)
    stack = [live.deltas[i] for i in sorted(live.deltas)]
    return {
        "curve": curve,
        "per_edit": per_edit,
        "final": final,
        "stack_norm": sum(stack[1:], stack[0]).norm() if stack else 0.0,
    }


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    c = result["curve"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot(
        [p["edits"] for p in c[1:]],
        [p["efficacy_so_far"] for p in c[1:]],
        "o-",
        label="efficacy over all edits so far",
    )
    ax.plot(
        [p["edits"] for p in c],
        [p["neighborhood"] for p in c],
        "s-",
        label="neighborhood probe (neighbours of all N records)",
    )
    ax.set_xlabel("edits stacked")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--split", choices=sorted(ev.SPLITS), default="test")
    p.add_argument("--every", type=int, default=20, help="score the stack every K edits")
    p.add_argument(
        "--probe",
        type=int,
        default=2,
        help="neighbour prompts per record in the curve's neighbourhood probe",
    )
    p.add_argument("--data", default=str(ev.DATA_DIR / "counterfact-sample.json"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="weights dtype"
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--stop-at",
        default=None,
        help="wall-clock HH:MM (local): stop stacking there and report the edits made",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = ev.load_records(args.data, args.split, args.n)
    lm = load_model(dtype=args.dtype)
    hp = load_preset(args.preset)
    result = run(lm.model, lm.tok, records, hp, args.every, args.probe, ev.stop_time(args.stop_at))
    done = result["final"]["n"]
    count = (
        f"{done}"
        if done == len(records)
        else f"{done} (of {len(records)}, stopped at {args.stop_at})"
    )
    title = (
        f"{count} sequential CounterFact {args.split} edits, preset "
        f"{args.preset!r}, {lm.fingerprint.name}"
    )
    f, c0 = result["final"], result["curve"][0]
    md = (
        f"{title}\n\n| after | n | Efficacy | Paraphrase | Neighborhood |\n"
        "|---|---|---|---|---|\n"
        f"| unedited (curve's probe: {args.probe} neighbours per record) | {len(records)} | | | "
        f"{c0['neighborhood']:.1f} |\n"
        f"| all {done} edits stacked | {f['n']} | {f['efficacy']:.1f} | "
        f"{f['paraphrase']:.1f} | {f['neighborhood']:.1f} |\n\n"
        "| edits | efficacy over edits so far | neighborhood |\n|---|---|---|\n"
        + "".join(
            f"| {p['edits']} | {_fmt(p['efficacy_so_far'])} | {p['neighborhood']:.1f} |\n"
            for p in result["curve"]
        )
    )
    (out / "sequential.md").write_text(md)
    (out / "sequential.json").write_text(
        json.dumps({"title": title, "hparams": hp.to_dict(), **result}, indent=1)
    )
    plot(result, out / "sequential.png", title)
    print(md)


if __name__ == "__main__":
    main()
