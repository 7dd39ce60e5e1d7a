"""Engine creation and migrations. Every dialect-specific line of the project lives here."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration; open_engine skips Alembic entirely when the database is already there,
# which keeps `ftedit log` fast (tests check this equals Alembic's head).
HEAD = "0001"


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
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


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
