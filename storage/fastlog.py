"""`ftedit log --json` for a SQLite store without importing SQLAlchemy.

Importing SQLAlchemy alone takes longer than the whole 200 ms budget of listing 10,000 edits,
so this one read-only query goes through the standard library's sqlite3. It is the only
dialect-specific code outside :mod:`storage.db` (which cannot host it: importing it imports
SQLAlchemy). Anything unusual (another backend, a missing or older schema) returns None and
the caller uses :meth:`storage.store.Store.log_json`, whose output this matches byte for byte
(tests/test_store.py checks both).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

# Alembic revision this query was written for (tests check it equals storage.db.HEAD).
SCHEMA = "0002"

_QUERY = (
    "SELECT e.id, e.status, e.created_at, e.method, e.origin, e.steps, e.seconds, "
    "e.blob_sha256, b.name, e.requests, e.tensor_names "
    "FROM edits e JOIN base_models b ON b.id = e.base_model_id {where} ORDER BY e.id"
)


def sqlite_path(url: str) -> Path | None:
    """The file of a plain ``sqlite:///path`` URL, else None."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return None
    path = Path(url[len(prefix) :])
    return path if path.is_file() else None


def _iso(stamp: str) -> str:
    """SQLAlchemy's SQLite text ('2026-01-02 03:04:05.000006', UTC) as datetime.isoformat()."""
    stamp = stamp.replace(" ", "T", 1)
    return (stamp.removesuffix(".000000")) + "+00:00"


def log_json(url: str, base_id: int | None = None) -> str | None:
    """The JSON array `Store.log_json` gives, or None when this fast path does not apply."""
    path = sqlite_path(url)
    if path is None:
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return None
    try:
        if conn.execute("SELECT version_num FROM alembic_version").fetchone() != (SCHEMA,):
            return None
        where = "" if base_id is None else "WHERE e.base_model_id = ?"
        rows = conn.execute(
            _QUERY.format(where=where), () if base_id is None else (base_id,)
        ).fetchall()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    names_json: dict[str, str] = {}  # base-model names repeat: encode each once
    # status, method and origin are the store's own identifiers (no quotes or escapes).
    return (
        "["
        + ",".join(
            f'{{"id":{i},"status":"{st}","created_at":"{_iso(at)}",'
            f'"method":"{m}","origin":"{o}","steps":{n},"seconds":{sec!r},'
            f'"blob_sha256":"{sha}","base_model":'
            f"{names_json.get(base) or names_json.setdefault(base, json.dumps(base))},"
            f'"requests":{reqs},"tensor_names":{names}}}'
            for i, st, at, m, o, n, sec, sha, base, reqs, names in rows
        )
        + "]"
    )


def quick_check(path: Path) -> list[str]:
    """SQLite's ``PRAGMA quick_check`` of ``path`` (read-only): [] when it is sound."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
        finally:
            conn.close()
    except sqlite3.Error as e:
        return [f"the database {path} is damaged: {e}"]
    return [] if rows == ["ok"] else [f"the database {path} is damaged: {r}" for r in rows]


def log_json_sqlalchemy(engine, base_id: int | None = None) -> str:
    """The same listing through SQLAlchemy Core, for any backend (`Store.log_json`).

    It reads only these columns and splices the stored JSON text into the output without
    decoding it, so it too stays fast over 10,000s of edits.
    """
    from sqlalchemy import Text, select, type_coerce  # not on the stdlib fast path

    from storage.models import BaseModelRow, EditRow

    raw = {c: type_coerce(getattr(EditRow, c), Text) for c in ("requests", "tensor_names")}
    q = (
        select(
            EditRow.id,
            EditRow.status,
            EditRow.created_at,
            EditRow.method,
            EditRow.origin,
            EditRow.steps,
            EditRow.seconds,
            EditRow.blob_sha256,
            BaseModelRow.name,
            raw["requests"],
            raw["tensor_names"],
        )
        .join(BaseModelRow)
        .order_by(EditRow.id)
    )
    if base_id is not None:
        q = q.where(EditRow.base_model_id == base_id)
    dumps = json.dumps
    with engine.connect() as conn:
        parts = [
            f'{{"id":{i},"status":{dumps(st)},"created_at":"{at.isoformat()}",'
            f'"method":{dumps(m)},"origin":{dumps(o)},"steps":{n},"seconds":{sec!r},'
            f'"blob_sha256":"{sha}","base_model":{dumps(base)},'
            f'"requests":{reqs},"tensor_names":{names}}}'
            for i, st, at, m, o, n, sec, sha, base, reqs, names in conn.execute(q)
        ]
    return "[" + ",".join(parts) + "]"
