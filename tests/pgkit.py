"""PostgreSQL for the tests: one fresh database per test, copied from a migrated template.

``FTEDIT_TEST_POSTGRES_URL`` names a server and a database we may connect to as a superuser
(``scripts/start_postgres.sh`` prints it; ``.ci/run`` exports it). Without it the postgres
tests skip locally and fail in CI (``CI=true``), so CI never silently tests SQLite alone.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

ENV = "FTEDIT_TEST_POSTGRES_URL"
_TEMPLATE = "ftedit_test_template"
_template_ready = False
_created: list[str] = []  # databases made for the running test
_per_home: dict[str, str] = {}  # extra homes of the running test -> their own database


def server_url() -> str:
    """The server's URL, or skip (locally) / fail (CI) with the way to start one."""
    url = os.environ.get(ENV)
    if url:
        return url
    how = f'{ENV} is not set: run `eval "$(scripts/start_postgres.sh)"` first (.ci/run does this)'
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {how}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {how}")


def _admin(sql: str) -> None:
    import psycopg

    u = make_url(server_url()).set(drivername="postgresql", database="postgres")
    with psycopg.connect(u.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(sql)


def _url(name: str) -> str:
    u = make_url(server_url()).set(database=name)
    return u.render_as_string(hide_password=False)


def _ensure_template() -> None:
    """Migrate once per test session; CREATE DATABASE ... TEMPLATE then copies it (~50 ms)."""
    global _template_ready
    if _template_ready:
        return
    from storage.db import open_engine

    _admin(f"DROP DATABASE IF EXISTS {_TEMPLATE} WITH (FORCE)")
    _admin(f"CREATE DATABASE {_TEMPLATE}")
    open_engine(_url(_TEMPLATE)).dispose()  # a template must have no open connections
    _template_ready = True


def fresh_url() -> str:
    """A new, migrated, empty database of its own (dropped by :func:`drop_all`)."""
    _ensure_template()
    name = f"ftedit_t_{uuid.uuid4().hex[:16]}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
    _created.append(name)
    return _url(name)


def url_for_home(home: str | Path | None) -> str | None:
    """The database of an extra home opened by a postgres test (a test's second store must not
    share the first one's database, as a second SQLite home would not); None otherwise."""
    if not _created or home is None:
        return None
    from ftedit import paths

    if Path(home) == paths.home():
        return None  # the test's own home: FTEDIT_DATABASE_URL already points at its database
    key = str(Path(home).resolve())
    if key not in _per_home:
        _per_home[key] = fresh_url()
    return _per_home[key]


def drop_all() -> None:
    """Drop the running test's databases (FORCE: engines the test left open are cut off)."""
    while _created:
        _admin(f"DROP DATABASE IF EXISTS {_created.pop()} WITH (FORCE)")
    _per_home.clear()


def server_ctl(*args: str) -> None:
    """Run pg_ctl on the test server (``stop -m fast``, ``start``), as start_postgres.sh says."""
    ctl = os.environ.get("FTEDIT_TEST_POSTGRES_CTL")
    if not ctl:
        pytest.skip("FTEDIT_TEST_POSTGRES_CTL is not set (scripts/start_postgres.sh prints it)")
    subprocess.run([*shlex.split(ctl), *args], check=True, capture_output=True, timeout=90)
