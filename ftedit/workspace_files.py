"""Workspace operations on files: verify the store, export edits, import edit files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ftedit.deltas import Deltas, compose
from ftedit.errors import FteditError, ImportRefusedError, IntegrityError
from ftedit.hparams import FTHyperParams
from ftedit.metrics import rewrite_report
from ftedit.requests import EditRequest
from storage import editfile
from storage.blobs import sha256_bytes, write_file_atomic
from storage.records import EditInfo, VerifyReport

if TYPE_CHECKING:
    from ftedit.workspace import Workspace


def verify(ws: Workspace) -> VerifyReport:
    """Prove the live weights equal a fresh replay of the store, bit for bit.

    Every blob (active or not) is re-read from disk and its sha256 checked; the status column
    is checked against the event log; orphan blobs are listed (they are not problems).
    """
    report = VerifyReport()
    with ws.lock:
        ws._sync()
        report.problems += ws.store.status_problems(ws._base_id)
        fresh: dict[int, Deltas] = {}
        for edit in ws.history():
            try:
                d = ws.read_deltas(edit)
            except FteditError as e:
                report.problems.append(str(e))
                continue
            report.checked_edits += 1
            if edit.id in ws._deltas and ws._deltas[edit.id] != d:
                report.problems.append(f"edit #{edit.id}: deltas in memory differ from its blob")
            if edit.active:
                fresh[edit.id] = d
        params = ws._params
        for name in sorted(ws._base):
            p = params[name]
            replay = compose(
                ws._base[name],
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
                [e.hparams.to_dict() for e in edits], sort_keys=True, separators=(",", ":")
            )
            data = editfile.encode(total, meta)
    write_file_atomic(path, data)
    return path


def _refuse(path: Path, why: str) -> ImportRefusedError:
    return ImportRefusedError(f"cannot import {path.name}: {why}; nothing was changed")


def meta_version(header: dict) -> str | None:
    meta = header.get("__metadata__")
    return meta.get("format_version") if isinstance(meta, dict) else None


def validate(ws: Workspace, path: Path, data: bytes):
    """Check an edit file against this model; returns (deltas, requests, hparams) or refuses."""
    header = editfile.read_header(data)
    bad = {
        k: v.get("dtype")
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and v.get("dtype") != "F32"
    }
    if bad and meta_version(header) != editfile.COMPACT_VERSION:  # format 2: decode checks
        name, dtype = next(iter(sorted(bad.items())))
        raise _refuse(path, f"tensor {name} has dtype {dtype}; edit files hold float32 deltas")
    tensors, meta = editfile.decode(data)
    parsed = editfile.parse_metadata(meta)
    if not tensors:
        raise _refuse(path, "the file holds no tensors")
    params = ws._params
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
    made_for = parsed["base"].get("name", "?") if isinstance(parsed["base"], dict) else "?"
    for name in sorted(tensors):
        if parsed["base_tensors"].get(name) != ws.base_sha(name):
            raise _refuse(
                path,
                f"it was made for another base model ({made_for}): the base "
                f"tensor {name} differs from {ws.fingerprint.name}'s",
            )
    try:
        requests = [EditRequest.from_dict(r) for r in parsed["requests"]]
        hparams = FTHyperParams.from_dict(parsed["hparams"])
    except FteditError as e:
        raise _refuse(path, f"its metadata is invalid ({e})") from None
    if not requests:
        raise _refuse(path, "its metadata lists no request")
    return Deltas(tensors), requests, hparams


def import_edit(ws: Workspace, path: str | Path) -> EditInfo:
    """Validate an edit file completely, then add it on top of the stack ("imported" event)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImportRefusedError(f"cannot read {path}: {e.strerror}") from None
    with ws.lock:
        ws._sync()
        try:
            deltas, requests, hparams = validate(ws, path, data)
        except ImportRefusedError as e:
            raise e if "nothing was changed" in str(e) else _refuse(path, str(e)) from None
        before = [rewrite_report(ws.model, ws.tok, r) for r in requests]
        info = ws._add(deltas, data, requests, hparams, before, origin="imported")
    if info.blob_sha256 != sha256_bytes(data):
        raise IntegrityError(f"edit #{info.id}: stored blob differs from {path.name}")
    return info
