"""Several replicas on one store: a change made in one is live in the other before its next
model-touching call, both keep the invariant, and racing writers never lose an event.
Runs on SQLite and PostgreSQL (``database_url``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ftedit.errors import StoreError
from ftedit.paths import store_location
from storage.store import Store
from tests.storekit import HP0, REQUESTS, add_row, open_ws, params

pytestmark = pytest.mark.usefixtures("database_url")
ROOT = Path(__file__).resolve().parents[1]

# Replica B: a second process on the same home and database, driven one JSON line at a time.
REPLICA = """
import hashlib, json, sys
import torch
from tests.storekit import HP0, HP01, REQUESTS, open_ws
torch.set_num_threads(1)
ws = open_ws()
def digest():
    h = hashlib.sha256()
    for n, p in sorted(ws.model.named_parameters()):
        h.update(n.encode()); h.update(p.detach().numpy().tobytes())
    return h.hexdigest()
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "edit":
        ws.edit(REQUESTS[cmd["k"]], HP01)
    elif cmd["op"] in ("revert", "reapply"):
        getattr(ws, cmd["op"])(cmd["id"])
    out = {"active": ws.active_ids(), "digest": digest(), "verify": ws.verify().to_dict(),
           "edits": [e.id for e in ws.history()]}
    print(json.dumps(out), flush=True)
"""


def digest(ws) -> str:
    h = hashlib.sha256()
    for n, p in sorted(params(ws).items()):
        h.update(n.encode())
        h.update(p.numpy().tobytes())
    return h.hexdigest()


class Replica:
    def __init__(self, home: Path):
        env = {**os.environ, "FTEDIT_HOME": str(home), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", REPLICA],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __call__(self, op: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"replica died (exit {self.proc.poll()})"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


def test_edit_in_a_is_live_in_b_and_a_revert_in_b_is_live_in_a(ftedit_home):
    a = open_ws(ftedit_home)
    base = digest(a)
    b = Replica(ftedit_home)
    try:
        assert b("state")["digest"] == base
        first = a.edit(REQUESTS[0], HP0)  # A edits ...
        seen = b("state")  # ... B's next call already runs on it
        assert seen["active"] == [first.id] and seen["edits"] == [first.id]
        assert seen["digest"] == digest(a) != base and seen["verify"]["ok"]
        after_b = b("edit", k=1)  # B edits on top; A picks it up
        assert a.active_ids() == [1, 2] and after_b["digest"] == digest(a)
        reverted = b("revert", id=1)  # revert in B, read in A
        assert reverted["active"] == [2] and reverted["verify"]["ok"]
        assert a.active_ids() == [2] and digest(a) == reverted["digest"]
        assert a.verify().ok
        a.reapply(1)
        back = b("state")
        assert back["active"] == [1, 2] and back["digest"] == digest(a) and back["verify"]["ok"]
        assert [e.kind for e in a.events()] == ["created", "created", "reverted", "reapplied"]
    finally:
        b.close()


def test_a_sync_with_nothing_new_rebuilds_nothing(ftedit_home, monkeypatch):
    a, b = open_ws(ftedit_home), open_ws(ftedit_home)
    a.edit(REQUESTS[0], HP0)
    a.edit(REQUESTS[1], HP0.replace(layers=(1,)))
    b.active_ids()
    rebuilt: list[list[str]] = []
    real = b.live.set_active
    monkeypatch.setattr(
        b.live, "set_active", lambda ids, names=None: rebuilt.append(real(ids, names))
    )
    b.active_ids()
    assert rebuilt == []  # the log did not move: one query, no tensor touched
    a.revert(2)
    assert b.active_ids() == [1]
    assert rebuilt == [["model.layers.1.mlp.down_proj.weight"]]  # only #2's tensor
    assert digest(a) == digest(b) and b.verify().ok


def _fake_store(home: Path, blobs: int) -> tuple[Store, list[str]]:
    store = Store(*store_location(home))
    return store, [store.blobs.put(f"blob {i}".encode()) for i in range(blobs)]


def test_racing_writers_never_lose_an_event(ftedit_home, tmp_path, database_url):
    """Four writers (own Store, own connection pool) toggle the same edits and add new ones.
    On PostgreSQL each has its own home, so no file lock helps: the row locks must."""
    postgres = database_url.startswith("postgresql")
    homes = [tmp_path / f"w{i}" if postgres else ftedit_home for i in range(4)]
    stores = [_fake_store(h, 3) for h in homes]
    store, shas = stores[0]
    base = store.base_id(
        {"name": "b", "source": "s", "revision": None, "file_sha256": "0", "dtype": "float32"}
    )
    for i, sha in enumerate(shas):
        add_row(store, base, REQUESTS[i], sha)
    done = [0] * 4

    def writer(w: int) -> None:
        s, my_shas = stores[w]
        for step in range(12):
            edit_id = 1 + (w + step) % 3
            try:
                (s.revert if s.get(edit_id).active else s.reapply)(edit_id)
                done[w] += 1
            except StoreError as e:  # lost the race for that edit: refused, never half-done
                assert "already" in str(e)
            if step % 4 == 0:
                add_row(s, base, REQUESTS[3], my_shas[0])
                done[w] += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.events()) == 3 + sum(done)  # every successful write has its event
    assert store.status_problems() == []  # and statuses agree with the log
    last: dict[int, str] = {}
    for ev in store.events():  # and the log never contradicts itself (revert twice in a row)
        state = "reverted" if ev.kind == "reverted" else "active"
        assert last.get(ev.edit_id) != state, f"event v{ev.id} repeats {state} #{ev.edit_id}"
        last[ev.edit_id] = state
