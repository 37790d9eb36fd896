"""A steady running step's database work is bounded, and its fewer statements change nothing.

At 1000 running jobs every statement of a step runs 1000 times per tick on the workers and on
the database server. A step that keeps its state takes the claim and loads job and instance
in one transaction, then writes its changes with the guarded update (no re-read of the row)
and refreshes the card: 10 statements, commits included (was 15).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from gpubot.db.engine import session_scope
from gpubot.db.queries import claim_due_jobs
from gpubot.db.tables import JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.engine import remote_job, steps
from gpubot.models import JobState
from gpubot.testing.fakes import FakeClock, seed_instance, seed_job
from tests.engine.test_idle_decision import _FakeRemote, _status

STEADY_STEP_STATEMENTS_MAX = 10
"""Statements (commits included) of a running step that keeps its state, card changed."""


class _CheckpointingRemote(_FakeRemote):
    """A status read that also backs up a new checkpoint."""

    def backup_checkpoints(self, job: JobRow, *, final: bool = False) -> str | None:
        return "gpubot/j-1/checkpoint-7/"


@pytest.fixture
def running_job(deps: EngineDeps, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> str:
    """One running job whose status read says "still running", GPU busy."""
    @contextmanager
    def fake_connect(*_: Any, **__: Any) -> Iterator[_FakeRemote]:
        yield _CheckpointingRemote(_status())

    monkeypatch.setattr(remote_job, "connect", fake_connect)
    with session_scope(deps.sessions) as s:
        job = seed_job(s, "j-1", state=JobState.RUNNING, created_at=clock())
        job.last_processed_at = clock()
        instance = seed_instance(s, "j-1", "101", created_at=clock())
        instance.gpu_util_pct = 90.0
        instance.ssh_host = "127.0.0.1"
        instance.ssh_port = 22
    return "j-1"


@contextmanager
def _statements(deps: EngineDeps) -> Iterator[list[str]]:
    """Every statement and commit the engine's database sees inside the block."""
    engine = deps.sessions.kw["bind"]
    seen: list[str] = []

    def on_execute(*args: Any) -> None:
        seen.append(args[2].split(None, 1)[0].upper())

    def on_commit(_: Any) -> None:
        seen.append("COMMIT")

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)


def _claim(deps: EngineDeps, clock: FakeClock) -> tuple[str, str]:
    with session_scope(deps.sessions) as s:
        claims = claim_due_jobs(s, now=clock())
    assert len(claims) == 1
    return claims[0]


def test_a_steady_running_step_stays_within_its_statement_budget(
    deps: EngineDeps, clock: FakeClock, running_job: str
) -> None:
    # the first step writes the checkpoint and the card; the second is the steady one
    steps.advance_job(deps, *_claim(deps, clock))
    clock.advance(timedelta(seconds=deps.settings.tick_seconds))
    claim = _claim(deps, clock)
    with _statements(deps) as seen:
        steps.advance_job(deps, *claim)
    assert seen.count("COMMIT") == 2, seen
    assert len(seen) <= STEADY_STEP_STATEMENTS_MAX, seen


def test_the_step_result_and_what_notes_change_are_stored_and_the_claim_released(
    deps: EngineDeps, clock: FakeClock, running_job: str
) -> None:
    steps.advance_job(deps, *_claim(deps, clock))
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, running_job)
        assert job is not None
        assert job.state == JobState.RUNNING.value
        assert job.lock_token is None and job.lock_expires_at is None
        assert job.checkpoint_key == "gpubot/j-1/checkpoint-7/"
        # written by the checkpoint note on the attached row, after the guarded update
        assert (job.progress or {}).get("checkpoint_saved_key") == "gpubot/j-1/checkpoint-7/"
        assert job.last_processed_at == clock().replace(tzinfo=job.last_processed_at.tzinfo)
        card = s.scalars(select(MessageRow).where(MessageRow.kind == "card")).one()
        assert "j-1" in card.text


def test_a_second_delivery_of_the_same_claim_runs_nothing(
    deps: EngineDeps, clock: FakeClock, running_job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = _claim(deps, clock)
    steps.advance_job(deps, *claim)
    calls: list[str] = []
    monkeypatch.setattr(steps, "_run_step", lambda *a, **k: calls.append("step"))
    with _statements(deps) as seen:
        steps.advance_job(deps, *claim)
    assert calls == []
    assert "UPDATE" not in seen


def test_a_claim_lost_during_the_step_writes_nothing(
    deps: EngineDeps, clock: FakeClock, running_job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = steps._STEPS[JobState.RUNNING]

    def step_then_lose_claim(deps: EngineDeps, job: JobRow, instance: Any) -> Any:
        result = real_step(deps, job, instance)
        with session_scope(deps.sessions) as s:
            row = s.get(JobRow, job.id)
            assert row is not None
            row.lock_token = "someone-else"
        return result

    monkeypatch.setitem(steps._STEPS, JobState.RUNNING, step_then_lose_claim)
    with session_scope(deps.sessions) as s:
        before = s.get(JobRow, running_job)
        assert before is not None
        checkpoint_before = before.checkpoint_key
    steps.advance_job(deps, *_claim(deps, clock))
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, running_job)
        assert job is not None
        assert job.lock_token == "someone-else"
        assert job.checkpoint_key == checkpoint_before
        assert s.scalars(select(MessageRow).where(MessageRow.kind == "card")).first() is None
