"""Migrations are atomic on SQLite: a SIGKILL while a store is first opened (or upgraded) leaves
it openable, and a half-made schema left by an older ftedit is detected and repaired."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect

from ftedit.errors import StoreError
from ftedit.paths import store_location
from storage.db import HEAD, MIGRATIONS, current_revision
from storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
FP = {"name": "b", "source": "s", "revision": None, "file_sha256": "0", "dtype": "float32"}


def _open_in_child(home: Path, crash_at: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTEDIT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env["FTEDIT_TEST_CRASH_AT"] = crash_at
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from ftedit.paths import store_location; from storage.store import Store; Store(*store_location())",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


def _assert_usable(home: Path) -> None:
    store = Store(*store_location(home))
    assert current_revision(store.engine) == HEAD
    cols = {c["name"] for c in inspect(store.engine).get_columns("edits")}
    assert "owner" in cols
    assert store.base_id(FP) == 1 and store.edits() == []


@pytest.mark.parametrize("crash_at", ["migration_0001", "migration_0002"])
def test_sigkill_while_a_new_store_is_first_opened_leaves_it_openable(ftedit_home, crash_at):
    proc = _open_in_child(ftedit_home, crash_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    # Before the fix: "table base_models already exists" / "duplicate column name: owner".
    _assert_usable(ftedit_home)


def _upgrade_to(path: Path, revision: str) -> None:
    """The schema an older ftedit left: migrated (non-transactionally) to ``revision``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with create_engine(f"sqlite:///{path}").begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_a_half_made_first_migration_is_repaired(ftedit_home):
    db = ftedit_home / "ftedit.db"
    _upgrade_to(db, "0001")
    with sqlite3.connect(db) as conn:  # tables made, then killed before the stamp
        conn.execute("DROP TABLE alembic_version")
        conn.execute("DROP TABLE events")
    _assert_usable(ftedit_home)


def test_a_half_made_owner_migration_is_repaired(ftedit_home):
    db = ftedit_home / "ftedit.db"
    _upgrade_to(db, "0001")
    with sqlite3.connect(db) as conn:  # 0002's ADD COLUMN ran, its stamp did not
        conn.execute("ALTER TABLE edits ADD COLUMN owner VARCHAR(64)")
    _assert_usable(ftedit_home)
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "ix_edits_owner" in names


def test_unversioned_tables_holding_rows_are_refused_not_dropped(ftedit_home):
    db = ftedit_home / "ftedit.db"
    _upgrade_to(db, "0001")
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE alembic_version")
        conn.execute(
            "INSERT INTO base_models (name, source, file_sha256, dtype, created_at) "
            "VALUES ('b', 's', '0', 'float32', '2026-01-01 00:00:00')"
        )
    with pytest.raises(StoreError, match="no schema version.*nothing was changed"):
        Store(*store_location(ftedit_home))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM base_models").fetchone() == (1,)
