"""SQLite damage: one-line errors instead of tracebacks, `verify` runs quick_check, and
`ftedit recover` rebuilds the database from the blob root (issue 16, data loss 4)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time

import pytest
from click.testing import CliRunner

from ftedit.cli import cli
from ftedit.errors import StoreError
from ftedit.paths import store_location
from storage.store import Store
from tests.storekit import HP0, HP1, REQUESTS, open_ws


def _history(ws) -> list[tuple]:
    return [(e.id, e.requests, e.blob_sha256, e.status) for e in ws.history()]


def _three_edits(home):
    """Edits #1..#3, #2 reverted, blobs written a minute apart; the database closed (WAL
    folded in) so the file alone holds everything."""
    ws = open_ws(home)
    for k, hp in ((0, HP0), (1, HP1), (2, HP0)):
        ws.edit(REQUESTS[k], hp)
    ws.revert(2)
    now = time.time()
    for e in ws.history():  # as if made a minute apart (recover orders blobs by write time)
        stamp = now - 600 + 60 * e.id
        os.utime(ws.store.blobs.path(e.blob_sha256), (stamp, stamp))
    want = _history(ws)
    ws.store.engine.dispose()
    db = home / "ftedit.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return want, db


def _run(*args):
    res = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in res.output and not isinstance(res.exception, AssertionError)
    return res


def test_recover_rebuilds_a_deleted_database_with_every_edit_reverted(ftedit_home):
    want, db = _three_edits(ftedit_home)
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    res = _run("recover")
    assert res.exit_code == 0, res.output
    assert "recovered 3 edit(s)" in res.output and "REVERTED" in res.output
    ws = open_ws(ftedit_home)
    # requests, order and blobs come back; statuses cannot (no log survived): all reverted
    assert _history(ws) == [(i, r, sha, "reverted") for i, r, sha, _ in want]
    assert [(e.edit_id, e.kind) for e in ws.events()] == [
        (i, k) for i in (1, 2, 3) for k in ("created", "reverted")
    ]
    report = ws.verify()
    assert report.ok and report.orphans == [], report.problems
    assert Store(*store_location(ftedit_home)).integrity_problems() == []
    ws.reapply(1)  # the history is usable again
    assert ws.active_ids() == [1]


def test_a_damaged_header_is_one_line_and_recover_takes_statuses_from_a_copy(ftedit_home, tmp_path):
    want, db = _three_edits(ftedit_home)
    backup = tmp_path / "backup.db"
    shutil.copy(db, backup)
    with open(db, "r+b") as f:  # the first page's header
        f.write(b"\x00garbage" * 12)
    damaged = db.read_bytes()
    for cmd in (["log"], ["log", "--json"], ["events"], ["show", "1"], ["revert", "1"], ["verify"]):
        res = _run(*cmd)
        assert res.exit_code == 1, (cmd, res.output)
        assert "is damaged" in res.output and "ftedit recover" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    res = _run("recover", "--log", str(backup))
    assert res.exit_code == 0, res.output
    assert "statuses from the event log" in res.output and "REVERTED" not in res.output
    kept = [p for p in ftedit_home.iterdir() if p.name.startswith("ftedit.db.damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # moved aside, not deleted
    ws = open_ws(ftedit_home)
    assert _history(ws) == want  # ids, requests, blobs and statuses (#2 reverted)
    assert ws.active_ids() == [1, 3]
    report = ws.verify()
    assert report.ok, report.problems


def _corrupt_index(db) -> None:
    with sqlite3.connect(db) as conn:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'ix_edits_blob_sha256'"
        ).fetchone()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xa5" * page)


def test_a_damaged_index_fails_verify_and_recover_keeps_the_surviving_log(ftedit_home):
    want, db = _three_edits(ftedit_home)
    _corrupt_index(db)
    problems = Store(*store_location(ftedit_home)).integrity_problems()
    assert problems and all("is damaged" in p for p in problems)
    res = _run("verify")  # quick_check runs before any model is loaded
    assert res.exit_code == 1 and "ftedit recover" in res.output, res.output
    res = _run("verify", "--json")
    assert res.exit_code == 1 and json.loads(res.output)["problems"] == problems
    res = _run("recover")
    assert res.exit_code == 0, res.output
    assert "the damaged database itself" in res.output
    ws = open_ws(ftedit_home)
    assert _history(ws) == want and ws.verify().ok
    assert Store(*store_location(ftedit_home)).integrity_problems() == []


def test_recover_refuses_a_sound_database_unless_forced(ftedit_home):
    want, _ = _three_edits(ftedit_home)
    res = _run("recover")
    assert res.exit_code == 1 and "nothing to recover" in res.output
    assert _history(open_ws(ftedit_home)) == want
    res = _run("recover", "--force")
    assert res.exit_code == 0 and "the damaged database itself" in res.output, res.output
    assert _history(open_ws(ftedit_home)) == want


def test_recover_refuses_a_server_database(ftedit_home, monkeypatch):
    monkeypatch.setenv("FTEDIT_DATABASE_URL", "postgresql+psycopg://u:pw@127.0.0.1:1/x")
    with pytest.raises(StoreError, match="rebuilds SQLite databases"):
        from storage.recover import recover

        recover(ftedit_home, database_url=store_location(ftedit_home).database_url)
