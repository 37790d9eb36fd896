"""Destroy failing for longer than ``[engine] destroy_deadline_minutes`` (1 here)."""

from __future__ import annotations

from gpubot.deps import EngineDeps
from gpubot.sim.server import SimServer
from tests.faults.conftest import (
    TERMINAL,
    LiveMonitor,
    assert_clean,
    inline_tick,
    instances_of,
    launch,
    thread_texts,
    wait_for,
)

DELETE = r"^/api/v0/instances/\d+/?$"


def test_persistent_destroy_failure_is_escalated_then_verified(
    engine: EngineDeps, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    assert engine.config.engine.destroy_deadline_minutes == 1
    # given a job about to tear down, and every DELETE answering 500 (not retried by the SDK)
    job_id = launch(engine, "trainx steps=30 step_seconds=0.02")
    sim.control.inject("DELETE", DELETE, 500, count=10_000)
    wait_for(engine.sessions, job_id, until=lambda j: j.state == "tearing_down",
             tick=lambda: inline_tick(engine))
    [row] = instances_of(engine.sessions, job_id)

    # when the deadline passes on the simulator's clock (the engine's clock) while destroys
    # keep failing
    for _ in range(6):
        sim.control.advance(31)  # past DESTROY_RETRY_INTERVAL: each tick asks again
        inline_tick(engine)
    sim.control.advance(1800)  # compute keeps billing meanwhile: the ledger must follow
    inline_tick(engine)

    # then the thread names the instance and the command to run, once; the job waits
    thread = thread_texts(engine.sessions, job_id)
    assert f"Could not confirm destruction of instance {row.provider_id}" in thread
    assert thread.count(f"vastai destroy instance {row.provider_id}") == 1
    job = wait_for(engine.sessions, job_id, until=lambda j: True, tick=lambda: None)
    assert job.state == "tearing_down"
    assert sim.control.state()["instances"], "the instance is still there"
    [row] = instances_of(engine.sessions, job_id)
    assert row.escalated_at is not None and row.destroyed_at is None

    # when the provider recovers
    sim.app.injections.clear()
    sim.control.advance(31)
    job = wait_for(engine.sessions, job_id, until=lambda j: j.state in TERMINAL,
                   tick=lambda: inline_tick(engine), timeout_s=60)

    # then the destroy is done and verified, and the ledger includes the extra minutes
    assert job.state == "succeeded", job.reason
    # (assert_clean compares the ledger with the simulator's billing per instance)
    assert_clean(engine.sessions, sim, job_id, monitor=live_monitor, attempts=1)
