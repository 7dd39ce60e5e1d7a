"""Shared fixtures. Every test gets its own FTEDIT_HOME; the converted default model is shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One conversion of the default model for the whole run (and across runs on one machine).
os.environ.setdefault("FTEDIT_CACHE", str(Path.home() / ".cache" / "ftedit-test-models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def ftedit_home(tmp_path, monkeypatch):
    """Point FTEDIT_HOME at a fresh temp folder for every test (hermetic store)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FTEDIT_HOME", str(home))
    monkeypatch.delenv("FTEDIT_DATABASE_URL", raising=False)
    monkeypatch.delenv("FTEDIT_BLOB_URL", raising=False)
    return home


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, ftedit_home, monkeypatch):
    """The test's database: SQLite under its home, or a fresh PostgreSQL database of its own.

    Postgres sets FTEDIT_DATABASE_URL, so every Store/Workspace the test opens on its home (and
    child processes) uses it; extra homes get databases of their own (tests/pgkit.py). A module
    runs on both with ``pytestmark = pytest.mark.usefixtures("database_url")``.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{ftedit_home / 'ftedit.db'}"
        return
    from tests import pgkit

    url = pgkit.fresh_url()
    monkeypatch.setenv("FTEDIT_DATABASE_URL", url)
    try:
        yield url
    finally:
        pgkit.drop_all()


@pytest.fixture
def small_pool(monkeypatch):
    """A keep pool of three cities (keep._subject_pool), its cached vectors dropped."""
    from ftedit.core import keep

    monkeypatch.setattr(keep, "_subject_pool", lambda: ("Paris", "Rome", "London"))
    keep._POOL_CACHE.clear()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared evaluation data (outside the repository: ftedit.paths.data_dir finds it)."""
    from ftedit import paths

    folder = paths.data_dir()
    if not (folder / "counterfact-sample.json").exists():
        pytest.fail(
            f"{folder} holds no counterfact-sample.json: set FTEDIT_DATA to the data folder"
        )
    return folder


def _tiny_tokenizer():
    from tests.tiny import make_tokenizer

    return make_tokenizer()


@pytest.fixture
def tiny_llama():
    from tests.tiny import make_llama

    return make_llama()


@pytest.fixture
def tiny_gpt2():
    from tests.tiny import make_gpt2

    return make_gpt2()


@pytest.fixture(scope="session")
def real_model():
    """The embedded default model, loaded once per test session (it is never edited in place
    by a test: tests that edit it must restore it, which compute_deltas guarantees)."""
    from ftedit.core.models import load_model

    torch.manual_seed(0)
    return load_model()
