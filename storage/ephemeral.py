"""Stores that cannot persist: an in-memory SQLite database or an fsspec ``memory://`` blob root.

Both "work" for the life of one process and then lose every edit (issue 16), so the Store
refuses them unless told they are wanted (tests: ``Store(..., ephemeral_ok=True)`` or env
``FTEDIT_ALLOW_EPHEMERAL=1``).
"""

from __future__ import annotations

from ftedit.errors import StoreError


def refuse_ephemeral(database_url: str, blob_url: str | None) -> None:
    """Refuse a database or blob root that lives in this process's memory (nothing persists)."""
    if is_memory_database(database_url):
        raise StoreError(
            f"the database {database_url!r} lives in memory: every edit would vanish when this "
            "process ends (leaving an orphan blob); set FTEDIT_DATABASE_URL to a file "
            "(sqlite:////path/to/ftedit.db, or unset it for <home>/ftedit.db) or a server "
            "(postgresql+psycopg://user@host/db)"
        )
    if blob_url and is_memory_blob_url(blob_url):
        raise StoreError(
            f"the blob root {blob_url!r} lives in memory: the edits' deltas would vanish when "
            "this process ends while their rows stay; set FTEDIT_BLOB_URL to a folder, "
            "file:///path, or an object store (s3://bucket/prefix), or unset it for <home>/blobs"
        )


def is_memory_database(url: str) -> bool:
    """True for SQLite URLs with no file: ``sqlite://``, ``:memory:``, ``mode=memory``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError:  # malformed: open_engine says what is wrong with it
        return False
    if u.get_backend_name() != "sqlite":
        return False
    db = (u.database or "").strip()
    return (
        db in ("", ":memory:")
        or db.startswith("file::memory:")
        or (u.query.get("mode") == "memory" or "mode=memory" in db)
    )


def is_memory_blob_url(url: str) -> bool:
    return str(url).strip().lower().startswith("memory:")
