"""`ftedit recover`: rebuild a lost or damaged SQLite database from the blob root.

Every blob is a complete edit file: its ``__metadata__`` holds the requests, hparams and base
fingerprint, and its tensor names are the parameters it touches. What a blob does not hold is
the history: ids, order, statuses, metrics. Those come from the newest event log that can still
be read (the damaged database itself, often readable past a bad index page, or an older copy
given with ``--log``). Without one, edits are ordered by when their blobs were written and all
come back *reverted* (the live model is then the base model), which the report says plainly:
``ftedit reapply`` / ``checkout`` restore the ones that were live.

The damaged database is never deleted: it is renamed ``<name>.damaged-<UTC stamp>`` (with its
-wal and -shm files) before the new one is made.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ftedit.errors import FteditError, StoreError
from storage import gc
from storage.db import describe
from storage.fastlog import quick_check
from storage.models import EditRow, EventRow, utcnow

RECOVERED = "recovered from the blob root by `ftedit recover`"


@dataclass
class RecoverReport:
    moved_to: list[Path] = field(default_factory=list)
    log_source: str | None = None  # where statuses came from; None: all imported as reverted
    recovered: list[int] = field(default_factory=list)
    reverted_unknown: list[int] = field(default_factory=list)  # no log entry: came back reverted
    skipped: list[str] = field(default_factory=list)  # blobs or logged edits not recovered


def sqlite_file(url: str) -> Path:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        raise StoreError(
            f"`ftedit recover` rebuilds SQLite databases; {describe(url)} is not one "
            "(restore a server database from its backups)"
        )
    return Path(u.database)


def read_log(path: Path) -> dict | None:
    """{"edits": {id: row}, "events": [row]} from a database file, or None if unreadable."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            edits = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM edits ORDER BY id")}
            events = [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return {"edits": edits, "events": events}


def move_aside(db: Path) -> list[Path]:
    """Rename the database and its WAL/SHM files out of the way (never delete them)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = db.with_name(db.name + suffix)
        if src.exists():
            dest = db.with_name(f"{db.name}.damaged-{stamp}{suffix}")
            src.rename(dest)
            moved.append(dest)
    return moved


def recover(
    home: str | Path,
    log: str | Path | None = None,
    force: bool = False,
    database_url: str | None = None,
    blob_url: str | None = None,
) -> RecoverReport:
    """Rebuild the home's SQLite database (``database_url``, default ``<home>/ftedit.db``)
    from its blob root (see the module docstring)."""
    from storage.store import Store

    home = Path(home)
    url = database_url or f"sqlite:///{home / 'ftedit.db'}"
    db = sqlite_file(url)
    report = RecoverReport()
    if db.exists() and not force and not quick_check(db) and read_log(db) is not None:
        raise StoreError(
            f"the database {db} is readable and passes quick_check: nothing to recover "
            "(`ftedit recover --force` rebuilds it anyway; the current file is kept)"
        )
    salvage = read_log(Path(log)) if log is not None else None
    if log is not None and salvage is None:
        raise StoreError(f"--log {log}: not a readable ftedit database; nothing was changed")
    if salvage is not None:
        report.log_source = str(log)
    elif db.exists() and (salvage := read_log(db)) is not None:
        report.log_source = f"{db} (the damaged database itself)"
    report.moved_to = move_aside(db) if db.exists() else []
    store = Store(home, url, blob_url)
    _rebuild(store, salvage, report)
    return report


def _blob_edit(store, sha: str) -> dict:
    """What one blob says about its edit (raises FteditError for a blob that is not one)."""
    from storage import editfile

    data = store.blobs.get(sha)
    header = editfile.read_header(data)
    meta = editfile.parse_metadata(header.get("__metadata__") or {})
    # Kept as the JSON the blob holds (rows never re-validate history: ftedit decodes them).
    if not meta["requests"] or not all(isinstance(r, dict) for r in meta["requests"]):
        raise StoreError("its metadata 'requests' is not a list of requests")
    return {
        "requests": meta["requests"],
        "hparams": meta["hparams"],
        "base": meta["base"],
        "tensor_names": sorted(k for k in header if k != "__metadata__"),
    }


def _rebuild(store, salvage: dict | None, report: RecoverReport) -> None:
    others, unreadable = gc.referenced_elsewhere(store)
    if unreadable:
        report.skipped.append(
            "the blob root is shared with stores recover cannot read "
            f"({'; '.join(unreadable)}): their blobs may come back here as extra reverted edits"
        )
    found: dict[str, dict] = {}
    for sha in store.blobs.list():
        if sha in others:
            continue  # another store's edit
        try:
            found[sha] = _blob_edit(store, sha)
        except FteditError as e:
            report.skipped.append(f"blob {sha[:12]}: {e}")
    logged = salvage["edits"] if salvage else {}
    by_sha_logged = {row["blob_sha256"] for row in logged.values()}
    for edit_id, row in logged.items():
        if row["blob_sha256"] not in found:
            report.skipped.append(
                f"edit #{edit_id} ({row['blob_sha256'][:12]}): its blob is missing or unusable"
            )
    # Blobs the log does not know: oldest write first, after the logged edits.
    ages = {sha: store.blobs.age(sha) or 0.0 for sha in found if sha not in by_sha_logged}
    unlogged = sorted(ages, key=lambda sha: (-ages[sha], sha))
    for edit in found.values():  # registered first: base_id commits on its own connection
        edit["base_id"] = store.base_id(edit["base"])
    with store.session() as s, s.begin():
        for edit_id, row in sorted(logged.items()):
            if row["blob_sha256"] in found:
                s.add(_row(store, found[row["blob_sha256"]], row["blob_sha256"], row, edit_id))
                report.recovered.append(edit_id)
        s.flush()
        for ev in salvage["events"] if salvage else []:
            if ev["edit_id"] in report.recovered:
                s.add(
                    EventRow(
                        id=ev["id"],
                        edit_id=ev["edit_id"],
                        kind=ev["kind"],
                        created_at=_when(ev["created_at"]),
                        note=ev["note"],
                    )
                )
        s.flush()
        for sha in unlogged:
            row = _row(store, found[sha], sha, None, None)
            s.add(row)
            s.flush()
            now = utcnow()
            s.add(EventRow(edit_id=row.id, kind="created", created_at=now, note=RECOVERED))
            s.add(
                EventRow(
                    edit_id=row.id,
                    kind="reverted",
                    created_at=now,
                    note="recover: status unknown (no event log survived), so reverted",
                )
            )
            report.recovered.append(row.id)
            report.reverted_unknown.append(row.id)


def _row(store, edit: dict, sha: str, logged: dict | None, edit_id: int | None) -> EditRow:
    hp = edit["hparams"]
    row = EditRow(
        base_model_id=edit["base_id"],
        requests=list(edit["requests"]),
        hparams=dict(hp),
        method="FT" if "norm_constraint" in hp and hp["norm_constraint"] is None else "FT-L",
        objective=hp.get("objective", "prompt_last"),
        origin="trained",
        metrics={},
        losses=[],
        steps=0,
        seconds=0.0,
        blob_sha256=sha,
        tensor_names=edit["tensor_names"],
        status="reverted",
        created_at=utcnow(),
        owner=None,
    )
    if logged is not None:  # the log's own record of it: id, status, metrics, who owns it
        row.id = edit_id
        for key in ("origin", "steps", "seconds", "status", "owner"):
            setattr(row, key, logged[key])
        row.metrics, row.losses = _json(logged["metrics"]), _json(logged["losses"])
        row.created_at = _when(logged["created_at"])
    return row


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _when(stamp) -> datetime:
    """SQLite's stored text ('2026-01-02 03:04:05.000006', UTC) as an aware datetime."""
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(str(stamp))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
