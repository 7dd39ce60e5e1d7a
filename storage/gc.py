"""Orphan blobs on a blob root that several stores may share (issue 16).

A blob root can serve more than one database: homes pointing FTEDIT_BLOB_URL at one folder or
bucket, or replicas sharing a database and a root. A blob is an orphan only when *no* database
using the root refers to it, and only once it is older than a grace period: a writer stores its
blob before its row commits, and on an object store nothing else tells gc the row is coming.

Every store registers ``stores/<store id>.json`` in its root (its database URL, password
hidden). gc reads every registered database it can open (SQLite files read-only, server URLs
that carry no hidden password); if one cannot be read, gc refuses and deletes nothing.
Writers and gc also share the root's lock (:meth:`LocalBlobStore.lock`; best effort on object
stores, where the grace period does the work).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from ftedit.errors import StoreError
from storage.db import describe

if TYPE_CHECKING:
    from storage.store import Store

DEFAULT_GRACE_SECONDS = 60 * 60  # `ftedit gc --grace MINUTES` (an edit commits in seconds)


def store_id(url: str) -> str:
    """A stable id for one database (replicas sharing it share the id and the marker)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database:
        u = u.set(database=os.path.abspath(u.database))
    text = u.render_as_string(hide_password=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def register(store: Store) -> None:
    """Leave this store's marker in its blob root (once; rewritten if it changed)."""
    text = json.dumps({"database": describe(store.url), "home": str(store.home)}, sort_keys=True)
    if store.blobs.markers().get(store.id) != text:
        store.blobs.write_marker(store.id, text)


def referenced_elsewhere(store: Store) -> tuple[set[str], list[str]]:
    """(blobs referenced by the root's other registered stores, databases that could not be
    read: each with why)."""
    used: set[str] = set()
    unreadable: list[str] = []
    for sid, text in sorted(store.blobs.markers().items()):
        if sid == store.id:
            continue
        try:
            url = json.loads(text)["database"]
        except (ValueError, KeyError, TypeError):
            unreadable.append(f"stores/{sid}.json (an unreadable marker)")
            continue
        try:
            used |= _blobs_of(url)
        except Exception as e:  # noqa: BLE001 - any failure means "cannot tell": refuse
            unreadable.append(f"{url} ({str(e).strip().splitlines()[0][:120] or type(e).__name__})")
    return used, unreadable


def _blobs_of(url: str) -> set[str]:
    """Every blob sha256 the database at ``url`` refers to (read-only)."""
    u = make_url(url)
    query = "SELECT DISTINCT blob_sha256 FROM edits"
    if u.get_backend_name() == "sqlite":
        path = Path(u.database or "")
        if not path.is_file():
            raise StoreError("its database file is gone")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return {r[0] for r in conn.execute(query)}
        finally:
            conn.close()
    if "***" in url:
        raise StoreError("its password is hidden in the marker")
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(text(query)).scalars())
    finally:
        engine.dispose()


def orphans(store: Store) -> list[str]:
    """Blobs no database using the root refers to, and temp leftovers; empty when another
    registered database cannot be read (nothing can be called an orphan then)."""
    used, unreadable = referenced_elsewhere(store)
    if unreadable:
        return []
    used |= store.referenced_blobs()
    stray = [str(p) for p in store.blobs.temp_files()]
    return [sha for sha in store.blobs.list() if sha not in used] + stray


def collect(store: Store, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> tuple[list[str], int]:
    """Delete orphans older than ``grace_seconds``: (what was removed, how many were kept as
    too young). Refuses, deleting nothing, when the root is shared with a database it cannot
    read."""
    with store.writing():
        register(store)
        _, unreadable = referenced_elsewhere(store)
        if unreadable:
            raise StoreError(
                f"the blob root {_where(store)} is shared with database(s) gc cannot read: "
                f"{'; '.join(unreadable)}; nothing was deleted. Run gc where they can be "
                "read, or remove the marker under stores/ of a store that no longer exists"
            )
        stray = {str(p) for p in store.blobs.temp_files()}
        gone, young = [], 0
        for item in orphans(store):
            age = store.blobs.age(item)
            if age is None or age < grace_seconds:
                young += age is not None
                continue
            store.blobs.discard(item) if item in stray else store.blobs.delete(item)
            gone.append(item)
    return gone, young


def _where(store: Store) -> str:
    return str(getattr(store.blobs, "url", None) or store.blobs.root)
