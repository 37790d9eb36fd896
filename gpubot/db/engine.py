"""Engine and session factory from settings; Alembic upgrade to head."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

EXECUTEMANY_PAGE_ROWS = 500
"""PostgreSQL: parameter sets sent per round trip by an executemany of UPDATEs or upserts."""


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite gets WAL, a busy timeout and foreign keys on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    # executemany of UPDATEs and upserts (the tick's instance rows and spend summaries, ~1000
    # each per tick at 1000 jobs) in pages of EXECUTEMANY_PAGE_ROWS statements per round trip
    # (psycopg2's execute_batch) instead of one round trip per row; plain INSERTs already go
    # as multi-row VALUES. rowcount is not reported for such executemany calls; no caller
    # reads it (single-statement UPDATEs keep it).
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        executemany_mode="values_plus_batch",
        executemany_batch_page_size=EXECUTEMANY_PAGE_ROWS,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A short transaction: commit on success, roll back on error. No network calls inside."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrations_dir() -> Path:
    return Path(str(resources.files("gpubot.db").joinpath("migrations")))


MIGRATION_LOCK_KEY = 0x67707562_6F74  # "gpubot": one advisory lock id for every migrator
"""PostgreSQL advisory-lock key held for the length of an upgrade's transaction."""


def upgrade_to_head(url: str) -> None:
    """Run Alembic migrations up to head on ``url``; idempotent and safe to run concurrently.

    Every process that builds the engine's deps migrates (a prefork worker's children, the bot,
    beat, ``gpubot chat``), often at the same instant on a fresh database. Upgrades are
    serialised: on PostgreSQL by a transaction-scoped advisory lock taken in the migration's
    own transaction before Alembic reads the current revision (``migrations/env.py``), on
    SQLite by an exclusive ``flock`` on ``<database>.migrate.lock`` next to the file. The
    second migrator then finds the schema at head and does nothing (without the lock it failed
    with "duplicate key ... pg_type_typname_nsp_index" or "table ... already exists").
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    with _sqlite_file_lock(url):
        command.upgrade(config, "head")


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    """An exclusive flock beside a file-backed SQLite database; a no-op for anything else."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in {"", ":memory:"}:
        yield
        return
    import fcntl

    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
