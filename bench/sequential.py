"""Sequential editing: stack N CounterFact test (or zsRE) edits one after another, each trained
on top of the ones before (DESIGN.md's invariant: live = base + d_1 + ... + d_k, summed in float32).

    .venv/bin/python bench/sequential.py --preset default --n 100 --out bench/results/sequential
    .venv/bin/python bench/sequential.py --dataset zsre --n 1000 --every 100 --out ...

zsRE uses MEMIT's convention (target_new = answers[0]; efficacy = token accuracy of it after the
question; the probe = token accuracy of loc_ans after ``loc?``).

``--stop-at HH:MM`` stops stacking at that time and reports the edits made by then;
``--checkpoint DIR`` saves each edit there as it is made (an edit file in the stored form),
and a later run given the same folder and settings continues the stack where it stopped, edit
for edit as an unbroken run would (a 1,000-edit run is longer than one sitting):

    .venv/bin/python bench/sequential.py --dataset zsre --n 1000 --every 100 \
        --checkpoint runs/zsre-1000 --stop-at 17:40 --out bench/results/sequential-zsre

``--branch-from DIR --branch-at N`` starts a new ``--checkpoint`` folder from the first N edits
of another run's (same records, base and curve settings; other hparams, and other
``--layer-groups`` where the first N edits went to the same layers): the stack goes on
from there under the new settings, so two settings are compared past a point only one long
run reaches (the edits before it are the other run's, bit for bit):

    .venv/bin/python bench/sequential.py --dataset zsre --n 500 --every 100 \
        --hparams H.json --branch-from runs/zsre-1000 --branch-at 400 --checkpoint runs/zsre-b

Every ``--every`` edits it scores the rewrite prompts of all edits so far (efficacy so far), the
neighbourhood prompts of all N records (the probe whose unedited score is the baseline) and the
generation entropy (ROME's n-gram entropy of 40 sampled tokens after the generation prompts of
``--gen-records`` CounterFact test records, the same prompts at every checkpoint); at the end,
the dataset's scores over all N edits under the full stack.
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

from bench import checkpoints as ck
from bench.spread import Spread
from ftedit.core import evaluate as ev
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.core.live import LiveWeights
from ftedit.core.metrics import _prefers
from ftedit.core.models import load_model
from ftedit.core.requests import EditRequest
from ftedit.versioning.stored import stored
from storage.blobs import write_file_atomic  # a kill leaves the old file or the new one


def _zsre_accuracy(model, tok, records, metric: str) -> float:
    """Mean token accuracy (%) of one of evaluate.zsre_probes over the records, one batch."""
    prompts, targets = zip(*(ev.zsre_probes(r)[metric] for r in records), strict=True)
    return 100 * statistics.fmean(ev.token_accuracy(model, tok, prompts, targets))


def efficacy(model, tok, records) -> float:
    """Share of records whose rewrite prompt prefers target_new (ROME's efficacy); for zsRE
    records the mean token accuracy of answers[0] after the question."""
    if records and "src" in records[0]:
        return _zsre_accuracy(model, tok, records, "efficacy")
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
    target_true); for zsRE records the mean token accuracy of loc_ans after ``loc?``."""
    if records and "src" in records[0]:
        return _zsre_accuracy(model, tok, records, "neighborhood")
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
    gen_prompts: list[str] | None = None,
    checkpoint: Path | None = None,
    base: dict | None = None,
    branch_from: tuple[Path, int] | None = None,
    spread: Spread | None = None,
) -> dict:
    """Stack the records' edits; past ``deadline`` (epoch seconds) stop stacking, score the
    stack as it is, and report over the edits made. With ``checkpoint`` (a folder), every
    edit is saved there as it is made (its stored form, as an edit file) with the curve so
    far, and a run given the same folder and settings continues where that one stopped: the
    live weights are rebuilt from the same stored deltas, so the edits that follow are the
    ones an unbroken run makes (``base``: the model's fingerprint, part of the settings).
    ``branch_from`` (a checkpoint folder, n) first starts ``checkpoint`` from that one's first
    n edits (:func:`checkpoints.branch`); the result then names the branch. ``spread``: the
    edits go to layer groups in turn (:class:`Spread`)."""
    zsre = bool(records) and "src" in records[0]
    live = LiveWeights(model)
    settings = ck.settings(records, hp, every, probe, gen_prompts, base, spread)
    state = None
    if branch_from is not None:
        if checkpoint is None:
            raise SystemExit("branching needs a --checkpoint folder to hold the branch")
        ck.branch(*branch_from, checkpoint, settings)
    if checkpoint is not None:
        checkpoint.mkdir(parents=True, exist_ok=True)
        state = ck.resume(checkpoint, settings, live)
    branched = {"branch": state["branch"]} if state and "branch" in state else {}

    def entropy() -> float | None:
        return ev.generation_entropy(model, tok, gen_prompts) if gen_prompts else None

    def request(rec) -> EditRequest:
        return EditRequest.from_zsre(rec) if zsre else EditRequest.from_counterfact(rec)

    if state is None:
        curve = [
            {
                "edits": 0,
                "efficacy_so_far": None,
                "neighborhood": neighborhood(model, tok, records, probe),
                "entropy": entropy(),
            }
        ]
        per_edit, elapsed = [], 0.0
    else:
        curve, per_edit, elapsed = state["curve"], state["per_edit"], state["seconds"]
        print(f"resumed from {checkpoint}: {len(per_edit)} edits", flush=True)
    # the edits the model carries (hparams.keep_prior_edits)
    done: list[EditRequest] = [request(r) for r in records[: len(per_edit)]]
    t0 = time.perf_counter() - elapsed
    for i, rec in enumerate(records[len(per_edit) :], len(per_edit) + 1):
        req = request(rec)
        hp_i, keep = spread.edit(hp, done) if spread else (hp, done)
        res = compute_deltas(model, tok, [req], hp_i, prior=keep)
        done.append(req)
        # what the workspace would store and apply (packed: a 1,000-edit stack fits in memory)
        live.deltas[i], data = stored(res.deltas, hp.store_as, {})
        if checkpoint is not None:
            write_file_atomic(checkpoint / f"edit-{i:05d}.safetensors", data)
        live.set_active(range(1, i + 1))  # base + every delta so far; written: edit i's tensors
        per_edit.append(
            {
                "case_id": rec.get("case_id", i - 1),
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
                    "entropy": entropy(),
                }
            )
            print(f"{i} edits ({time.perf_counter() - t0:.0f} s): {curve[-1]}", flush=True)
        if checkpoint is not None:
            state = {
                "settings": settings,
                "curve": curve,
                "per_edit": per_edit,
                "seconds": time.perf_counter() - t0,
            } | branched
            write_file_atomic(checkpoint / "state.json", json.dumps(state).encode())
        if late:
            break
    edited = records[: len(per_edit)]
    final = (
        ev.summarize([ev.score_zsre(model, tok, r) for r in edited], ev.ZSRE_METRICS[:3])
        if zsre
        else ev.summarize([ev.score_counterfact(model, tok, r, gen_tokens=0) for r in edited])
    )
    live.set_active([])
    stack = [live.deltas[i] for i in sorted(live.deltas)]
    return {
        "curve": curve,
        "per_edit": per_edit,
        "final": final,
        "stack_norm": sum(stack[1:], stack[0]).norm() if stack else 0.0,
    } | branched


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
    lines, labels = ax.get_legend_handles_labels()
    if all(p.get("entropy") is not None for p in c):
        ax2 = ax.twinx()
        ax2.plot(
            [p["edits"] for p in c],
            [p["entropy"] for p in c],
            "^--",
            color="tab:green",
            label="generation entropy (bits, right axis)",
        )
        ax2.set_ylabel("n-gram entropy (bits)")
        ax2.set_ylim(0, 1.1 * max(6.5, *(p["entropy"] for p in c)))
        more = ax2.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    ax.legend(lines, labels, fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"


def _layers(text: str) -> list[int]:
    """ "8-11" -> [8, 9, 10, 11]; "3" -> [3]."""
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--hparams", default=None, help="hparams JSON file (instead of --preset)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--split", choices=sorted(ev.SPLITS), default="test")
    p.add_argument("--every", type=int, default=20, help="score the stack every K edits")
    p.add_argument(
        "--probe",
        type=int,
        default=2,
        help="neighbour prompts per record in the curve's neighbourhood probe",
    )
    p.add_argument("--dataset", choices=["counterfact", "zsre"], default="counterfact")
    p.add_argument("--data", default=None, help="records file (default: the dataset's sample)")
    p.add_argument(
        "--gen-records",
        type=int,
        default=20,
        help="CounterFact test records whose first generation prompt measures entropy (0: off)",
    )
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
    p.add_argument(
        "--checkpoint",
        default=None,
        help="folder: save every edit there as it is made, and continue a run saved there "
        "(same settings) where it stopped",
    )
    p.add_argument("--branch-from", default=None, help="checkpoint folder to branch from")
    p.add_argument("--branch-at", type=int, default=None, help="its first N edits")
    p.add_argument(
        "--layer-groups",
        type=_layers,
        nargs="+",
        default=None,
        help="more layer groups, e.g. 8-11 0-3: every --group-edits edits the next group "
        "(class Spread)",
    )
    p.add_argument("--group-edits", type=int, default=0)
    p.add_argument(
        "--group-keep",
        choices=["own", "all"],
        default="own",
        help="the earlier edits an edit keeps: its own group's, or all (class Spread)",
    )
    args = p.parse_args(argv)
    if (args.branch_from is None) != (args.branch_at is None):
        p.error("--branch-from and --branch-at go together")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    zsre = args.dataset == "zsre"
    cf_file = ev.DATA_DIR / "counterfact-sample.json"
    data = args.data or (ev.DATA_DIR / "zsre-sample.json" if zsre else cf_file)
    records = ev.load_records(data, None if zsre else args.split, args.n)
    gen = [
        r["generation_prompts"][0]
        for r in ev.load_records(cf_file, "test", args.gen_records or None)
    ][: args.gen_records]
    lm = load_model(dtype=args.dtype)
    hp = FTHyperParams.from_json(args.hparams) if args.hparams else load_preset(args.preset)
    name = Path(args.hparams).stem if args.hparams else args.preset
    result = run(
        lm.model,
        lm.tok,
        records,
        hp,
        args.every,
        args.probe,
        ev.stop_time(args.stop_at),
        gen,
        Path(args.checkpoint) if args.checkpoint else None,
        lm.fingerprint.to_dict(),
        (Path(args.branch_from), args.branch_at) if args.branch_from else None,
        Spread([hp.layers, *args.layer_groups], args.group_edits, args.group_keep)
        if args.layer_groups
        else None,
    )
    done = result["final"]["n"]
    count = (
        f"{done}"
        if done == len(records)
        else f"{done} (of {len(records)}, stopped at {args.stop_at})"
    )
    title = (
        f"{count} sequential {'zsRE' if zsre else 'CounterFact ' + args.split} edits, preset "
        f"{name!r}, {lm.fingerprint.name}"
    )
    if "branch" in result:
        b = result["branch"]
        title += f" (edits 1-{b['at']} are those of {b['from']}, made with its own hparams)"
    f, c0 = result["final"], result["curve"][0]
    probe = "loc? token accuracy" if zsre else f"{args.probe} neighbours per record"
    md = (
        f"{title}\n\n| after | n | Efficacy | Paraphrase | Neighborhood |\n"
        "|---|---|---|---|---|\n"
        f"| unedited (curve's probe: {probe}) | {len(records)} | | | "
        f"{c0['neighborhood']:.1f} |\n"
        f"| all {done} edits stacked | {f['n']} | {f['efficacy']:.1f} | "
        f"{f['paraphrase']:.1f} | {f['neighborhood']:.1f} |\n\n"
        "| edits | efficacy over edits so far | neighborhood | generation entropy |\n"
        "|---|---|---|---|\n"
        + "".join(
            f"| {p['edits']} | {_fmt(p['efficacy_so_far'])} | {p['neighborhood']:.1f} | "
            f"{'' if p.get('entropy') is None else format(p['entropy'], '.2f')} |\n"
            for p in result["curve"]
        )
        + f"\nMedian steps {statistics.median(e['steps'] for e in result['per_edit']):.0f}, "
        f"median seconds per edit {statistics.median(e['seconds'] for e in result['per_edit']):.2f}, "
        f"stack norm {result['stack_norm']:.1f}.\n"
    )
    (out / "sequential.md").write_text(md)
    (out / "sequential.json").write_text(
        json.dumps({"title": title, "hparams": hp.to_dict(), **result}, indent=1)
    )
    plot(result, out / "sequential.png", title)
    print(md)


if __name__ == "__main__":
    main()
