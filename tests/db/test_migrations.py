"""Alembic migrations create the whole schema on SQLite and on the PostgreSQL server."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import inspect

from gpubot.db.engine import make_engine, make_sessionmaker, session_scope, upgrade_to_head
from gpubot.db.queries import apply_job_update, claim_due_jobs
from gpubot.db.tables import Base, JobRow, LedgerEntryRow
from gpubot.errors import StaleLockError


def test_upgrade_creates_every_table_and_is_idempotent(database_url: str) -> None:
    upgrade_to_head(database_url)
    upgrade_to_head(database_url)  # a second run changes nothing and does not fail
    engine = make_engine(database_url)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    engine.dispose()


def test_processes_migrating_a_fresh_database_at_once_all_succeed(database_url: str) -> None:
    """A prefork worker's children, beat and the bot all migrate on start, often at the same
    instant: every one must succeed and the schema end at head exactly once."""
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from gpubot.db.engine import migrations_dir

    spawn = multiprocessing.get_context("spawn")
    migrators = [spawn.Process(target=upgrade_to_head, args=(database_url,)) for _ in range(6)]
    for process in migrators:
        process.start()
    for process in migrators:
        process.join(timeout=120)
    assert [p.exitcode for p in migrators] == [0] * len(migrators)
    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    engine = make_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version_num FROM alembic_version"))
        versions = [row[0] for row in rows]
    engine.dispose()
    assert versions == [head]


def test_money_and_time_round_trip_and_claims_are_exclusive(database_url: str) -> None:
    upgrade_to_head(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    with session_scope(sessions) as session:
        session.add(
            JobRow(
                id="j-00000001",
                template="train",
                requester="U1",
                channel="C1",
                state="queued",
                due_at=now - timedelta(seconds=1),
            )
        )
        session.add(
            LedgerEntryRow(
                job_id="j-00000001",
                kind="compute",
                amount_usd=Decimal("0.12345678"),
                period_start=now,
                period_end=now + timedelta(seconds=10),
            )
        )
    with session_scope(sessions) as session:
        entry = session.query(LedgerEntryRow).one()
        assert entry.amount_usd == Decimal("0.12345678")
        assert entry.period_start == now and entry.period_start.tzinfo is not None
        first = claim_due_jobs(session, now=now)
        second = claim_due_jobs(session, now=now)
    assert [job_id for job_id, _ in first] == ["j-00000001"]
    assert second == []  # held by the first claimer
    with session_scope(sessions) as session:
        with pytest.raises(StaleLockError):
            apply_job_update(session, "j-00000001", "not-the-token", {"state": "renting"})
    with session_scope(sessions) as session:
        apply_job_update(session, "j-00000001", first[0][1], {"state": "renting"})
    with session_scope(sessions) as session:
        job = session.get(JobRow, "j-00000001")
        assert job is not None and job.state == "renting" and job.lock_token is None
    engine.dispose()
