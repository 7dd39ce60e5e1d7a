"""PostgreSQL-only behaviour: the schema on a real server, and a server restart mid-edit."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from ftedit.errors import StoreError
from storage.db import open_engine
from storage.models import Base
from storage.store import Store
from tests import pgkit
from tests.storekit import HP0, HP1, REQUESTS, assert_replay_equal, assert_same, open_ws, params

pytestmark = pytest.mark.postgres


def test_blank_postgres_database_upgrades_and_matches_models():
    pgkit.server_url()
    try:
        engine = open_engine(pgkit.fresh_url())
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) >= {"base_models", "edits", "events"}
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
        engine.dispose()
    finally:
        pgkit.drop_all()


def test_server_restart_mid_edit_is_a_clear_error_and_loses_nothing(monkeypatch):
    pgkit.server_url()
    monkeypatch.setenv("FTEDIT_DATABASE_URL", pgkit.fresh_url())
    try:
        ws = open_ws()
        first = ws.edit(REQUESTS[0], HP0)
        before = params(ws)

        def stop_server(step, _n, _loss):
            if step == 1:  # the server goes away while the edit trains
                pgkit.server_ctl("stop", "-m", "fast")

        with pytest.raises(StoreError, match=r"failed .*not committed.*earlier edits are safe"):
            ws.edit(REQUESTS[1], HP1, callback=stop_server)
        assert_same(params(ws), before)  # the live weights were put back
        pgkit.server_ctl("start")
        assert [e.id for e in ws.history()] == [first.id]  # the committed edit is still there
        report = ws.verify()
        assert report.ok, report.problems
        assert len(report.orphans) == 1  # the failed edit's blob: durable, never referenced
        second = ws.edit(REQUESTS[2], HP1)  # the next edit works on the same Workspace
        assert [e.id for e in ws.history()] == [first.id, second.id]
        assert_replay_equal(ws)
    finally:
        pgkit.server_ctl("start") if _down() else None
        pgkit.drop_all()


def test_a_server_that_is_down_is_named_when_opening(monkeypatch, tmp_path):
    url = "postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing"
    with pytest.raises(StoreError, match=r"cannot open the database .*127\.0\.0\.1:1") as err:
        Store(tmp_path, url)
    assert "secret" not in str(err.value)


def _down() -> bool:
    import psycopg

    try:
        psycopg.connect(pgkit._url("postgres").replace("+psycopg", ""), connect_timeout=2).close()
        return False
    except psycopg.OperationalError:
        return True


def test_a_restart_that_ends_before_the_commit_costs_nothing(monkeypatch):
    """Server restarted while the edit trains: the pool's dead connections are replaced
    (pool_pre_ping) and the edit commits as if nothing happened."""
    pgkit.server_url()
    monkeypatch.setenv("FTEDIT_DATABASE_URL", pgkit.fresh_url())
    try:
        ws = open_ws()
        ws.edit(REQUESTS[0], HP0)

        def restart(step, _n, _loss):
            if step == 1:
                pgkit.server_ctl("restart", "-m", "fast")

        second = ws.edit(REQUESTS[1], HP1, callback=restart)
        assert [e.id for e in ws.history()] == [1, second.id] and ws.verify().ok
        assert_replay_equal(ws)
    finally:
        pgkit.server_ctl("start") if _down() else None
        pgkit.drop_all()
