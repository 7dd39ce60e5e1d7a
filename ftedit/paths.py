"""Where ftedit keeps things, read from the environment here and nowhere else (the edge):
``FTEDIT_HOME`` (store), ``FTEDIT_DATABASE_URL``, ``FTEDIT_BLOB_URL``, ``FTEDIT_CACHE``
(converted models). Storage takes these as explicit arguments."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import platformdirs


def home() -> Path:
    """The store's folder: ``$FTEDIT_HOME`` or the platform's user data dir."""
    p = Path(os.environ.get("FTEDIT_HOME") or platformdirs.user_data_dir("ftedit"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def cache_dir() -> Path:
    """Converted-model cache: ``$FTEDIT_CACHE`` or ``$FTEDIT_HOME/models``.

    Set on its own so that many temporary homes (tests) share one conversion.
    """
    env = os.environ.get("FTEDIT_CACHE")
    p = Path(env) if env else home() / "models"
    p.mkdir(parents=True, exist_ok=True)
    return p


def database_url(home_dir: str | Path | None = None) -> str:
    """``$FTEDIT_DATABASE_URL`` or SQLite at ``<home>/ftedit.db`` (default home: :func:`home`)."""
    folder = Path(home_dir) if home_dir is not None else home()
    return os.environ.get("FTEDIT_DATABASE_URL") or f"sqlite:///{folder / 'ftedit.db'}"


def data_dir() -> Path:
    """The evaluation data (CounterFact / zsRE samples): ``$FTEDIT_DATA``, else the first
    ``shared/data`` folder found walking up from this package (the data sits beside a checkout
    or a worktree, never inside the repository)."""
    if env := os.environ.get("FTEDIT_DATA"):
        return Path(env)
    here = Path(__file__).resolve().parent
    for folder in here.parents:
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return here.parent.parent / "shared" / "data"  # beside the checkout (named in errors)


def blob_url() -> str | None:
    """``$FTEDIT_BLOB_URL``: a folder or fsspec URL replicas share; None = the home's blobs/."""
    return os.environ.get("FTEDIT_BLOB_URL") or None


class StoreLocation(NamedTuple):
    """Where a store lives, as :class:`storage.store.Store` takes it: ``Store(*location)``."""

    home: Path
    database_url: str
    blob_url: str | None


def store_location(
    home_dir: str | Path | None = None,
    database_url_: str | None = None,
    blob_url_: str | None = None,
) -> StoreLocation:
    """The store of ``home_dir`` (default :func:`home`), with the environment's database and
    blob locations unless given."""
    folder = Path(home_dir) if home_dir is not None else home()
    return StoreLocation(folder, database_url_ or database_url(folder), blob_url_ or blob_url())
