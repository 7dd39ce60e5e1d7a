"""The blob root as a URL: the same checks on a local folder and an fsspec (memory://) store,
and a failing write (ENOSPC) that leaves no row, no partial file and the weights as they were."""

from __future__ import annotations

import errno
import uuid
from pathlib import Path

import pytest

from ftedit.errors import IntegrityError, StoreError
from storage.blobs import FsspecBlobStore, LocalBlobStore, open_blob_store, sha256_bytes
from tests.storekit import HP0, HP1, REQUESTS, assert_same, open_ws, params


@pytest.fixture(params=["local", "memory"])
def blob_url(request, tmp_path, monkeypatch):
    """FTEDIT_BLOB_URL for this test: a folder, or a fresh in-memory fsspec filesystem."""
    url = (
        str(tmp_path / "shared-blobs")
        if request.param == "local"
        else f"memory://ftedit-{uuid.uuid4().hex[:12]}/blobs"
    )
    monkeypatch.setenv("FTEDIT_BLOB_URL", url)
    if request.param == "memory":  # refused outside tests: blobs there die with the process
        monkeypatch.setenv("FTEDIT_ALLOW_EPHEMERAL", "1")
    yield url
    if request.param == "memory":
        store = open_blob_store(url)
        store.fs.rm(store.root, recursive=True)


def test_open_blob_store_picks_the_backend(tmp_path):
    assert isinstance(open_blob_store(tmp_path / "b"), LocalBlobStore)
    assert isinstance(open_blob_store(f"file://{tmp_path}/b"), LocalBlobStore)
    mem = open_blob_store("memory://pick/b")
    assert isinstance(mem, FsspecBlobStore) and not mem.atomic_put


def test_put_get_dedupe_list_delete_and_corruption(blob_url):
    blobs = open_blob_store(blob_url)
    sha = blobs.put(b"hello")
    assert sha == sha256_bytes(b"hello") and blobs.put(b"hello") == sha
    assert blobs.list() == [sha] and blobs.get(sha) == b"hello" and blobs.exists(sha)
    assert blobs.temp_files() == []  # temp written, then moved: nothing left behind
    path = str(blobs.path(sha))
    fs = getattr(blobs, "fs", None)
    fs.pipe_file(path, b"hellO") if fs else Path(path).write_bytes(b"hellO")
    with pytest.raises(IntegrityError, match=r"edit #4: .*corrupt"):
        blobs.get(sha, what="edit #4")
    assert blobs.put(b"hello") == sha and blobs.get(sha) == b"hello"  # a rewrite repairs it
    blobs.delete(sha)
    assert blobs.list() == [] and not blobs.exists(sha)
    with pytest.raises(IntegrityError, match="missing"):
        blobs.get(sha, what="edit #4")


def test_workspaces_share_edits_through_the_blob_url(blob_url, tmp_path):
    a = open_ws()
    a.edit(REQUESTS[0], HP0)
    assert a.store.blobs.list() == [a.get(1).blob_sha256]
    assert not (a.home / "blobs").exists() or not list((a.home / "blobs").rglob("*.safetensors"))
    b = open_ws(a.home)  # a replica: same database and blob URL, fresh replay
    assert_same(params(b), params(a))
    assert a.verify().ok and b.verify().ok


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_a_clear_error_with_no_row_and_no_partial_file(blob_url, monkeypatch):
    ws = open_ws()
    first = ws.edit(REQUESTS[0], HP0)
    live = params(ws)
    blobs = ws.store.blobs
    with (
        monkeypatch.context() as m,
        pytest.raises(StoreError, match=r"No space left on device; nothing was saved"),
    ):
        if isinstance(blobs, LocalBlobStore):
            # The bytes reach the temp file, then fsync fails: a partial file until cleanup.
            m.setattr("storage.blobs.os.fsync", _enospc)
        else:
            m.setattr(blobs.fs, "mv", _enospc)  # the temp object is written, the move fails
        ws.edit(REQUESTS[1], HP1)
    assert [e.id for e in ws.history()] == [first.id]  # no row
    assert blobs.list() == [first.blob_sha256] and blobs.temp_files() == []  # no partial file
    assert_same(params(ws), live)  # the tentative edit was taken off the live weights
    assert ws.verify().ok and ws.verify().orphans == []
    ws.edit(REQUESTS[1], HP1)  # space is back: the next edit works
    assert len(ws.history()) == 2 and ws.verify().ok


def test_gc_keeps_young_orphans_and_registers_the_store_in_the_root(blob_url):
    ws = open_ws()
    first = ws.edit(REQUESTS[0], HP0)
    assert list(ws.store.blobs.markers()) == [ws.store.id]  # stores/<id>.json, for other gcs
    orphan = ws.store.blobs.put(b"an edit killed before its commit")
    assert ws.verify().orphans == [orphan]
    assert ws.collect_orphans() == []  # younger than the grace period: maybe about to commit
    assert ws.store.blobs.exists(orphan)
    assert ws.collect_orphans(grace_seconds=0) == [orphan]
    assert ws.store.blobs.list() == [first.blob_sha256] and ws.verify().ok
