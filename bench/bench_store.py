"""Benchmarks of the versioned store on the default model; prints figures (not run by tests).

    FTEDIT_CACHE=~/.cache/ftedit-test-models .venv/bin/python bench/bench_store.py

1. revert / reapply of a one-layer edit vs reloading the model from the safetensors cache
   (goal: <= 20 ms and >= 50x faster), measured in one run;
2. store bytes per edit vs the raw delta bytes;
3. reverting an edit in the middle of N stacked synthetic edits on the same tensor (goal <= 1 s);
4. `ftedit log --json` over M edits, as a fresh process (goal <= 200 ms);
5. compact edits (issue 15, ``--form``): bytes per four-matrix edit dense vs compact, revert /
   reapply ms of a compact edit, the bytes of a Llama-3-8B-shaped 14336x4096 matrix, and
   (``--quality N``) CounterFact test quality dense vs compact on the same trained deltas:
   each record is trained once, then scored with the dense delta and with each form's
   reconstruction (generation entropy off, for CPU time).

    bench/bench_store.py --skip revert stack log --form lowrank:32 --quality 100 \
        --stop-at 04:10 --data ../shared/data/counterfact-sample.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FTEDIT_CACHE", str(Path.home() / ".cache" / "ftedit-test-models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)  # a shared 2-core machine: leave a core to the others

import ftedit.core.evaluate as ev  # noqa: E402
from ftedit.core.ft import compute_deltas  # noqa: E402
from ftedit.core.hparams import load_preset  # noqa: E402
from ftedit.core.models import load_model  # noqa: E402
from ftedit.core.requests import EditRequest  # noqa: E402
from ftedit.paths import store_location  # noqa: E402
from ftedit.versioning.stored import stored  # noqa: E402
from ftedit.versioning.workspace import Workspace  # noqa: E402
from storage import codec, editfile  # noqa: E402

REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def bench_revert(home: Path, reps: int, reloads: int) -> Workspace:
    ws = Workspace(home=home, loaded=load_model())
    hp = load_preset("smollm2-ft-l")  # one layer: model.layers.0.mlp.down_proj
    info = ws.edit(REQUEST, hp)
    print(
        f"one-layer edit #{info.id}: {info.steps} steps, {info.seconds:.1f} s training; "
        f"tensors {info.tensor_names}"
    )
    ws.revert(info.id), ws.reapply(info.id)  # warm-up
    rv, ra = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        ws.revert(info.id)
        t1 = time.perf_counter()
        ws.reapply(info.id)
        rv.append(t1 - t0)
        ra.append(time.perf_counter() - t1)
    reload_ms = _median_ms(load_model, reloads)
    rv_ms, ra_ms = 1000 * statistics.median(rv), 1000 * statistics.median(ra)
    print(f"revert  median {rv_ms:7.2f} ms   (n={reps})")
    print(f"reapply median {ra_ms:7.2f} ms   (n={reps})")
    print(
        f"reload  median {reload_ms:7.1f} ms   (load_model() from the safetensors cache, "
        f"n={reloads})"
    )
    print(
        f"speed-up: revert {reload_ms / rv_ms:.0f}x, reapply {reload_ms / ra_ms:.0f}x "
        f"faster than reloading"
    )
    blob = ws.store.blobs.path(info.blob_sha256).stat().st_size
    raw = sum(4 * t.numel() for t in ws.live.deltas[info.id].values())  # as float32
    print(
        f"store bytes per edit: blob {blob:,} B vs raw float32 delta {raw:,} B "
        f"(+{blob - raw:,} B header/metadata, {blob / raw:.4f}x); "
        f"database row ~{_row_bytes(ws, info.id):,} B"
    )
    assert ws.verify().ok
    return ws


def _row_bytes(ws: Workspace, edit_id: int) -> int:
    return len(json.dumps(ws.get(edit_id).to_dict()))


def bench_stack(home: Path, n: int) -> None:
    """N synthetic edits on the same tensor (the worst case: every one shares it)."""
    ws = Workspace(home=home, loaded=load_model())
    hp = load_preset("smollm2-ft-l")
    name = "model.layers.0.mlp.down_proj.weight"
    shape = dict(ws.model.named_parameters())[name].shape
    gen = torch.Generator().manual_seed(0)
    meta = ws._metadata([REQUEST], hp, [name])
    t0 = time.perf_counter()
    for _ in range(n):
        d = torch.randn(shape, generator=gen) * 1e-6
        sha = ws.store.blobs.put(editfile.encode({name: d}, meta))
        ws.store.add_edit(
            ws.base_id,
            requests=[REQUEST.to_dict()],
            hparams=hp.to_dict(),
            method="FT-L",
            objective=hp.objective,
            metrics={},
            losses=[],
            steps=0,
            seconds=0.0,
            blob_sha256=sha,
            tensor_names=[name],
            origin="imported",
        )
    print(f"stored {n} synthetic edits on {name} in {time.perf_counter() - t0:.1f} s")
    del ws
    gc.collect()
    t0 = time.perf_counter()
    ws = Workspace(home=home, loaded=load_model())
    print(
        f"open + replay of {n} stacked edits (sha256-checked reads): "
        f"{time.perf_counter() - t0:.1f} s"
    )
    mid = ws.active_ids()[n // 2]
    t0 = time.perf_counter()
    res = ws.revert(mid)
    t1 = time.perf_counter()
    ws.reapply(mid)
    t2 = time.perf_counter()
    later = res.warning.split(" were ")[0] if res.warning else ""
    print(
        f"revert edit #{mid} in the middle of {n}: {1000 * (t1 - t0):.0f} ms; reapply "
        f"{1000 * (t2 - t1):.0f} ms (warning names {later.count('#')} later edits)"
    )


def bench_log(home: Path, n: int, reps: int) -> None:
    from sqlalchemy import insert

    from storage.models import EditRow, EventRow
    from storage.store import Store

    store = Store(*store_location(home))
    base = store.base_id(
        {
            "name": "smollm2-135m-instruct",
            "source": "bench",
            "revision": None,
            "file_sha256": "0" * 64,
            "dtype": "float32",
        }
    )
    hp = load_preset("smollm2-ft-l").to_dict()
    report = {
        "completion": " Rome, Italy. It is one of the",
        "p_target_new": 0.71,
        "p_target_true": 0.02,
    }
    now = datetime.now(timezone.utc)
    losses = [1.0 / (k + 1) for k in range(25)]
    rows = [
        {
            "id": i,
            "base_model_id": base,
            "requests": [REQUEST.to_dict()],
            "hparams": hp,
            "method": "FT-L",
            "objective": "prompt_last",
            "origin": "trained",
            "metrics": {"before": [report], "after": [report]},
            "losses": losses,
            "steps": 25,
            "seconds": 3.2,
            "blob_sha256": f"{i:064x}",
            "tensor_names": ["model.layers.0.mlp.down_proj.weight"],
            "status": "active",
            "created_at": now,
        }
        for i in range(1, n + 1)
    ]
    events = [{"edit_id": i, "kind": "created", "created_at": now} for i in range(1, n + 1)]
    with store.engine.begin() as conn:
        conn.execute(insert(EditRow), rows)
        conn.execute(insert(EventRow), events)
    cmd = [sys.executable, "-m", "ftedit", "--home", str(home), "log", "--json"]
    times, size = [], 0
    for _ in range(reps):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True).stdout
        times.append(time.perf_counter() - t0)
        size = len(out)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - t0
    print(
        f"`ftedit log --json` over {n:,} edits: median {1000 * statistics.median(times):.0f} ms"
        f" (min {1000 * min(times):.0f} ms, n={reps}; {size / 1e6:.1f} MB of JSON; "
        f"bare python start {1000 * bare:.0f} ms)"
    )


def _revert_ms(ws: Workspace, edit_id: int, reps: int) -> tuple[float, float]:
    ws.revert(edit_id), ws.reapply(edit_id)  # warm-up
    rv, ra = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        ws.revert(edit_id)
        t1 = time.perf_counter()
        ws.reapply(edit_id)
        rv.append(t1 - t0)
        ra.append(time.perf_counter() - t1)
    return 1000 * statistics.median(rv), 1000 * statistics.median(ra)


def bench_compact_store(home: Path, preset: str, form: str, reps: int) -> None:
    """One four-matrix edit stored dense and in ``form``: blob bytes, revert / reapply ms."""
    ws = Workspace(home=home, loaded=load_model())
    hp = load_preset(preset)
    sizes = {}
    for f in ("dense", form):
        info = ws.edit(REQUEST, hp.replace(store_as=f))
        sizes[f] = ws.store.blobs.path(info.blob_sha256).stat().st_size
        rv, ra = _revert_ms(ws, info.id, reps)
        print(
            f"{preset} edit stored {f:>10}: {sizes[f]:>11,} B per edit "
            f"({len(info.tensor_names)} tensors); revert {rv:6.2f} ms, reapply {ra:6.2f} ms "
            f"(median of {reps})"
        )
        ws.revert(info.id)
    print(f"bytes per edit {form} / dense: 1/{sizes['dense'] / sizes[form]:.1f}")
    assert ws.verify().ok
    # Llama-3-8B down_proj (4096 x 14336): the bytes depend only on the shapes, so the parts
    # are random ones of the right shape (an SVD of that matrix takes minutes on one core).
    shape, meta = (4096, 14336), ws._metadata([REQUEST], hp, [])
    dense = 4 * shape[0] * shape[1]
    kind, rank = codec.parse_form(form)
    if kind == "lowrank":
        parts = {".u": torch.zeros(shape[0], rank), ".v": torch.zeros(rank, shape[1])}
        parts = {k: v.to(torch.bfloat16) for k, v in parts.items()}
    else:
        parts = codec.encode(torch.randn(shape), form)
    data = editfile._safetensors_bytes({f"w{k}": v for k, v in parts.items()}, meta)
    print(
        f"Llama-3-8B-shaped {shape[1]}x{shape[0]} matrix: dense float32 {dense:,} B, "
        f"{form} {len(data):,} B (file with metadata): 1/{dense / len(data):.0f}"
    )


def bench_quality(args) -> None:
    """CounterFact test records: train once, score the dense delta and each compact form."""
    forms = args.form.split(",")
    lm = load_model()
    model, tok = lm.model, lm.tok
    hp = load_preset(args.preset).replace(store_as="dense")
    data = args.data or ev.DATA_DIR / "counterfact-sample.json"
    records = ev.load_records(data, split="test", n=args.quality, start=args.start)
    deadline = ev.stop_time(args.stop_at)
    rows: dict[str, list[dict]] = {"dense": [], **{f: [] for f in forms}}
    nbytes: dict[str, list[int]] = {f: [] for f in rows}
    for i, record in enumerate(records):
        if deadline is not None and time.time() > deadline:
            break
        req = EditRequest.from_counterfact(record)
        res = compute_deltas(model, tok, [req], hp)
        meta = editfile.edit_metadata(  # as the workspace writes it (sha256s stand-ins)
            lm.fingerprint.to_dict(),
            dict.fromkeys(res.deltas, "0" * 64),
            [req.to_dict()],
            hp.to_dict(),
        )
        den = sum(float(v.norm() ** 2) for v in res.deltas.values())
        for f, done in rows.items():
            t0 = time.perf_counter()
            deltas, data = stored(res.deltas, f, meta)  # what storing in f applies
            secs = time.perf_counter() - t0
            with ev.applied(model, deltas):
                row = ev.score_counterfact(model, tok, record, gen_tokens=0)
            num = sum(float((deltas[k] - res.deltas[k]).norm() ** 2) for k in deltas)
            row.update(seconds=secs, relerr=num / den, case_id=record["case_id"])
            done.append(row)
            nbytes[f].append(len(data))
        if args.out:  # one JSON line per record: a stopped run keeps its rows
            with open(args.out, "a") as fh:
                row = {f: {**r[-1], "bytes": nbytes[f][-1]} for f, r in rows.items()}
                fh.write(json.dumps({"record": 250 + args.start + i, **row}) + "\n")
        print(
            f"record {250 + args.start + i}: "
            + " ".join(
                f"{f}: {r[-1]['efficacy']:.0f}/{r[-1]['paraphrase']:.2f}/"
                f"{r[-1]['neighborhood']:.2f}"
                for f, r in rows.items()
            ),
            flush=True,
        )
    n = len(rows["dense"])
    if not n:
        print("no record done before --stop-at")
        return
    metrics = [m for m in ev.CF_METRICS if m not in ("gen_entropy", "seconds")]
    summaries = {f: ev.summarize(r, metrics) for f, r in rows.items()}
    print(
        f"\nCounterFact test records {250 + args.start}-{250 + args.start + n - 1} "
        f"(n={n}), preset {args.preset}, trained once per record:\n"
    )
    print(ev.markdown_table(summaries, metrics))
    for f, r in rows.items():
        b = statistics.fmean(nbytes[f])
        print(
            f"{f:>10}: {b:>12,.0f} B per edit file (1/{statistics.fmean(nbytes['dense']) / b:.1f}"
            f"), squared error {100 * statistics.fmean(x['relerr'] for x in r):.1f} % of the "
            f"delta's, compacting {1000 * statistics.fmean(x['seconds'] for x in r):.0f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--stack", type=int, default=1000)
    ap.add_argument("--log-rows", type=int, default=10_000)
    ap.add_argument("--skip", nargs="*", default=[], choices=["revert", "stack", "log", "compact"])
    ap.add_argument("--form", default="lowrank:32", help="compact form(s), comma-separated")
    ap.add_argument("--preset", default="default", help="preset of the compact benchmarks")
    ap.add_argument("--quality", type=int, default=0, help="CounterFact test records to score")
    ap.add_argument("--start", type=int, default=0, help="first test record (0 = record 250)")
    ap.add_argument("--data", default=None, help="CounterFact records file")
    ap.add_argument("--stop-at", default=None, help="HH:MM: stop the quality run then")
    ap.add_argument("--out", default=None, help="append per-record quality rows (JSON lines)")
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"cpu count {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if "revert" not in args.skip:
            bench_revert(Path(tmp) / "revert", args.reps, args.reloads)
            gc.collect()
        if "log" not in args.skip:
            bench_log(Path(tmp) / "log", args.log_rows, 7)
        if "stack" not in args.skip:
            bench_stack(Path(tmp) / "stack", args.stack)
        if "compact" not in args.skip:
            bench_compact_store(Path(tmp) / "compact", args.preset, args.form.split(",")[0], 7)
    if args.quality:
        bench_quality(args)


if __name__ == "__main__":
    main()
