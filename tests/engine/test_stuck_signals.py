"""Stuck from three signals within minutes: the process is alive, the GPU samples are idle in
a row and the progress step has not advanced for the job's stuck window (5 min, or 5x the
job's own cadence); a short grace proportional to that window follows the warning.

Polls are driven like the running step does them, every 10 s on a FakeClock: the GPU sample
is written onto the instance, the progress merged with ``remote_job.merge_progress`` and the
decision's changes applied to the job, as ``_step_running`` applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gpubot.db.engine import session_scope
from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.engine import idle, remote_job
from gpubot.engine.remote_job import JobStatus
from gpubot.models import JobState
from gpubot.remote.parsing import Progress
from gpubot.templates import IdlePolicy
from gpubot.testing.fakes import FakeClock, seed_instance, seed_job

TICK = timedelta(seconds=10)


@dataclass
class Outcome:
    """When the driven job was first warned and stopped (None: never): clock times for jobs,
    time since ready for interactive rentals."""

    warned_at: datetime | timedelta | None = None
    stopped_at: datetime | timedelta | None = None
    reason: str | None = None


def _rows(deps: EngineDeps, clock: FakeClock) -> tuple[JobRow, InstanceRow]:
    with session_scope(deps.sessions) as s:
        job = seed_job(s, "j-1", state=JobState.RUNNING, created_at=clock())
        instance = seed_instance(s, "j-1", "101", created_at=clock())
        s.flush()
        s.refresh(job)
        s.refresh(instance)
        s.expunge(job)
        s.expunge(instance)
    job.last_processed_at = clock()
    return job, instance


def _drive(
    deps: EngineDeps,
    clock: FakeClock,
    *,
    minutes: float,
    util: Callable[[float], float | None],
    step: Callable[[float], int | None],
) -> Outcome:
    """Poll every tick for ``minutes``; ``util(t)`` and ``step(t)`` give the GPU sample and the
    progress step at ``t`` seconds from the start (step None: no progress file)."""
    job, instance = _rows(deps, clock)
    start = clock()
    out = Outcome()
    while clock() - start < timedelta(minutes=minutes):
        clock.advance(TICK)
        t = (clock() - start).total_seconds()
        instance.gpu_util_pct = util(t)
        s = step(t)
        progress = Progress(step=s, total_steps=None, epoch=None) if s is not None else None
        status = JobStatus(running=True, exit_code=None, vanished=False, progress=progress,
                           trainer_metrics=None, diagnosis=None)
        decision = idle.decide(deps, job, instance, status)
        job.progress = remote_job.merge_progress(job, status, clock())
        for key, value in decision.changes.items():
            setattr(job, key, value)
        job.last_processed_at = clock()
        if decision.warning and out.warned_at is None:
            out.warned_at = clock()
        if decision.stop_reason:
            out.stopped_at, out.reason = clock(), decision.stop_reason
            return out
    return out


def test_the_stuck_window_is_five_minutes_or_five_times_the_jobs_cadence() -> None:
    policy = IdlePolicy()
    assert idle.stuck_window(policy, None) == timedelta(minutes=5)
    every_minute = {"first": [0, "2026-01-01T00:00:00+00:00"], "step": 30,
                    "last_advance_at": "2026-01-01T00:30:00+00:00"}
    assert idle.seconds_per_step(every_minute) == 60
    assert idle.stuck_window(policy, every_minute) == timedelta(minutes=5)
    every_ten = {"first": [0, "2026-01-01T00:00:00+00:00"], "step": 3,
                 "last_advance_at": "2026-01-01T00:30:00+00:00"}
    assert idle.stuck_window(policy, every_ten) == timedelta(minutes=50)
    # the grace is proportional to the window, at least a minute
    assert idle.stuck_grace(policy, timedelta(minutes=5)) == timedelta(minutes=1)
    assert idle.stuck_grace(policy, timedelta(minutes=50)) == timedelta(minutes=10)
    assert idle.seconds_per_step({"first": ["x"], "step": 3}) is None


def test_a_stalled_job_is_warned_and_stopped_within_minutes(
    deps: EngineDeps, clock: FakeClock
) -> None:
    # given a job that advances one step a minute with a busy GPU, then stalls at 20 min
    start = clock()
    stall = 20 * 60.0
    out = _drive(deps, clock, minutes=60,
                 util=lambda t: 95.0 if t < stall else 0.0,
                 step=lambda t: int(min(t, stall) // 60))
    # then it is warned 5 min after the stall and stopped 1 min later (within a tick or two)
    assert out.warned_at is not None and out.stopped_at is not None, out
    stalled_at = start + timedelta(seconds=stall)
    assert timedelta(minutes=5) <= out.warned_at - stalled_at <= timedelta(minutes=5) + 2 * TICK
    assert out.stopped_at - stalled_at <= timedelta(minutes=6) + 2 * TICK
    assert out.reason is not None and out.reason.startswith("stuck")
    assert out.reason.endswith("for 6 minutes"), out.reason


def test_a_long_quiet_phase_with_a_busy_gpu_is_never_stuck(
    deps: EngineDeps, clock: FakeClock
) -> None:
    # given a job that reports every minute for 10 min, then works 2 h without a report
    out = _drive(deps, clock, minutes=130, util=lambda t: 90.0,
                 step=lambda t: int(min(t, 600) // 60))
    assert out == Outcome()


def test_a_quiet_phase_shorter_than_five_times_the_cadence_is_not_stuck(
    deps: EngineDeps, clock: FakeClock
) -> None:
    # given a job that reports every 10 min, and whose GPU idles 30 min after its 3rd report
    # (evaluation on the CPU, say) before it reports again
    def step(t: float) -> int:
        return int(t // 600) if t < 1800 else (3 if t < 3600 else int(t // 600))

    out = _drive(deps, clock, minutes=70,
                 util=lambda t: 0.0 if 1800 <= t < 3600 else 90.0, step=step)
    # then its window is 50 min (5 x 10 min): no warning
    assert out == Outcome()


def test_a_missing_sample_breaks_the_run_of_idle_samples(
    deps: EngineDeps, clock: FakeClock
) -> None:
    # given no progress at all and idle samples interrupted by a missing one every 4 min
    out = _drive(deps, clock, minutes=30,
                 util=lambda t: None if int(t) % 240 == 0 else 0.0, step=lambda t: None)
    # then the idle run never lasts the 5 min window
    assert out == Outcome()


def test_null_telemetry_for_30_minutes_is_never_stuck(deps: EngineDeps, clock: FakeClock) -> None:
    out = _drive(deps, clock, minutes=35, util=lambda t: None, step=lambda t: 0)
    assert out == Outcome()


def test_next_decision_at_is_the_window_then_the_grace(
    deps: EngineDeps, clock: FakeClock
) -> None:
    job, _ = _rows(deps, clock)
    assert idle.next_decision_at(deps, job) is None
    job.idle_since = clock()
    assert idle.next_decision_at(deps, job) == clock() + timedelta(minutes=5)
    job.idle_warned_at = clock() + timedelta(minutes=5)
    assert idle.next_decision_at(deps, job) == clock() + timedelta(minutes=6)


def _drive_box(
    deps: EngineDeps, clock: FakeClock, *, minutes: float, util: Callable[[float], float | None]
) -> Outcome:
    """Poll an interactive rental every tick from the moment it became ready."""
    job, instance = _rows(deps, clock)
    job.kind = "interactive"
    job.step_started_at = job.last_processed_at = clock()
    start = clock()
    out = Outcome()
    while clock() - start < timedelta(minutes=minutes):
        clock.advance(TICK)
        instance.gpu_util_pct = util((clock() - start).total_seconds())
        decision = idle.decide(deps, job, instance, None)
        for key, value in decision.changes.items():
            setattr(job, key, value)
        job.last_processed_at = clock()
        if decision.warning and out.warned_at is None:
            out.warned_at = clock() - start
        if decision.stop_reason:
            out.stopped_at, out.reason = clock() - start, decision.stop_reason
            return out
    return out


def test_a_box_nobody_has_used_since_it_became_ready_gets_the_unused_window(
    deps: EngineDeps, clock: FakeClock
) -> None:
    policy = deps.config.idle
    out = _drive_box(deps, clock, minutes=60, util=lambda t: 0.0)
    assert out.warned_at == timedelta(minutes=policy.unused_window_minutes)
    assert out.stopped_at == timedelta(minutes=policy.unused_window_minutes
                                       + policy.grace_minutes)
    assert out.reason is not None and out.reason.startswith(
        f"idle for {policy.unused_window_minutes + policy.grace_minutes} minutes")


def test_a_box_used_once_gets_the_full_idle_window(deps: EngineDeps, clock: FakeClock) -> None:
    policy = deps.config.idle
    # given a box whose GPU was busy for its first 2 minutes, idle after that
    out = _drive_box(deps, clock, minutes=60, util=lambda t: 80.0 if t <= 120 else 0.0)
    # then the idle window counts from the last busy poll, at its full length
    assert out.warned_at == timedelta(minutes=2 + policy.window_minutes)
    assert out.stopped_at == timedelta(minutes=2 + policy.window_minutes + policy.grace_minutes)


def test_a_box_without_samples_at_first_is_not_taken_for_unused(
    deps: EngineDeps, clock: FakeClock
) -> None:
    policy = deps.config.idle
    # given no telemetry for the first 3 minutes, then idle samples
    out = _drive_box(deps, clock, minutes=60, util=lambda t: None if t <= 180 else 0.0)
    # then the unknown start is not "unused": the full window from the last unknown sample
    assert out.warned_at == timedelta(minutes=3 + policy.window_minutes)


def test_a_box_without_any_sample_for_30_minutes_is_never_idle(
    deps: EngineDeps, clock: FakeClock
) -> None:
    assert _drive_box(deps, clock, minutes=30, util=lambda t: None) == Outcome()
