"""Idle/stuck decisions with telemetry gaps: a missing GPU sample is never idle."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gpubot.db.engine import session_scope
from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.engine import idle
from gpubot.engine.remote_job import JobStatus
from gpubot.models import JobState
from gpubot.testing.fakes import FakeClock, seed_instance, seed_job

BUSY_NO_PROGRESS = JobStatus(
    running=True, exit_code=None, vanished=False, progress=None, trainer_metrics=None,
    diagnosis=None,
)


def test_gpu_sample_idle_is_false_without_a_sample() -> None:
    assert idle.gpu_sample_idle(None, 5.0) is False
    assert idle.gpu_sample_idle(0.0, 5.0) is True
    assert idle.gpu_sample_idle(50.0, 5.0) is False


def _poll_for(
    deps: EngineDeps, clock: FakeClock, util: float | None, minutes: int
) -> str | None:
    """Poll like the running step every minute for ``minutes``; the first stop reason."""
    with session_scope(deps.sessions) as s:
        seed_job(s, "j-1", state=JobState.RUNNING, created_at=clock())
        seed_instance(s, "j-1", "101", created_at=clock()).gpu_util_pct = util
    for _ in range(minutes):
        clock.advance(minutes=1)
        with session_scope(deps.sessions) as s:
            job = s.get(JobRow, "j-1")
            instance = s.get(InstanceRow, 1)
            assert job is not None and instance is not None
            decision = idle.decide(deps, job, instance, BUSY_NO_PROGRESS)
            reason = decision.stop_reason
            for key, value in decision.changes.items():
                setattr(job, key, value)
            job.last_processed_at = clock()
        if reason:
            return reason
    return None


def test_null_gpu_util_for_30_minutes_while_the_process_runs_is_not_reaped(
    deps: EngineDeps, clock: FakeClock
) -> None:
    policy = deps.config.idle
    minutes = max(30, policy.stuck_window_minutes + policy.grace_minutes + 5)
    assert _poll_for(deps, clock, None, minutes) is None


@pytest.mark.parametrize("util", [0.0])
def test_a_real_idle_sample_is_still_reaped_as_stuck(
    deps: EngineDeps, clock: FakeClock, util: float
) -> None:
    policy = deps.config.idle
    minutes = policy.stuck_window_minutes + policy.grace_minutes + 5
    reason = _poll_for(deps, clock, util, minutes)
    assert reason is not None and reason.startswith("stuck")
    assert timedelta(minutes=minutes) > timedelta(0)
