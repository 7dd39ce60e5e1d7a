"""Content-addressed blob store: ``<root>/ab/<sha256>.safetensors``.

Behind one interface (put/get/exists/list/delete, plus what storage/gc.py needs): :class:`LocalBlobStore` for a
folder (default: ``blobs/`` under the home), :class:`FsspecBlobStore` for any fsspec URL
(``s3://bucket/prefix``, ``gs://bucket/prefix``; env ``FTEDIT_BLOB_URL``). Both write all or
nothing and check the sha256 on every read. No torch here: the store moves bytes. (fsspec's
``memory://`` works too, but only in tests: the Store refuses it, blobs there die with the
process.)
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Protocol

from filelock import FileLock

from ftedit.errors import IntegrityError, StoreError

SUFFIX = ".safetensors"
# Every store that writes to a root leaves ``stores/<store id>.json`` there (its database URL,
# password hidden), so gc and verify know which databases may reference the root's blobs.
MARKERS = "stores"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore(Protocol):
    def put(self, data: bytes) -> str: ...
    def get(self, sha256: str, what: str = "") -> bytes: ...
    def exists(self, sha256: str) -> bool: ...
    def list(self) -> list[str]: ...
    def delete(self, sha256: str) -> None: ...
    def temp_files(self) -> list: ...
    def discard(self, temp: str) -> None: ...
    def age(self, item: str) -> float | None: ...
    def lock(self) -> AbstractContextManager: ...
    def markers(self) -> dict[str, str]: ...
    def write_marker(self, store_id: str, text: str) -> None: ...


class LocalBlobStore:
    """Blobs as files; writes are atomic and durable (temp file, fsync, rename, fsync dir)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{SUFFIX}"

    def put(self, data: bytes) -> str:
        """Store ``data`` under its sha256 and return it; a no-op when it is already there."""
        sha = sha256_bytes(data)
        dest = self.path(sha)
        if dest.exists() and self._ok(dest, sha):
            os.utime(dest)  # identical edits deduplicate; gc's grace counts from this write
            return sha
        # The temp file lives in the destination folder so os.replace is a same-filesystem rename.
        try:
            write_file_atomic(dest, data)
        except OSError as e:  # ENOSPC, EACCES...: the temp file is already gone
            raise _write_failed(self.root, e) from e
        return sha

    def get(self, sha256: str, what: str = "") -> bytes:
        """The blob's bytes, checked against its sha256 (``what`` names it in errors)."""
        label = what or f"blob {sha256[:12]}"
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{label}: its file {self.path(sha256)} is missing") from None
        return _checked(data, sha256, label, f"file {self.path(sha256)}")

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def list(self) -> list[str]:
        return sorted(
            p.name[: -len(SUFFIX)]
            for p in self.root.glob(f"??/*{SUFFIX}")
            if not p.name.startswith(".")
        )

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def temp_files(self) -> list[Path]:
        """Leftovers of writes interrupted before their rename."""
        return sorted(self.root.glob("??/.tmp-*"))

    def discard(self, temp: str) -> None:
        """Remove one of :meth:`temp_files`."""
        Path(temp).unlink(missing_ok=True)

    def age(self, item: str) -> float | None:
        """Seconds since a blob (sha256) or temp file was last written; None if gone."""
        path = Path(item) if os.sep in item else self.path(item)
        try:
            return time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None

    def lock(self) -> AbstractContextManager:
        """The root's lock: every writer holds it from blob write to row commit, gc while it
        collects, so gc never sees a blob whose row is about to commit (any host sharing
        the folder through a filesystem with working flock)."""
        return FileLock(str(self.root / ".ftedit-gc.lock"))

    def markers(self) -> dict[str, str]:
        """{store id: marker text} of every store registered in this root."""
        return {p.stem: p.read_text() for p in sorted((self.root / MARKERS).glob("*.json"))}

    def write_marker(self, store_id: str, text: str) -> None:
        write_file_atomic(self.root / MARKERS / f"{store_id}.json", text.encode())

    @staticmethod
    def _ok(path: Path, sha: str) -> bool:
        return sha256_bytes(path.read_bytes()) == sha


def _checked(data: bytes, sha256: str, label: str, where: str) -> bytes:
    """``data`` if it hashes to ``sha256``; else the IntegrityError naming the edit and file."""
    if sha256_bytes(data) != sha256:
        raise IntegrityError(
            f"{label}: {where} is corrupt (sha256 mismatch); revert it or restore it from a backup"
        )
    return data


