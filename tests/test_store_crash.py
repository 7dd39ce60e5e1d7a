"""Crash consistency and concurrency: real child processes, SIGKILLed mid-edit or racing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.storekit import HP0, REQUESTS, assert_replay_equal, open_ws

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys
from tests.storekit import HP0, HP1, REQUESTS, open_ws
ws = open_ws()
for k in map(int, sys.argv[1:]):
    ws.edit(REQUESTS[k], (HP0, HP1)[k % 2])
"""


def _child(home: Path, *request_ids: int, crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "FTEDIT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("FTEDIT_TEST_CRASH_AT", None)
    if crash_at:
        env["FTEDIT_TEST_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, request_ids)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("crash_at", ["after_blob", "before_commit", "mid_commit"])
def test_sigkill_during_edit_loses_nothing_and_leaves_a_collectable_orphan(ftedit_home, crash_at):
    ws = open_ws(ftedit_home)
    first = ws.edit(REQUESTS[0], HP0)
    proc = _child(ftedit_home, 1, crash_at=crash_at)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    fresh = open_ws(ftedit_home)
    assert [e.id for e in fresh.history()] == [first.id]
    assert [e.kind for e in fresh.events()] == ["created"]
    report = fresh.verify()
    assert report.ok, report.problems
    assert len(report.orphans) == 1  # the killed edit's blob, durable but never committed
    assert fresh.collect_orphans(grace_seconds=0) == report.orphans
    assert fresh.verify().orphans == []
    fresh.edit(REQUESTS[2], HP0)  # the store keeps working: ids continue
    assert [e.id for e in fresh.history()] == [1, 2]
    assert_replay_equal(fresh)


def test_two_processes_editing_one_home_are_both_recorded(ftedit_home, database_url):
    # database_url: also on PostgreSQL (the children inherit FTEDIT_DATABASE_URL)
    procs = [_child(ftedit_home, 0, 1), _child(ftedit_home, 2, 3)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()[-3000:]
    ws = open_ws(ftedit_home)
    edits = ws.history()
    assert len(edits) == 4 and {e.request for e in edits} == set(REQUESTS)
    assert ws.active_ids() == [1, 2, 3, 4]
    report = ws.verify()
    assert report.ok and report.orphans == [], report.problems
    assert_replay_equal(ws)
