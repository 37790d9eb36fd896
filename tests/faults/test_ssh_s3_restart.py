"""SSH drops mid-deploy and mid-run, S3 errors mid-run, and a simulator restart."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gpubot.deps import EngineDeps
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from tests.faults.conftest import (
    TERMINAL,
    LiveMonitor,
    assert_clean,
    inline_tick,
    instances_of,
    launch,
    wait_for,
)


class SSHDropper:
    """Closes the instance's SSH connections every 20 ms while ``active`` (from a thread, so
    drops land in the middle of the engine's commands)."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.provider_id: str | None = None
        self.active = threading.Event()
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            if self.active.is_set() and self.provider_id:
                try:
                    self.dropped += self.sim.control.drop_ssh(self.provider_id)
                except Exception:  # noqa: BLE001 - the instance may be gone already
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.mark.parametrize("phase", [pytest.param("deploying", marks=pytest.mark.slow), "running"])
def test_ssh_drops_mid_step_are_retried(
    phase: str, engine: EngineDeps, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    # given a job; while it is in ``phase`` its SSH connections are cut every 20 ms for a
    # few ticks
    job_id = launch(engine, "trainx steps=80 step_seconds=0.03")
    dropper = SSHDropper(sim)
    ticks_in_phase = 0
    errors_seen = 0

    def tick() -> None:
        nonlocal ticks_in_phase, errors_seen
        job = wait_for(engine.sessions, job_id, until=lambda j: True, tick=lambda: None)
        if job.state == phase and ticks_in_phase < 6:
            rows = [r for r in instances_of(engine.sessions, job_id) if r.provider_id]
            dropper.provider_id = rows[-1].provider_id
            dropper.active.set()
            ticks_in_phase += 1
        else:
            dropper.active.clear()
        inline_tick(engine)
        after = wait_for(engine.sessions, job_id, until=lambda j: True, tick=lambda: None)
        errors_seen = max(errors_seen, int((after.progress or {}).get("error_count", 0)))

    try:
        wait_for(
            engine.sessions, job_id, until=lambda j: j.state in TERMINAL, tick=tick,
            timeout_s=120,
        )
    finally:
        dropper.close()

    # then connections were really cut, the step failed and was retried, the job succeeded
    assert dropper.dropped > 0
    assert ticks_in_phase > 0
    assert errors_seen >= 1, "no drop ever hit a step"
    assert_clean(engine.sessions, sim, job_id, monitor=live_monitor, attempts=1)


def test_s3_errors_mid_run_are_retried(
    engine: EngineDeps, sim: SimServer, s3_store: S3Store, live_monitor: LiveMonitor
) -> None:
    # given a running job whose object store now points at a bucket that does not exist
    job_id = launch(engine, "trainx steps=120 step_seconds=0.05 checkpoint_every=20")
    wait_for(engine.sessions, job_id, until=lambda j: j.state == "running",
             tick=lambda: inline_tick(engine))
    engine.store = S3Store("gpubot-no-such-bucket", "gpubot/")
    job = wait_for(
        engine.sessions, job_id,
        until=lambda j: int((j.progress or {}).get("error_count", 0)) >= 2,
        tick=lambda: inline_tick(engine), timeout_s=60,
    )
    assert "retrying" in job.phase_detail
    # when the store is back
    engine.store = s3_store
    job = wait_for(engine.sessions, job_id, until=lambda j: j.state in TERMINAL,
                   tick=lambda: inline_tick(engine), timeout_s=90)
    # then checkpoints and results landed, nothing leaked
    assert job.state == "succeeded", job.reason
    assert any(o.key.startswith(f"jobs/{job_id}/results/") for o in s3_store.list("jobs/"))
    assert_clean(engine.sessions, sim, job_id, monitor=live_monitor, attempts=1)


@pytest.mark.slow
def test_s3_down_for_good_fails_clearly_and_destroys(
    engine: EngineDeps, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    job_id = launch(engine, "trainx steps=60 step_seconds=0.03 checkpoint_every=20")
    wait_for(engine.sessions, job_id, until=lambda j: j.state == "running",
             tick=lambda: inline_tick(engine))
    engine.store = S3Store("gpubot-no-such-bucket", "gpubot/")
    job = wait_for(engine.sessions, job_id, until=lambda j: j.state in TERMINAL,
                   tick=lambda: inline_tick(engine), timeout_s=120)
    assert job.state == "failed" and "gave up after" in job.reason
    assert_clean(engine.sessions, sim, job_id, monitor=live_monitor,
                 states=frozenset({"failed"}))


def test_simulator_restart_mid_run(
    engine: EngineDeps, sim: SimServer, tmp_path: Path, live_monitor: LiveMonitor
) -> None:
    # given a running job
    job_id = launch(engine, "trainx steps=200 step_seconds=0.05 checkpoint_every=20")
    wait_for(engine.sessions, job_id, until=lambda j: j.state == "running",
             tick=lambda: inline_tick(engine))
    port = int(sim.url.rsplit(":", 1)[1])
    # when the simulator stops (ticks meanwhile see a failed listing) and starts again on the
    # same home and port (the instance's processes are gone: vast's host rebooted)
    sim.stop()
    report = inline_tick(engine)
    assert not report.listed_ok
    [row] = instances_of(engine.sessions, job_id)
    assert row.destroyed_at is None and row.provider_status != "gone"
    sim.port = port
    sim.start()
    job = wait_for(engine.sessions, job_id, until=lambda j: j.state in TERMINAL,
                   tick=lambda: inline_tick(engine), timeout_s=120)
    # then the job fails clearly (its process vanished) and nothing leaks
    assert_clean(engine.sessions, sim, job_id, monitor=live_monitor,
                 states=frozenset({"succeeded", "failed"}))
    if job.state == "failed":
        assert "gone" in job.reason or "vanished" in job.reason or "killed" in job.reason
