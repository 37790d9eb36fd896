"""SSH drops mid-deploy and mid-run, S3 errors mid-run, and a simulator restart (instances come
back with their files but no processes: the job resumes on a new rental)."""

from __future__ import annotations

import json
import threading

import pytest

from gpubot.config import load_config_text
from gpubot.deps import EngineDeps
from gpubot.providers.vastai.provider import VastAIProvider
from gpubot.remote import parsing
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from gpubot.wiring import build_engine_deps
from tests.faults.conftest import (
    FAULT_TEMPLATES,
    TERMINAL,
    LiveMonitor,
    assert_clean,
    inline_tick,
    instances_of,
    launch,
    sim_clock,
    thread_texts,
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


def _restart_simulator(engine: EngineDeps, sim: SimServer, job_id: str) -> list[str]:
    """Stop the simulator (a tick meanwhile sees a failed listing and marks nothing gone) and
    start it again on the same home and port: the instance comes back with its files and no
    processes, as after a host reboot. Returns the complete checkpoints left on its disk."""
    port = int(sim.url.rsplit(":", 1)[1])
    [row] = instances_of(engine.sessions, job_id)
    sim.stop()
    report = inline_tick(engine)
    assert not report.listed_ok
    [row] = instances_of(engine.sessions, job_id)
    assert row.destroyed_at is None and row.provider_status != "gone"
    ckpt_root = sim.home / "sim" / "instances" / str(row.provider_id) / "root"
    files = [
        str(p.relative_to(d)) for d in ckpt_root.rglob("checkpoints") if d.is_dir()
        for p in d.rglob("*") if p.is_file()
    ]
    complete = parsing.newest_complete_checkpoint(files)
    sim.port = port
    sim.start()
    return [complete] if complete else []


def test_simulator_restart_mid_run_resumes_from_the_newest_checkpoint(
    engine: EngineDeps, sim: SimServer, s3_store: S3Store, live_monitor: LiveMonitor
) -> None:
    # given a running job that has backed up a checkpoint
    job_id = launch(engine, "trainx steps=400 step_seconds=0.05 checkpoint_every=20")
    wait_for(engine.sessions, job_id,
             until=lambda j: j.state == "running" and bool(j.checkpoint_key),
             tick=lambda: inline_tick(engine), timeout_s=120)
    # when the simulator restarts (its instances keep their files, lose their processes)
    [newest] = _restart_simulator(engine, sim, job_id)
    job = wait_for(engine.sessions, job_id, until=lambda j: j.state in TERMINAL,
                   tick=lambda: inline_tick(engine), timeout_s=180)
    # then the lost work is treated like a lost instance: destroyed, re-rented, resumed from
    # the newest complete checkpoint the first rental wrote, and the job succeeds
    out = assert_clean(engine.sessions, sim, job_id, monitor=live_monitor, attempts=2)
    assert job.checkpoint_key and out.job.state == "succeeded"
    assert "process is gone" in out.thread, out.thread
    assert f"Resumed from checkpoint {newest}" in out.thread, out.thread
    [metrics_key] = [o.key for o in s3_store.list(f"jobs/{job_id}/results/")
                     if o.key.endswith("metrics.json")]
    metrics = json.loads(s3_store.get_bytes(metrics_key))
    assert metrics["resumed_from"] and metrics["resumed_from"].endswith(f"/{newest}")
    assert metrics["steps"] == 400


NO_CHECKPOINT_TEMPLATES = FAULT_TEMPLATES + """
[templates.plain]
description = "Writes no checkpoints."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "builtin:train"
run = "python3 train.py"

[templates.plain.params.steps]
type = "int"
default = 400

[templates.plain.params.step_seconds]
type = "float"
default = 0.05

[templates.plain.resources]
gpu_names = ["RTX 4090", "RTX 3090"]
min_gpu_ram_gb = 16
min_reliability = 0.9
interruptible = "no"
checkpoints = false
"""


def test_simulator_restart_without_checkpoints_restarts_from_scratch(
    engine: EngineDeps, sim: SimServer, s3_store: S3Store, live_monitor: LiveMonitor
) -> None:
    # given a running job of a template without checkpoints
    deps = build_engine_deps(
        engine.settings,
        config=load_config_text(NO_CHECKPOINT_TEMPLATES, name="faults-plain.toml"),
        provider=VastAIProvider(api_key=sim.api_key, server_url=sim.url),
        store=s3_store,
        clock=sim_clock(sim),
    )
    job_id = launch(deps, "plain")
    wait_for(deps.sessions, job_id,
             until=lambda j: j.state == "running" and int((j.progress or {}).get("step", 0)) > 0,
             tick=lambda: inline_tick(deps), timeout_s=120)
    # when the simulator restarts
    _restart_simulator(deps, sim, job_id)
    wait_for(deps.sessions, job_id, until=lambda j: j.state in TERMINAL,
             tick=lambda: inline_tick(deps), timeout_s=180)
    # then the job ran again from scratch on a second rental, and the thread says why
    out = assert_clean(deps.sessions, sim, job_id, monitor=live_monitor, attempts=2)
    assert "from scratch" in thread_texts(deps.sessions, job_id), out.thread
    assert "Resumed from checkpoint" not in out.thread
    [metrics_key] = [o.key for o in s3_store.list(f"jobs/{job_id}/results/")
                     if o.key.endswith("metrics.json")]
    metrics = json.loads(s3_store.get_bytes(metrics_key))
    assert metrics["resumed_from"] is None and metrics["steps"] == 400


def test_restart_after_max_attempts_fails_with_the_reason(
    engine: EngineDeps, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    # given a job on its last allowed rental (max_attempts = 3)
    job_id = launch(engine, "trainx steps=400 step_seconds=0.05 checkpoint_every=20")
    wait_for(engine.sessions, job_id, until=lambda j: j.state == "running",
             tick=lambda: inline_tick(engine), timeout_s=120)
    from gpubot.db.engine import session_scope
    from gpubot.db.tables import JobRow

    with session_scope(engine.sessions) as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        row.attempts = engine.config.engine.max_attempts
    # when the simulator restarts
    _restart_simulator(engine, sim, job_id)
    job = wait_for(engine.sessions, job_id, until=lambda j: j.state in TERMINAL,
                   tick=lambda: inline_tick(engine), timeout_s=120)
    # then it fails (no further rental), saying the process vanished, and nothing leaks
    out = assert_clean(engine.sessions, sim, job_id, monitor=live_monitor,
                       states=frozenset({"failed"}))
    assert "process is gone" in job.reason and "limit 3" in job.reason, job.reason
    assert len([r for r in out.rows if r.provider_id]) == 1
