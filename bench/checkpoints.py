"""bench/sequential.py's checkpoints: a stack saved edit by edit (each an edit file in the
stored form) with the settings its edits and curve depend on, resumed or branched from.

A checkpoint folder holds ``edit-00001.safetensors``... and ``state.json`` (settings, curve,
per-edit figures, and for a branch where it came from), written last and atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench.spread import Spread
from ftedit.core.deltas import Deltas
from ftedit.core.hparams import FTHyperParams
from ftedit.core.live import LiveWeights
from storage import editfile
from storage.blobs import write_file_atomic  # a kill leaves the old file or the new one


def records_id(records) -> str:
    """How a checkpoint names the records its stack was made on."""
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
    return f"{len(records)} records, sha256 {digest}"


def settings(
    records, hp: FTHyperParams, every: int, probe: int, gen_prompts, base, spread=None
) -> dict:
    """What a checkpoint's edits and curve depend on: a resumed run must match it exactly."""
    return {
        "records": records_id(records),
        "hparams": hp.to_dict(),
        "every": every,
        "probe": probe,
        "gen_prompts": list(gen_prompts or []),
        "base": base,
    } | ({"spread": spread.to_dict()} if spread else {})


def resume(ckpt: Path, settings: dict, live: LiveWeights) -> dict | None:
    """The state a checkpoint holds (its edits made active in ``live``), or None if it has
    none; SystemExit if it was made with other settings."""
    state_file = ckpt / "state.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    saved = dict(state["settings"])
    # a field added since the checkpoint was made is at its default there (every new field's
    # default keeps the old behaviour): compare what the saved hparams mean today
    saved["hparams"] = FTHyperParams.from_dict(saved["hparams"]).to_dict()
    if saved != settings:
        diff = sorted(k for k in settings if saved.get(k) != settings[k])
        raise SystemExit(
            f"checkpoint {ckpt} was made with other settings ({', '.join(diff)} differ): "
            "run with those, or give another --checkpoint folder"
        )
    stack_from(ckpt, len(state["per_edit"]), live)
    return state


def plan(settings: dict, n: int) -> list[tuple]:
    """The layers each of a run's first ``n`` edits went to and the earlier edits it kept, from
    the run's settings (:meth:`Spread.plan`): a branch goes on only where two runs agree."""
    spread = Spread.from_dict(settings.get("spread"))
    if spread is None:
        return [(tuple(settings["hparams"]["layers"]), "all")] * n
    return spread.plan(n)


def branch(src: Path, n: int, dst: Path, settings: dict) -> None:
    """Start checkpoint ``dst`` from the first ``n`` edits of checkpoint ``src``, to go on under
    ``settings``: the same records, base and curve settings; other hparams and layer groups
    allowed where the first ``n`` edits went to the same layers and kept the same earlier
    edits (:func:`plan`). Its state names the branch. SystemExit, with nothing written, if
    ``dst`` already holds a run, the settings differ otherwise or ``src`` holds fewer than
    ``n`` edits. A ``dst`` that already holds this branch is left as it is (the run then
    continues it)."""
    if (dst / "state.json").exists():
        held = json.loads((dst / "state.json").read_text()).get("branch", {})
        if (held.get("from"), held.get("at")) == (str(src), n):
            return
        raise SystemExit(f"checkpoint {dst} already holds another run: give an empty folder")
    state = json.loads((src / "state.json").read_text())
    if plan(state["settings"], n) != plan(settings, n):
        raise SystemExit(
            f"the first {n} edits of {src} were made on other layers, or kept other earlier "
            "edits, than these --layer-groups give them: branch where the two agree"
        )
    theirs = {k: v for k, v in state["settings"].items() if k not in ("hparams", "spread")}
    mine = {k: v for k, v in settings.items() if k not in ("hparams", "spread")}
    if theirs != mine:
        diff = sorted(k for k in mine if theirs.get(k) != mine[k])
        raise SystemExit(
            f"checkpoint {src} was made with other settings ({', '.join(diff)} differ)"
        )
    if not 1 <= n <= len(state["per_edit"]):
        raise SystemExit(
            f"checkpoint {src} holds {len(state['per_edit'])} edits; cannot branch at {n}"
        )
    dst.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        name = f"edit-{i:05d}.safetensors"
        write_file_atomic(dst / name, (src / name).read_bytes())
    per_edit = state["per_edit"][:n]
    new = {
        "settings": settings,
        "curve": [p for p in state["curve"] if p["edits"] <= n],
        "per_edit": per_edit,
        "seconds": sum(e["seconds"] for e in per_edit),
        "branch": {"from": str(src), "at": n, "hparams": state["settings"]["hparams"]},
    }
    write_file_atomic(dst / "state.json", json.dumps(new).encode())  # last: a whole branch


def load_edit(ckpt: Path, i: int) -> Deltas:
    """Edit ``i`` (from 1) of a checkpoint, as its stored form applies it."""
    tensors, _ = editfile.decode((ckpt / f"edit-{i:05d}.safetensors").read_bytes(), packed=True)
    return Deltas(tensors)


def stack_from(ckpt: Path, n: int, live: LiveWeights) -> None:
    """Make the first ``n`` edits a checkpoint holds the active stack of ``live`` (every
    tensor any of them touches: a spread stack's edits touch other layers than its hparams')."""
    for i in range(1, n + 1):
        live.deltas[i] = load_edit(ckpt, i)
    live.set_active(live.deltas)
