"""Content-addressed blob store: ``blobs/ab/<sha256>.safetensors`` under the home.

Behind a five-method interface (put/get/exists/list/delete) so an fsspec/S3 backend can
replace :class:`LocalBlobStore` without touching callers. No torch here: the store moves bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

from ftedit.errors import IntegrityError

SUFFIX = ".safetensors"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore(Protocol):
    def put(self, data: bytes) -> str: ...
    def get(self, sha256: str, what: str = "") -> bytes: ...
    def exists(self, sha256: str) -> bool: ...
    def list(self) -> list[str]: ...
    def delete(self, sha256: str) -> None: ...


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
            return sha  # identical edits deduplicate
        # The temp file lives in the destination folder so os.replace is a same-filesystem rename.
        write_file_atomic(dest, data)
        return sha

    def get(self, sha256: str, what: str = "") -> bytes:
        """The blob's bytes, checked against its sha256 (``what`` names it in errors)."""
        label = what or f"blob {sha256[:12]}"
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{label}: its file {self.path(sha256)} is missing") from None
        if sha256_bytes(data) != sha256:
            raise IntegrityError(
                f"{label}: file {self.path(sha256)} is corrupt (sha256 mismatch); "
                "revert it or restore the file from a backup"
            )
        return data

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def list(self) -> list[str]:
        return sorted(p.name[: -len(SUFFIX)] for p in self.root.glob(f"??/*{SUFFIX}")
                      if not p.name.startswith("."))

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def temp_files(self) -> list[Path]:
        """Leftovers of writes interrupted before their rename."""
        return sorted(self.root.glob("??/.tmp-*"))

    @staticmethod
    def _ok(path: Path, sha: str) -> bool:
        return sha256_bytes(path.read_bytes()) == sha


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
