"""Engine creation and migrations. Every dialect-specific line of the project lives here."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration; open_engine skips Alembic entirely when the database is already there,
# which keeps `ftedit log` fast (tests check this equals Alembic's head).
HEAD = "0002"
_MIGRATE_LOCK = 0x66746564  # "fted": the advisory lock id taken while migrating PostgreSQL


def crash_point(name: str) -> None:
    """Test hook: die like a power cut (SIGKILL, no cleanup) where FTEDIT_TEST_CRASH_AT says."""
    if os.environ.get("FTEDIT_TEST_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL and a busy timeout."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        # WAL lets the CLI read while the app writes; busy_timeout waits instead of failing
        # when two processes write at once.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision stamped in the database, or None for a blank one."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest migration (programmatic Alembic, no alembic.ini).

    All or nothing: on SQLite the whole upgrade (and any repair of a half-made schema) runs in
    one ``BEGIN IMMEDIATE`` transaction on a connection of its own (see :func:`_ddl_engine`),
    so a kill mid-migration leaves the schema as it was; PostgreSQL's DDL is transactional.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    target = _ddl_engine(engine) if sqlite else engine
    try:
        with target.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas on several machines may open a blank database at once (the home's
                # file lock only covers one machine): the first migrates, the others wait,
                # then find the schema at head. Released at commit.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
            if sqlite:
                _repair_sqlite(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        if target is not engine:
            target.dispose()


def _ddl_engine(engine: Engine) -> Engine:
    """A one-connection engine on the same SQLite file whose DDL is transactional.

    pysqlite commits implicitly before DDL, so Alembic's CREATE/ALTER statements would each
    commit on their own (a kill between two left "table base_models already exists" forever).
    The SQLAlchemy recipe: hand transaction control to us (``isolation_level = None``) and
    emit BEGIN ourselves; IMMEDIATE also takes the write lock up front, so two processes
    opening one blank store migrate one after the other. Foreign keys are off here (SQLite
    cannot change that inside a transaction) so batch migrations may copy tables.
    """
    from sqlalchemy.pool import NullPool

    ddl = create_engine(engine.url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(ddl, "connect")
    def _manual(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys=OFF")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(ddl, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return ddl


_TABLES = ("events", "edits", "base_models")  # dependants first


def _repair_sqlite(conn: Connection) -> None:
    """Undo what a non-transactional migration (an older ftedit, killed) left half made.

    Inside the migration's transaction, so a repair is itself all or nothing: leftover batch
    copies are dropped; tables made by an unstamped first migration are dropped when empty
    (no edit can have been stored before the stamp) and refused when not; an unstamped 0002
    whose column already exists is finished and stamped.
    """
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    for name in sorted(t for t in tables if t.startswith("_alembic_tmp_")):
        conn.exec_driver_sql(f'DROP TABLE "{name}"')
    revision = None
    if "alembic_version" in tables:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    present = [t for t in _TABLES if t in tables]
    if revision is None and present:
        rows = sum(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar() for t in present)
        if rows:
            raise _refused(
                conn,
                f"it has ftedit tables ({', '.join(present)}) holding {rows} row(s) but no "
                "schema version",
            )
        for t in present:
            conn.exec_driver_sql(f'DROP TABLE "{t}"')  # their indexes go with them
        if "alembic_version" in tables:
            conn.exec_driver_sql("DROP TABLE alembic_version")
        return
    half_0002 = revision == "0001" and "edits" in tables
    if half_0002 and "owner" in {c["name"] for c in insp.get_columns("edits")}:
        if "ix_edits_owner" not in {i["name"] for i in insp.get_indexes("edits")}:
            conn.exec_driver_sql("CREATE INDEX ix_edits_owner ON edits (owner)")
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))


def _refused(conn: Connection, why: str):
    from ftedit.errors import StoreError

    return StoreError(
        f"the database {describe(str(conn.engine.url))} cannot be migrated: {why}; nothing "
        "was changed (if it is damaged, `ftedit recover` rebuilds it from the blobs)"
    )


def describe(url: str) -> str:
    """The URL as it may appear in a message: password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def open_engine(url: str, lock: AbstractContextManager | None = None) -> Engine:
    """Make the engine and bring its schema up to date.

    ``lock`` (held only when a migration is due, so readers never wait on writers) keeps two
    processes opening one blank store from both creating its tables.
    """
    engine = make_engine(url)
    if current_revision(engine) != HEAD:
        with lock or nullcontext():
            if current_revision(engine) != HEAD:
                migrate(engine)
    return engine


# What SQLite says when a file is damaged (or not a database at all).
_DAMAGED = ("file is not a database", "malformed", "disk image", "file is encrypted")


def damaged(e: Exception) -> bool:
    """Whether a driver error means the SQLite file itself is damaged."""
    text = str(getattr(e, "orig", None) or e).lower()
    return any(m in text for m in _DAMAGED)


def damaged_message(url: str, e: Exception) -> str:
    why = str(getattr(e, "orig", None) or e).strip().splitlines()[0][:200]
    return (
        f"the database {describe(url)} is damaged ({why}): `ftedit recover` rebuilds it "
        "from the blob root (the damaged file is kept, renamed); nothing was changed"
    )


class Sessions:
    """A ``sessionmaker`` whose sessions turn a lost or failing database into a StoreError.

    ``with store.session() as s`` works as before; when the server is down or restarts
    mid-transaction, the transaction is rolled back and the caller gets a message naming the
    database and saying nothing was committed (SQLAlchemy's own error stays as the cause).
    pool_pre_ping (make_engine) makes the next call reconnect once the server is back.
    """

    def __init__(self, engine: Engine, url: str):
        from sqlalchemy.orm import sessionmaker

        self._maker = sessionmaker(engine, expire_on_commit=False)
        self._where, self._url = describe(url), url

    @contextmanager
    def __call__(self) -> Iterator[Session]:
        try:
            with self._maker() as s:
                yield s
        except DatabaseError as e:
            from ftedit.errors import StoreError

            if damaged(e):
                raise StoreError(damaged_message(self._url, e)) from e
            if not isinstance(e, (OperationalError, InterfaceError)):
                raise
            why = str(e.orig or e).strip().splitlines()[0][:200]
            raise StoreError(
                f"the database {self._where} failed ({why}); this operation was not "
                "committed and earlier edits are safe: check that the database is reachable "
                "(a server: running), then retry"
            ) from e
