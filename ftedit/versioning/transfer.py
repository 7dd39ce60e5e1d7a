"""Workspace operations on files: verify the store, export edits, import edit files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ftedit.core.deltas import Deltas, compose
from ftedit.core.hparams import FTHyperParams, check_finite
from ftedit.core.metrics import rewrite_report
from ftedit.core.requests import EditRequest
from ftedit.errors import FteditError, ImportRefusedError, IntegrityError, LimitError
from ftedit.versioning.records import EditInfo, VerifyReport
from storage import editfile
from storage.blobs import sha256_bytes, write_file_atomic

if TYPE_CHECKING:
    from ftedit.versioning.workspace import Workspace


def verify(ws: Workspace) -> VerifyReport:
    """Prove the live weights equal a fresh replay of the store, bit for bit.

    Every blob (active or not) is re-read from disk and its sha256 checked; the status column
    is checked against the event log; orphan blobs are listed (they are not problems).
    """
    report = VerifyReport()
    with ws.lock:
        ws._sync()
        report.problems += ws.store.status_problems(ws.base_id)
        fresh: dict[int, Deltas] = {}
        for edit in ws.history():
            try:
                d = ws.read_deltas(edit)
            except FteditError as e:
                report.problems.append(str(e))
                continue
            report.checked_edits += 1
            if edit.id in ws.live.deltas and ws.live.deltas[edit.id] != d:
                report.problems.append(f"edit #{edit.id}: deltas in memory differ from its blob")
            if edit.active:
                fresh[edit.id] = d
        params, base = ws.live.params, ws.live.base
        for name in sorted(base):
            p = params[name]
            replay = compose(
                base[name],
                [fresh[i][name] for i in sorted(fresh) if name in fresh[i]],
                p.dtype,
                p.device,
            )
            if not torch.equal(p.detach(), replay):
                diff = float((p.detach().float() - replay.float()).abs().max())
                report.problems.append(
                    f"tensor {name}: live weights differ from a replay of the store "
                    f"(max |diff| {diff:.3g}); reopen the workspace to rebuild them"
                )
            report.checked_tensors += 1
        report.orphans = ws.store.orphans()
    return report


def export(ws: Workspace, ids: int | Sequence[int], path: str | Path) -> Path:
    """Write edits as one edit file. One edit: its stored blob, byte for byte. Several: their
    deltas summed in id order, with all their requests (the first edit's hparams)."""
    ids = [ids] if isinstance(ids, int) else sorted(ids)
    if not ids:
        raise ImportRefusedError("export needs at least one edit id")
    path = Path(path)
    with ws.lock:
        edits = [ws.get(i) for i in ids]
        if len(edits) == 1:
            data = ws.store.blobs.get(edits[0].blob_sha256, what=f"edit #{ids[0]}")
        else:
            total = Deltas()
            for e in edits:
                total = total + ws.read_deltas(e)
            meta = ws._metadata([r for e in edits for r in e.requests], edits[0].hparams, total)
            meta["combined_from"] = json.dumps(
                [e.hparams_dict() for e in edits], sort_keys=True, separators=(",", ":")
            )
            data = editfile.encode(total, meta)
    write_export(path, data)
    return path


def check_out_path(path: Path, force: bool = False) -> None:
    """Refuse an export target that exists (unless ``force``) or is a folder."""
    if path.is_dir():
        raise ImportRefusedError(f"{path} is a folder: give --out a file name")
    if path.exists() and not force:
        raise ImportRefusedError(f"{path} exists: pass --force to overwrite it")


def write_export(path: Path, data: bytes) -> Path:
    """Write an exported edit file atomically with the mode a new file gets under the umask
    (the atomic write's temp file is private, 0600; an export is meant to be shared)."""
    write_file_atomic(path, data)
    os.chmod(path, 0o666 & ~_umask())
    return path


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, threads race on it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# An FT edit moves weights by at most norm_constraint per element and per edit (ROME's box);
# the slack covers rounding when the model's dtype is bfloat16/float16 (the box is applied in
# it). Without a box, a delta may not exceed this many times the base tensor's largest value.
BOX_SLACK = 1.01
# A compact stored form (hparams.store_as "lowrank:R") applies the truncation of a delta that was
# inside the box: the truncation may pass it (measured: 1.22x on a default edit of the real
# model), so such edits are bounded by twice their box.
COMPACT_BOX_SLACK = 2.0
UNBOXED_SCALE = 10.0
METADATA_ALLOWANCE = 64 * 2**20  # requests and hparams beside the tensors in an edit file


def _refuse(path: Path, why: str) -> ImportRefusedError:
    return ImportRefusedError(f"cannot import {path.name}: {why}; nothing was changed")


def max_file_bytes(ws: Workspace) -> int:
    """The largest edit file this model can have: one float32 delta for every parameter plus
    metadata (or FTEDIT_MAX_UPLOAD when lower). Checked before the file is read."""
    dense = 4 * sum(p.numel() for p in ws.live.params.values())
    cap = dense + METADATA_ALLOWANCE
    if ws.limits.max_upload_bytes is not None:
        cap = min(cap, ws.limits.max_upload_bytes)
    return cap


def _allowed(hparams: list[FTHyperParams], name: str) -> bool:
    """Whether an FT edit with one of ``hparams`` trains parameter ``name`` (ft.py trains every
    parameter whose name contains the template filled with an edited layer)."""
    return any(
        hp.rewrite_module_tmp.format(i) + "." in name + "." for hp in hparams for i in hp.layers
    )


def _recorded_hparams(parsed: dict, path: Path) -> list[FTHyperParams]:
    """The file's hparams, and for a combined export the hparams of each edit in it."""
    dicts = [parsed["hparams"]]
    if "combined_from" in parsed:
        try:
            more = json.loads(parsed["combined_from"])
        except (TypeError, json.JSONDecodeError):
            raise _refuse(path, "its metadata 'combined_from' is not valid JSON") from None
        if not isinstance(more, list) or not more:
            raise _refuse(path, "its metadata 'combined_from' must be a list of hparams")
        dicts = more
    try:
        return [check_finite(FTHyperParams.from_dict(d)) for d in dicts]
    except FteditError as e:
        raise _refuse(path, f"its metadata is invalid ({e})") from None


def _check_bounds(ws: Workspace, path: Path, tensors, hparams: list[FTHyperParams]) -> None:
    """Refuse deltas an FT edit could not have made: far outside the recorded box, or (no box)
    far beyond the base tensor's own scale. A finite 1e30 would silently break the model."""
    boxes = [hp.norm_constraint for hp in hparams]
    slack = [BOX_SLACK if hp.store_as in ("dense", "sign") else COMPACT_BOX_SLACK for hp in hparams]
    for name, t in sorted(tensors.items()):
        biggest = float(t.abs().max()) if t.numel() else 0.0
        base = ws.live.params[name].detach()
        scale = float(base.abs().max()) if base.numel() else 0.0
        if None not in boxes:
            ulp = 2 * torch.finfo(base.dtype).eps * scale  # the box applied in the model's dtype
            limit = sum(b * k for b, k in zip(boxes, slack, strict=True)) + ulp + 1e-7
            why = f"the recorded norm_constraint allows at most {limit:.3g}"
        else:
            limit = UNBOXED_SCALE * len(hparams) * max(scale, 1e-2)
            why = f"{UNBOXED_SCALE:g}x the base tensor's largest value allows {limit:.3g}"
        if biggest > limit:
            raise _refuse(
                path,
                f"tensor {name} moves a weight by {biggest:.3g}; {why}: "
                "the file was not made by an FT edit of this model",
            )


def meta_version(header: dict) -> str | None:
    meta = header.get("__metadata__")
    return meta.get("format_version") if isinstance(meta, dict) else None


def validate(
    ws: Workspace, path: Path, data: bytes, allow_any_tensor: bool = False
) -> tuple[Deltas, list[EditRequest], FTHyperParams]:
    """Check an edit file against this model; returns (deltas, requests, hparams) or refuses.

    Cheap checks first (header, metadata, the requests' lengths and the deployment limits,
    exactly as for a typed edit), then the tensors; nothing is scored before all pass.
    """
    header = editfile.read_header(data)
    bad = {
        k: v.get("dtype")
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and v.get("dtype") != "F32"
    }
    if bad and meta_version(header) != editfile.COMPACT_VERSION:  # format 2: decode checks
        name, dtype = next(iter(sorted(bad.items())))
        raise _refuse(path, f"tensor {name} has dtype {dtype}; edit files hold float32 deltas")
    parsed = editfile.parse_metadata(header.get("__metadata__") or {})
    try:
        requests = [EditRequest.from_dict(r) for r in parsed["requests"]]
        hparams = check_finite(FTHyperParams.from_dict(parsed["hparams"]))
        recorded = _recorded_hparams(parsed, path)
        if not requests:
            raise _refuse(path, "its metadata lists no request")
        ws.limits.check_requests(requests, ws.tok)  # as for a typed edit, before scoring
    except ImportRefusedError:
        raise
    except LimitError as e:
        raise _refuse(path, str(e)) from None
    except FteditError as e:
        raise _refuse(path, f"its metadata is invalid ({e})") from None
    params = ws.live.params
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    tensors, _ = editfile.decode(data, shapes)  # a compact file's shapes checked first
    if not tensors:
        raise _refuse(path, "the file holds no tensors")
    for name, t in sorted(tensors.items()):
        if name not in params:
            raise _refuse(path, f"tensor {name} is not a parameter of {ws.fingerprint.name}")
        if tuple(t.shape) != tuple(params[name].shape):
            raise _refuse(
                path,
                f"tensor {name} has shape {tuple(t.shape)}, the model's is "
                f"{tuple(params[name].shape)}",
            )
        if not torch.isfinite(t).all():
            raise _refuse(path, f"tensor {name} holds NaN or infinite values")
        if not allow_any_tensor and not _allowed(recorded, name):
            raise _refuse(
                path,
                f"tensor {name} is not one an FT edit with its recorded hparams trains "
                f"({recorded[0].rewrite_module_tmp} at layers {list(recorded[0].layers)}); "
                "pass --allow-any-tensor to import it anyway",
            )
    made_for = parsed["base"].get("name", "?") if isinstance(parsed["base"], dict) else "?"
    for name in sorted(tensors):
        if parsed["base_tensors"].get(name) != ws.base_sha(name):
            raise _refuse(
                path,
                f"it was made for another base model ({made_for}): the base "
                f"tensor {name} differs from {ws.fingerprint.name}'s",
            )
    if not allow_any_tensor:
        _check_bounds(ws, path, tensors, recorded)
    held = editfile.decode(data, shapes, packed=True)[0]  # the same values, kept packed
    return Deltas(held), requests, hparams


def already_imported(ws: Workspace, data: bytes) -> EditInfo | None:
    """The edit whose blob is exactly ``data`` (importing it again would stack it twice)."""
    sha = sha256_bytes(data)
    # history(): on a shared deployment a visitor's branch, so no other visitor's edit is named
    return next((e for e in ws.history() if e.blob_sha256 == sha), None)


def duplicate_warning(ws: Workspace, path: str | Path) -> str | None:
    """A warning when ``path`` is already an edit here (the app warns; the CLI refuses)."""
    try:
        e = already_imported(ws, editfile.read_file(path, max_file_bytes(ws)))
    except ImportRefusedError:
        return None  # the import itself says what is wrong with the file
    if e is None:
        return None
    if e.status != "active":  # only an active copy adds the same deltas a second time
        return f"this file is already edit #{e.id} ({e.status}); it was imported again"
    return (
        f"this file is already edit #{e.id} ({e.status}); it was imported again, so its "
        "deltas now count twice: revert one of the two to undo that"
    )


def _already(ws: Workspace, path: Path, data: bytes) -> None:
    """Refuse a file whose exact bytes are already an edit here: importing it again would
    stack the same deltas twice."""
    e = already_imported(ws, data)
    if e is not None:
        hint = "" if e.active else f" (`ftedit reapply {e.id}` puts it back)"
        raise _refuse(
            path,
            f"it is already edit #{e.id} ({e.status}){hint}; importing it again would apply "
            "the same deltas twice: pass --again to do so anyway",
        )


def import_edit(
    ws: Workspace, path: str | Path, *, allow_any_tensor: bool = False, again: bool = True
) -> EditInfo:
    """Validate an edit file completely, then add it on top of the stack ("imported" event).

    ``again=False`` refuses a file that is already an edit here (the CLI's default; the app
    imports and warns with :func:`duplicate_warning`)."""
    path = Path(path)
    try:
        data = editfile.read_file(path, max_file_bytes(ws))
    except ImportRefusedError as e:
        raise _refuse(path, str(e)) from None
    with ws.lock:
        ws._sync()
        try:
            deltas, requests, hparams = validate(ws, path, data, allow_any_tensor)
            if not again:
                _already(ws, path, data)
        except ImportRefusedError as e:
            raise e if "nothing was changed" in str(e) else _refuse(path, str(e)) from None
        before = [rewrite_report(ws.model, ws.tok, r) for r in requests]
        info = ws._add(deltas, data, requests, hparams, before, origin="imported")
    if info.blob_sha256 != sha256_bytes(data):
        raise IntegrityError(f"edit #{info.id}: stored blob differs from {path.name}")
    return info
