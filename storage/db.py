"""Engine creation and migrations. Every dialect-specific line of the project lives here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration; open_engine skips Alembic entirely when the database is already there,
# which keeps `ftedit log` fast (tests check this equals Alembic's head).
HEAD = "0002"
_MIGRATE_LOCK = 0x66746564  # "fted": the advisory lock id taken while migrating PostgreSQL


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
    """Upgrade the database to the newest migration (programmatic Alembic, no alembic.ini)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas on several machines may open a blank database at once (the home's file
            # lock only covers one machine): the first migrates, the others wait, then find
            # the schema at head. Released at commit.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


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
        self._where = describe(url)

    @contextmanager
    def __call__(self) -> Iterator[Session]:
        try:
            with self._maker() as s:
                yield s
        except (OperationalError, InterfaceError) as e:
            from ftedit.errors import StoreError

            why = str(e.orig or e).strip().splitlines()[0][:200]
            raise StoreError(
                f"the database {self._where} failed ({why}); this operation was not "
                "committed and earlier edits are safe: check that the database is reachable "
                "(a server: running), then retry"
            ) from e
