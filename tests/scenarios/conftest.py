"""End-to-end fixtures: the simulator over HTTP with real SSH, moto's S3 server, an engine
wired exactly as in production (VastAIProvider on the official SDK, paramiko, boto3), and a
real Celery worker on the Redis server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from gpubot.config import BotConfig, load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow
from gpubot.deps import EngineDeps
from gpubot.providers.vastai.provider import VastAIProvider
from gpubot.settings import Settings
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from gpubot.wiring import build_engine_deps
from tests.services_available import require_redis
from workers import runtime
from workers.celery_app import app, celery_config
from workers.tasks import ANSWERS_QUEUE

TEST_TEMPLATES = """
[templates.trainx]
description = "The example training job with test knobs."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "builtin:train"
setup = ['python3 -c "import numpy"']
run = "python3 train.py"
target_metric = "eval_loss"

[templates.trainx.params.steps]
type = "int"
default = 120
min = 1
max = 100000

[templates.trainx.params.lr]
type = "float"
default = 0.05

[templates.trainx.params.checkpoint_every]
type = "int"
default = 20

[templates.trainx.params.step_seconds]
type = "float"
default = 0.03
min = 0
max = 5

[templates.trainx.params.fail_at_step]
type = "int"
default = 1000000
min = 1
max = 1000000

[templates.trainx.resources]
gpu_names = ["RTX 4090", "RTX 3090"]
min_gpu_ram_gb = 16
min_reliability = 0.9
interruptible = "yes"
checkpoints = true
expected_hours = 0.5

[templates.badsetup]
description = "A template whose setup fails."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "builtin:train"
setup = ["echo installing; echo 'ERROR: could not resolve dependencies' >&2; exit 3"]
run = "python3 train.py"

[templates.badsetup.resources]
interruptible = "no"
min_reliability = 0.9

[engine]
max_attempts = 3
destroy_deadline_minutes = 5
"""


def test_config() -> BotConfig:
    return load_config_text(TEST_TEMPLATES, name="test.toml")


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimServer]:
    server = SimServer(home=tmp_path / "sim", seed=7, speed=10.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sim_clock(server: SimServer) -> Callable[[], datetime]:
    """The engine runs on the simulator's clock, so billing and deadlines agree with it."""
    return lambda: datetime.fromtimestamp(server.engine.now(), UTC)


def make_engine(
    home: Path,
    sim: SimServer,
    store: S3Store,
    config: BotConfig,
    monkeypatch: pytest.MonkeyPatch,
    *,
    tick_seconds: float = 0.5,
) -> EngineDeps:
    """An engine wired as in production (official SDK, paramiko, boto3) on ``sim``'s clock."""
    monkeypatch.setenv("GPUBOT_HOME", str(home))
    settings = Settings(
        GPUBOT_HOME=str(home),
        VAST_API_KEY=sim.api_key,
        VAST_URL=sim.url,
        GPUBOT_S3_BUCKET=store.bucket,
        GPUBOT_TICK_SECONDS=tick_seconds,
    )
    return build_engine_deps(
        settings,
        config=config,
        provider=VastAIProvider(api_key=sim.api_key, server_url=sim.url),
        store=store,
        clock=sim_clock(sim),
    )


@pytest.fixture
def engine(
    tmp_path: Path, sim: SimServer, s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> EngineDeps:
    return make_engine(tmp_path / "home", sim, s3_store, test_config(), monkeypatch)


@pytest.fixture
def redis_worker(engine: EngineDeps) -> Iterator[None]:
    """A real Celery worker (solo pool) consuming from the Redis server, running ``engine``."""
    url = require_redis()
    import redis

    redis.Redis.from_url(url).flushdb()
    previous = dict(app.conf)
    app.conf.update(
        celery_config(Settings(GPUBOT_BROKER_URL=url, GPUBOT_HOME=str(engine.settings.home)))
    )
    runtime.install(engine)
    # The queues named, always: Celery keeps a worker's queue selection on the app
    # (``app.amqp.queues.select``), so a worker started earlier in this process with
    # ``queues=["answers"]`` would otherwise leave this one consuming answers only, and the
    # ticks would never run.
    queues = [app.conf.task_default_queue, ANSWERS_QUEUE]
    with start_worker(app, pool="solo", queues=queues, perform_ping_check=False,
                      shutdown_timeout=30):
        yield
    app.conf.update(previous)


def job_row(deps: EngineDeps, job_id: str) -> JobRow:
    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        session.expunge(job)
        return job


def drive(
    deps: EngineDeps,
    job_id: str,
    *,
    until: Callable[[JobRow], bool],
    tick: Callable[[], Any],
    timeout_s: float = 90.0,
    on_poll: Callable[[JobRow], None] | None = None,
) -> JobRow:
    """Call ``tick`` until ``until(job)`` holds; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        tick()
        job = job_row(deps, job_id)
        if on_poll is not None:
            on_poll(job)
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stuck in {job.state}: {job.phase_detail}")
        time.sleep(0.05)  # pacing between ticks, bounded by the deadline
