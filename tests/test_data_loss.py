"""Issue 16's data-loss paths, each reproduced: gc on a shared blob root (other homes,
replicas mid-write) and stores that cannot persist (in-memory database or blob root)."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from ftedit.cli import cli
from ftedit.errors import Cancelled, LimitError, StoreError
from ftedit.paths import store_location
from storage.store import Store
from tests.storekit import HP0, HP1, REQUESTS, assert_same, open_ws, params


# ---- 1a: two homes sharing one blob root ------------------------------------------------------
def test_gc_in_one_home_keeps_the_blobs_of_another_home_sharing_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FTEDIT_BLOB_URL", str(tmp_path / "shared"))
    a, b = open_ws(tmp_path / "a"), open_ws(tmp_path / "b")
    a.edit(REQUESTS[0], HP0)
    eb = b.edit(REQUESTS[1], HP1)
    assert a.verify().orphans == []  # B's blob is not A's orphan
    orphan = a.store.blobs.put(b"nobody's")  # a real orphan is still found and collected
    assert a.verify().orphans == [orphan]
    assert a.store.collect_orphans(grace_seconds=0) == [orphan]
    assert b.store.blobs.exists(eb.blob_sha256)
    report = open_ws(b.home).verify()
    assert report.ok and report.orphans == [], report.problems


def test_gc_refuses_a_shared_root_when_another_store_cannot_be_read(tmp_path, monkeypatch):
    monkeypatch.setenv("FTEDIT_BLOB_URL", str(tmp_path / "shared"))
    a = open_ws(tmp_path / "a")
    a.edit(REQUESTS[0], HP0)
    stranger = a.store.blobs.put(b"a blob of a store gc cannot read")
    marker = {"database": "postgresql+psycopg://u:***@db.example/x", "home": "/elsewhere"}
    a.store.blobs.write_marker("0123456789abcdef", json.dumps(marker))
    with pytest.raises(StoreError, match=r"db\.example.*nothing was deleted"):
        a.store.collect_orphans(grace_seconds=0)
    assert a.store.blobs.exists(stranger)
    assert a.verify().orphans == []  # cannot tell, so none listed


# ---- 1b: replicas sharing the database and the blob root ------------------------------------
@pytest.mark.parametrize("grace", [{}, {"grace_seconds": 0}], ids=["default-grace", "lock"])
def test_gc_between_a_replicas_blob_write_and_its_commit_keeps_the_blob(
    ftedit_home, tmp_path, monkeypatch, grace
):
    ws = open_ws(ftedit_home)
    # Another machine's replica: its own home (lock), the same database and blob root.
    replica = Store(
        tmp_path / "replica",
        database_url=f"sqlite:///{ftedit_home / 'ftedit.db'}",
        blob_url=str(ftedit_home / "blobs"),
    )
    removed: list[str] = []
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []

    def gc() -> None:
        try:
            removed.extend(replica.collect_orphans(**grace))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    def gc_now(name: str) -> None:
        if name == "after_blob":  # the blob is durable, its row not yet committed
            t = threading.Thread(target=gc)
            t.start()
            t.join(timeout=1.0)  # unprotected, gc finishes here and deletes the new blob
            threads.append(t)

    monkeypatch.setattr("ftedit.versioning.workspace.crash_point", gc_now)
    info = ws.edit(REQUESTS[0], HP0)
    for t in threads:
        t.join()
    assert threads and errors == [] and removed == []
    assert ws.store.blobs.exists(info.blob_sha256)
    report = open_ws(ftedit_home).verify()
    assert report.ok, report.problems


def test_gc_command_keeps_young_orphans_unless_told(ftedit_home):
    store = Store(*store_location(ftedit_home))
    orphan = store.blobs.put(b"an interrupted edit's blob")
    run = CliRunner().invoke
    res = run(cli, ["gc"])
    assert res.exit_code == 0 and "removed 0" in res.output and "younger than 60 min" in res.output
    assert store.blobs.exists(orphan)
    res = run(cli, ["gc", "--grace", "0"])
    assert res.exit_code == 0 and "removed 1" in res.output, res.output
    assert not store.blobs.exists(orphan)


# ---- 2: stores that cannot persist -----------------------------------------------------------
@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite:///file::memory:"])
def test_an_in_memory_database_is_refused(ftedit_home, monkeypatch, url):
    monkeypatch.setenv("FTEDIT_DATABASE_URL", url)
    res = CliRunner().invoke(cli, ["log"])
    assert res.exit_code == 1 and "vanish when this process ends" in res.output, res.output
    assert "Traceback" not in res.output and "FTEDIT_DATABASE_URL" in res.output
    with pytest.raises(StoreError, match="lives in memory"):
        open_ws(ftedit_home)
    assert not list(ftedit_home.rglob("*.safetensors"))  # nothing was written


def test_an_in_memory_blob_root_is_refused_unless_allowed(ftedit_home, monkeypatch):
    monkeypatch.setenv("FTEDIT_BLOB_URL", "memory://x/blobs")
    res = CliRunner().invoke(cli, ["log"])
    assert res.exit_code == 1 and "FTEDIT_BLOB_URL" in res.output, res.output
    with pytest.raises(StoreError, match="blob root 'memory://x/blobs' lives in memory"):
        Store(*store_location(ftedit_home))
    assert (
        Store(*store_location(ftedit_home), ephemeral_ok=True).blobs.list() == []
    )  # tests may opt in


# ---- 5: one request cannot stall everyone ---------------------------------------------------
LONG = HP0.replace(num_steps=150, early_stop_loss=0.0)  # would train 150 steps if not stopped


def _lock_is_free(ws) -> bool:
    """Whether another thread can take the workspace and home locks right now."""
    got: list[bool] = []

    def probe() -> None:
        ok = ws.lock.acquire(blocking=False)
        if ok:
            ws.lock.release()
        got.append(ok)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    ws.store.file_lock.acquire(timeout=0)  # raises filelock.Timeout if held
    ws.store.file_lock.release()
    return got == [True]


def test_cancel_stops_training_at_the_next_step_and_changes_nothing(ftedit_home):
    ws = open_ws(ftedit_home)
    ws.edit(REQUESTS[1], HP1)
    before = params(ws)
    cancel, steps = threading.Event(), []

    def leave_after_two(step, _n, _loss):
        steps.append(step)
        if step == 2:
            cancel.set()

    with pytest.raises(Cancelled, match="cancelled at step 2/150; nothing was changed"):
        ws.edit(REQUESTS[0], LONG, callback=leave_after_two, cancel=cancel)
    assert steps == [1, 2]
    assert_same(params(ws), before)  # bit-identical
    assert [e.id for e in ws.history()] == [1] and len(ws.store.blobs.list()) == 1
    assert _lock_is_free(ws)
    assert ws.verify().ok


def test_a_visitor_leaving_the_app_cancels_their_training(ftedit_home, monkeypatch):
    """The edit handler given the visitor's request (as Gradio gives it); the visitor closes the
    tab (``demo.unload``) at step two: training stops there, nothing is stored."""
    import gradio as gr

    from ui import handlers, state

    ws = open_ws(ftedit_home)
    state.set_workspace(ws)
    request = type("Request", (), {"session_hash": "visitor-1"})()
    steps: list[int] = []
    real = ws.edit

    def edit(requests, hparams=None, callback=None, **kw):
        def visitor_closes_the_tab_at_step_two(step, n, loss):
            steps.append(step)
            callback(step, n, loss)
            if step == 2:
                state.visitor_left(request)

        return real(requests, hparams, visitor_closes_the_tab_at_step_two, **kw)

    monkeypatch.setattr(ws, "edit", edit)
    before = params(ws)
    try:
        with pytest.raises(gr.Error, match="cancelled at step 2/"):
            handlers.run_edit(
                "{} is located in the city of", "Eiffel Tower", "Rome", "Paris",
                *["auto", "0", 1e-2, 150, 0, "prompt_last"], request=request,
            )  # fmt: skip
    finally:
        state.set_workspace(None)
    assert steps == [1, 2] and ws.history() == []
    assert_same(params(ws), before)
    assert _lock_is_free(ws)


def test_num_steps_has_a_default_ceiling_that_the_deployment_can_raise(ftedit_home, monkeypatch):
    ws = open_ws(ftedit_home)
    with pytest.raises(LimitError, match="default ceiling of 200.*FTEDIT_MAX_STEPS"):
        ws.edit(REQUESTS[0], HP0.replace(num_steps=1_000_000))
    assert ws.history() == [] and ws.store.blobs.list() == []
    monkeypatch.setenv("FTEDIT_MAX_STEPS", "1000")
    ws = open_ws(ftedit_home)
    cancel, steps = threading.Event(), []

    def stop_at_once(step, _n, _loss):
        steps.append(step)
        cancel.set()

    with pytest.raises(Cancelled):  # allowed past the ceiling: it trains (we stop it at once)
        ws.edit(REQUESTS[0], HP0.replace(num_steps=500), callback=stop_at_once, cancel=cancel)
    assert steps == [1]


def test_an_edit_whose_page_went_away_stops_training_and_frees_the_lock(ftedit_home, monkeypatch):
    """The app streams an edit from a generator while a worker trains; when the generator is
    closed mid-training (the client is gone), the worker stops at its next step: nothing is
    stored, the weights are unchanged, and no thread keeps the workspace lock."""
    from ui import handlers, state

    ws = open_ws(ftedit_home)
    state.set_workspace(ws)
    stepped, closed, steps = threading.Event(), threading.Event(), []
    real = ws.edit

    def edit(requests, hparams=None, callback=None, **kw):
        def held(step, n, loss):  # the handler's callback, then wait for the page to go away
            steps.append(step)
            callback(step, n, loss)
            stepped.set()
            closed.wait(120)

        return real(requests, hparams, held, **kw)

    monkeypatch.setattr(ws, "edit", edit)
    before = params(ws)
    try:
        stream = handlers.edit(
            "{} is located in the city of", "Eiffel Tower", "Rome", "Paris",
            *["auto", "0", 1e-2, 5, 0, "prompt_last"],
        )  # fmt: skip
        assert next(stream)[0].startswith("Training")  # the generator started the worker
        assert stepped.wait(120)  # which is inside its first step
        stream.close()  # the client went away mid-training
        closed.set()
        assert ws.lock.acquire(timeout=120)  # the worker gave the lock back
        ws.lock.release()
    finally:
        closed.set()
        state.set_workspace(None)
    assert steps == [1, 2] and ws.history() == []  # stopped at the step after the close
    assert_same(params(ws), before)
    assert _lock_is_free(ws)
