"""Where ftedit keeps things: ``FTEDIT_HOME`` (store), ``FTEDIT_CACHE`` (converted models)."""

from __future__ import annotations

import os
from pathlib import Path

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