def write_file_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` all or nothing (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_failed(where, e: OSError) -> StoreError:
    hint = "free some space" if e.errno == errno.ENOSPC else "check the blob root"
    return StoreError(
        f"could not write the edit's blob to {where}: {e.strerror or e}; nothing "
        f"was saved ({hint}, then retry)"
    )


# Object stores whose single PUT is atomic (a reader sees the old object or the whole new one).
ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"}


class FsspecBlobStore:
    """Blobs on any fsspec filesystem, same layout and checks as :class:`LocalBlobStore`.

    Object stores get one PUT (atomic there); other filesystems get a temp object and a
    move, so a reader never sees half a blob; on failure the temp object is removed.
    """

    def __init__(self, url: str, **storage_options):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else self.fs.protocol
        self.atomic_put = bool(set(protocols) & ATOMIC_PUT)

    def path(self, sha256: str) -> str:
        return f"{self.root}/{sha256[:2]}/{sha256}{SUFFIX}"

    def put(self, data: bytes) -> str:
        """Store ``data`` under its sha256 and return it; a no-op when it is already there."""
        sha = sha256_bytes(data)
        dest = self.path(sha)
        if self.exists(sha) and sha256_bytes(self.fs.cat_file(dest)) == sha:
            age = self.age(sha)
            if age is not None and age < 60:
                return sha
            # An old copy (perhaps an orphan gc is about to take): written again, so gc's
            # grace counts from now (object stores have no cheap "touch").
        tmp = f"{self.root}/{sha[:2]}/.tmp-{uuid.uuid4().hex}{SUFFIX}"
        try:
            if self.atomic_put:
                self.fs.pipe_file(dest, data)
            else:
                self.fs.makedirs(f"{self.root}/{sha[:2]}", exist_ok=True)
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, dest)
        except OSError as e:
            self._remove(tmp)
            raise _write_failed(self.url, e) from e
        except BaseException:
            self._remove(tmp)
            raise
        return sha

    def get(self, sha256: str, what: str = "") -> bytes:
        """The blob's bytes, checked against its sha256 (``what`` names it in errors)."""
        label = what or f"blob {sha256[:12]}"
        try:
            data = self.fs.cat_file(self.path(sha256))
        except FileNotFoundError:
            raise IntegrityError(
                f"{label}: its blob {self.path(sha256)} is missing from {self.url}"
            ) from None
        return _checked(data, sha256, label, f"blob {self.path(sha256)} in {self.url}")

    def exists(self, sha256: str) -> bool:
        return self.fs.exists(self.path(sha256))

    def list(self) -> list[str]:
        names = (p.rsplit("/", 1)[-1] for p in self.fs.glob(f"{self.root}/??/*{SUFFIX}"))
        return sorted(n[: -len(SUFFIX)] for n in names if not n.startswith("."))

    def delete(self, sha256: str) -> None:
        self._remove(self.path(sha256))

    def temp_files(self) -> list[str]:
        """Leftovers of writes interrupted before their move."""
        return sorted(
            p for p in self.fs.find(self.root) if p.rsplit("/", 1)[-1].startswith(".tmp-")
        )

    def discard(self, temp: str) -> None:
        self._remove(temp)

    def age(self, item: str) -> float | None:
        """Seconds since the object was written, from whatever time the backend reports
        (None, which gc treats as too young to collect, when it reports none)."""
        path = item if "/" in item else self.path(item)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
            stamp = info.get(key)
            if isinstance(stamp, datetime):
                return time.time() - stamp.timestamp()
            if isinstance(stamp, (int, float)):
                return time.time() - float(stamp)
        return None

    def lock(self) -> AbstractContextManager:
        """Best effort only: object stores have no lock; gc's grace period (only blobs older
        than it are collected) is what keeps a blob whose row is about to commit."""
        return nullcontext()

    def markers(self) -> dict[str, str]:
        paths = self.fs.glob(f"{self.root}/{MARKERS}/*.json")
        return {p.rsplit("/", 1)[-1][: -len(".json")]: self.fs.cat_file(p).decode() for p in paths}

    def write_marker(self, store_id: str, text: str) -> None:
        self.fs.pipe_file(f"{self.root}/{MARKERS}/{store_id}.json", text.encode())

    def _remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass


def open_blob_store(url: str | Path) -> LocalBlobStore | FsspecBlobStore:
    """A folder path or ``file://`` URL: :class:`LocalBlobStore` (fsync + rename); any other
    fsspec URL (``s3://bucket/prefix``; ``memory://name`` in tests): :class:`FsspecBlobStore`."""
    text = str(url)
    if "://" not in text:
        return LocalBlobStore(text)
    if text.startswith("file://"):
        return LocalBlobStore(text.removeprefix("file://"))
    return FsspecBlobStore(text)
