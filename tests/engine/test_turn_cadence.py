"""A running job is read once per tick, however late in the tick its step ends.

The next turn is counted from the tick that claimed the job, not from the step's end: with
1000 running jobs on 2 workers a tick's steps end up to ~6 s after it started, and "end plus a
tick" missed the next tick for most of them (each job was read every second tick).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from gpubot.db.engine import session_scope
from gpubot.db.queries import claim_due_jobs
from gpubot.deps import EngineDeps
from gpubot.engine import remote_job, steps
from gpubot.engine.steps import TURN_EARLY_FRACTION, TURN_MIN_GAP_FRACTION, next_turn
from gpubot.models import JobState
from gpubot.testing.fakes import T0, FakeClock, seed_instance, seed_job
from tests.engine.test_idle_decision import _FakeRemote, _status

TICK_S = 10.0


def test_next_turn_is_before_the_next_tick_from_the_claim_and_not_at_once() -> None:
    tick = timedelta(seconds=TICK_S)
    # a step that ended 6 s into its tick is due before the next tick starts
    assert next_turn(T0, now=T0 + timedelta(seconds=6), tick_seconds=TICK_S) < T0 + tick
    assert next_turn(T0, now=T0, tick_seconds=TICK_S) == T0 + tick * (1 - TURN_EARLY_FRACTION)
    # a step that outlasted its tick waits a little, not a whole tick
    late = T0 + tick * 3
    assert next_turn(T0, now=late, tick_seconds=TICK_S) == late + tick * TURN_MIN_GAP_FRACTION


@pytest.fixture
def running_jobs(deps: EngineDeps, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ten running jobs on instances whose status read says "still running"."""
    @contextmanager
    def fake_connect(*_: Any, **__: Any) -> Iterator[_FakeRemote]:
        yield _FakeRemote(_status())

    monkeypatch.setattr(remote_job, "connect", fake_connect)
    ids = [f"j-{i}" for i in range(10)]
    with session_scope(deps.sessions) as s:
        for n, job_id in enumerate(ids):
            job = seed_job(s, job_id, state=JobState.RUNNING, created_at=clock())
            job.last_processed_at = clock()
            instance = seed_instance(s, job_id, str(200 + n), created_at=clock())
            instance.gpu_util_pct = 90.0
            instance.ssh_host = "127.0.0.1"
            instance.ssh_port = 22
    return ids


def test_jobs_whose_steps_end_late_in_the_tick_are_read_again_at_the_next_tick(
    deps: EngineDeps, clock: FakeClock, running_jobs: list[str]
) -> None:
    tick = timedelta(seconds=deps.settings.tick_seconds)
    for _ in range(3):
        tick_start = clock()
        with session_scope(deps.sessions) as s:
            claims = claim_due_jobs(s, now=tick_start)
        # every job is read at every tick...
        assert sorted(job_id for job_id, _ in claims) == running_jobs
        # ...though the workers reach the last steps most of a tick after the claim
        for n, claim in enumerate(claims):
            clock.set(tick_start + tick * (0.6 * n / len(claims)))
            steps.advance_job(deps, *claim)
        clock.set(tick_start + tick)
