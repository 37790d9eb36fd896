"""SIGKILL of a real prefork Celery worker (main process and pool child) in every job state.

The worker runs as a subprocess on Redis and PostgreSQL against the simulator at speed 1 and
moto's S3. When the job reaches the target state the whole worker process group is killed
without warning; a fresh worker takes over once the dead worker's claim expires
(``GPUBOT_LOCK_TTL_SECONDS=4`` here). The job must still end cleanly with nothing leaked and
nothing rented twice.

Some states are held open so the kill lands *inside* the step, not between steps:
- renting: the SSH-key attach right after the create answers 429 with ``Retry-After: 3``,
  so the worker dies after vast created the instance but before its id was recorded (the
  label de-duplication path);
- tearing_down: the DELETE answers 429 with ``Retry-After: 3`` (killed mid-destroy).
Other fast states (connecting, deploying, collecting) last a few hundred milliseconds; when
the poll sees a later state first, the worker is killed right then and ``KILLED_IN`` records
the state actually observed.
"""

from __future__ import annotations

import pytest

from gpubot.sim.server import SimServer
from tests.faults.conftest import (
    TERMINAL,
    Cluster,
    LiveMonitor,
    assert_clean,
    instances_of,
    launch,
    wait_for,
)

ORDER = [
    "queued",
    "renting",
    "booting",
    "connecting",
    "deploying",
    "setting_up",
    "running",
    "collecting",
    "tearing_down",
]
HOLDS = {
    "renting": ("POST", r"^/api/v0/instances/\d+/ssh/?$", 429, 3.0),
    "tearing_down": ("DELETE", r"^/api/v0/instances/\d+/?$", 429, 3.0),
}
CI_STATES = {"renting", "tearing_down"}
"""Killed inside a held step in CI; the other states run with ``-m slow``."""
KILLED_IN: dict[str, str] = {}
"""target state -> the state the job was in when the worker was killed."""


@pytest.fixture
def sim_speed() -> float:
    # The worker subprocess runs on the wall clock: keep the simulator's clock in step.
    return 1.0


def _rank(state: str) -> int:
    return ORDER.index(state) if state in ORDER else -1


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(s, marks=() if s in CI_STATES else pytest.mark.slow)
        for s in ORDER[1:]
    ],
)
def test_sigkill_in_each_state_still_ends_cleanly(
    target: str, cluster: Cluster, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    # given a worker and a job (with the target state held open where we can)
    first = cluster.worker("w1")
    if target in HOLDS:
        method, path, status, retry_after = HOLDS[target]
        sim.control.inject(method, path, status, count=1, retry_after=retry_after)
    job_id = launch(cluster.deps, "trainx steps=60 step_seconds=0.05 checkpoint_every=20")
    booted = False

    def skip_boot(job: object) -> None:
        # Booting takes 8 simulated seconds; once the kill is done (or booting is not the
        # target) move the simulator's clock on instead of waiting.
        nonlocal booted
        state = getattr(job, "state", "")
        if not booted and state == "booting" and (target != "booting" or first.proc is None):
            rows = [r for r in instances_of(cluster.sessions, job_id) if r.provider_id]
            if rows:
                sim.control.advance(8)
                booted = True

    # when the job reaches the target state, SIGKILL the worker
    def reached(job: object) -> bool:
        state = getattr(job, "state", "")
        if state in TERMINAL:
            return True
        if target in HOLDS:
            # inside the held call: the simulator has taken the injected fault
            return state == target and not sim.control.state()["injections"]
        return _rank(state) >= _rank(target)

    job = wait_for(
        cluster.sessions,
        job_id,
        until=reached,
        tick=cluster.tick,
        on_poll=skip_boot,
        timeout_s=60,
        pace_s=0.01,
    )
    first.kill()
    KILLED_IN[target] = job.state
    assert job.state not in TERMINAL, f"finished before the kill ({job.state})"
    print(f"target {target}: killed in {job.state}")

    # then a new worker finishes the job cleanly
    cluster.worker("w2")
    wait_for(
        cluster.sessions,
        job_id,
        until=lambda j: j.state in TERMINAL,
        tick=cluster.tick,
        on_poll=skip_boot,
        timeout_s=90,
    )
    outcome = assert_clean(cluster.sessions, sim, job_id, monitor=live_monitor, attempts=1)
    assert outcome.job.state == "succeeded"
    if target in HOLDS:
        # the kill landed inside the held step
        assert KILLED_IN[target] == target
