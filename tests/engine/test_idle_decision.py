"""Idle/stuck as a decision: ``idle.decide`` writes nothing, the running step applies it.

The decision is checked on its own (busy, window elapsed, grace over, kept alive), then
through ``advance_job`` with a fake remote session: the warning is an outbox reply of the
step's own transaction and no key that is not a job column reaches the job row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from gpubot.db.engine import session_scope
from gpubot.db.queries import claim_due_jobs
from gpubot.db.tables import InstanceRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.engine import idle, remote_job, steps
from gpubot.engine.remote_job import JobStatus
from gpubot.models import JobState
from gpubot.testing.fakes import FakeClock, seed_instance, seed_job

JOB_COLUMNS = frozenset(JobRow.__table__.columns.keys())


def _status(exit_code: int | None = None) -> JobStatus:
    return JobStatus(
        running=exit_code is None, exit_code=exit_code, vanished=False, progress=None,
        trainer_metrics=None, diagnosis=None,
    )


def _seed(deps: EngineDeps, clock: FakeClock, *, util: float | None, idle_minutes: int) -> None:
    """A running job whose GPU has been idle for ``idle_minutes`` (by ``idle_since``)."""
    with session_scope(deps.sessions) as s:
        job = seed_job(s, "j-1", state=JobState.RUNNING, created_at=clock())
        job.idle_since = clock() - timedelta(minutes=idle_minutes)
        job.last_processed_at = clock()
        instance = seed_instance(s, "j-1", "101", created_at=clock())
        instance.gpu_util_pct = util
        instance.ssh_host = "127.0.0.1"
        instance.ssh_port = 22


def _decide(deps: EngineDeps) -> idle.IdleDecision:
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-1")
        instance = s.get(InstanceRow, 1)
        assert job is not None and instance is not None
        return idle.decide(deps, job, instance, _status())


def test_a_busy_gpu_decides_nothing(deps: EngineDeps, clock: FakeClock) -> None:
    _seed(deps, clock, util=90.0, idle_minutes=0)
    decision = _decide(deps)
    assert decision.warning is None and decision.stop_reason is None
    assert dict(decision.changes) == {"idle_since": None, "idle_warned_at": None}


def test_the_elapsed_window_warns_once_and_the_grace_then_stops(
    deps: EngineDeps, clock: FakeClock
) -> None:
    policy = deps.config.idle
    _seed(deps, clock, util=0.0, idle_minutes=policy.stuck_window_minutes)
    decision = _decide(deps)
    assert decision.stop_reason is None
    assert decision.warning is not None and "looks stuck" in decision.warning
    assert "/gpu keep j-1 2" in decision.warning
    warned_at = decision.changes["idle_warned_at"]
    assert set(decision.changes) <= JOB_COLUMNS
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-1")
        assert job is not None
        job.idle_warned_at = warned_at
    # the stuck grace is proportional to the stuck window (at least a minute)
    grace = idle.stuck_grace(policy, idle.stuck_window(policy, None))
    assert grace >= timedelta(minutes=1)
    clock.advance(grace - timedelta(seconds=1))
    assert _decide(deps) == idle.IdleDecision()
    clock.advance(seconds=1)
    decision = _decide(deps)
    assert decision.warning is None
    assert decision.stop_reason is not None and decision.stop_reason.startswith("stuck")


def test_keep_alive_postpones_the_decision(deps: EngineDeps, clock: FakeClock) -> None:
    policy = deps.config.idle
    _seed(deps, clock, util=0.0, idle_minutes=policy.stuck_window_minutes + 5)
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-1")
        assert job is not None
        job.keep_until = clock() + timedelta(hours=1)
    decision = _decide(deps)
    assert decision.warning is None and decision.stop_reason is None
    assert dict(decision.changes) == {"idle_since": None, "idle_warned_at": None}


class _FakeRemote:
    def __init__(self, status: JobStatus) -> None:
        self._status = status

    def status(self, job: JobRow) -> JobStatus:
        return self._status

    def backup_checkpoints(self, job: JobRow, *, final: bool = False) -> str | None:
        return None


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The ``changes`` of every step result the engine applies."""
    seen: list[dict[str, Any]] = []
    real_apply = steps._apply

    def spy(deps: EngineDeps, job: JobRow, token: str, result: steps.StepResult,
            **kw: Any) -> bool:
        seen.append(dict(result.changes))
        return real_apply(deps, job, token, result, **kw)

    monkeypatch.setattr(steps, "_apply", spy)
    return seen


def _run_step(deps: EngineDeps, clock: FakeClock, status: JobStatus,
              monkeypatch: pytest.MonkeyPatch) -> JobRow:
    @contextmanager
    def fake_connect(*_: Any, **__: Any) -> Iterator[_FakeRemote]:
        yield _FakeRemote(status)

    monkeypatch.setattr(remote_job, "connect", fake_connect)
    with session_scope(deps.sessions) as s:
        (claim,) = claim_due_jobs(s, now=clock())
    steps.advance_job(deps, *claim)
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-1")
        assert job is not None
        s.expunge(job)
        return job


def _thread_texts(deps: EngineDeps) -> list[str]:
    with session_scope(deps.sessions) as s:
        return [m.text for m in s.scalars(select(MessageRow).where(MessageRow.kind == "reply"))]


@pytest.mark.parametrize("exit_code", [None, 0])
def test_the_warning_is_applied_by_the_step_and_no_flag_reaches_the_job_row(
    deps: EngineDeps,
    clock: FakeClock,
    applied: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    exit_code: int | None,
) -> None:
    """The poll on which the window elapses: with the process still running the warning is
    posted in the step's transaction; on the exit-code path nothing is posted. Either way
    only job columns are applied (``_warn`` used to leak into ``setattr`` on that path)."""
    _seed(deps, clock, util=0.0, idle_minutes=deps.config.idle.stuck_window_minutes)
    # (collecting, normally chained into this step, is left to the next one here)
    monkeypatch.setattr(steps, "CHAINED_STATES", steps.CHAINED_STATES - {JobState.COLLECTING})
    job = _run_step(deps, clock, _status(exit_code), monkeypatch)
    (changes,) = applied
    assert "_warn" not in changes
    assert set(changes) <= JOB_COLUMNS
    assert job.idle_warned_at is not None
    warnings = [t for t in _thread_texts(deps) if "looks stuck" in t]
    if exit_code is None:
        assert job.state == JobState.RUNNING.value
        assert len(warnings) == 1
    else:
        assert job.state == JobState.COLLECTING.value
        assert warnings == []
