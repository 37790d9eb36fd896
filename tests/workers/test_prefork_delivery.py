"""A real prefork worker delivers the outbox even when every child's first task is a delivery.

Regression: ``workers.runtime.deliverer()`` read the module's EngineDeps without building them
and cached the answer. A prefork child whose first task was ``deliver_messages_task`` (no tick
had run in that child yet) cached "no Slack" and never delivered again: messages stayed queued
with 0 attempts while jobs ran on.

Here ``celery -A app.worker worker --pool=prefork --concurrency=3`` runs as a
subprocess on PostgreSQL (a fresh database) and Redis (a database of its own), with the
simulator as VAST_URL, moto as S3 and the Slack Web API fake as SLACK_API_URL. Messages are
queued in the outbox, then a burst of deliveries goes out before any tick, and more follow
until every child has run one. No tick is ever sent, so each child's first task is a delivery
(the worst case). Every message must reach Slack, and every child must have run deliveries
without error, within two ticks (``GPUBOT_TICK_SECONDS=10``, the default).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gpubot.config import load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import MessageRow
from gpubot.deps import EngineDeps
from gpubot.notify import outbox
from gpubot.providers.vastai.provider import VastAIProvider
from gpubot.settings import Settings
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from gpubot.wiring import build_engine_deps
from tests.fixtures.postgres import fresh_database
from tests.fixtures.slack_fake import SlackFake
from tests.services_available import require_redis
from tests.workers.conftest import BOT_TOKEN
from workers.celery_app import celery_config

REPO = Path(__file__).resolve().parents[2]
CHILDREN = 3
TICK_SECONDS = 10.0
SEND_EVERY_SECONDS = 0.5
CHANNELS = [f"CWORK{i:04d}" for i in range(8)]
DELIVER = "workers.tasks.deliver_messages_task"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """``postgresql+psycopg2://…/<fresh db>``; dropped afterwards."""
    with fresh_database("gpubot_workers") as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    """This test process's own Redis database (not flushed: each test uses its own queue)."""
    return require_redis()


@dataclass
class PreforkWorker:
    """A started prefork worker subprocess (its own process group) and its log."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    queue: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def settings(
    tmp_path: Path, sim: SimServer, s3_store: S3Store, pg_url: str
) -> Settings:
    return Settings(
        GPUBOT_HOME=str(tmp_path / "home"),
        GPUBOT_DATABASE_URL=pg_url,
        VAST_API_KEY=sim.api_key,
        VAST_URL=sim.url,
        GPUBOT_S3_BUCKET=s3_store.bucket,
        GPUBOT_TICK_SECONDS=TICK_SECONDS,
    )


@pytest.fixture
def engine(settings: Settings, sim: SimServer, s3_store: S3Store) -> EngineDeps:
    """The test's own EngineDeps (migrates the database; used to queue and read only)."""
    return build_engine_deps(
        settings,
        config=load_config_text("", name="empty.toml"),
        provider=VastAIProvider(api_key=sim.api_key, server_url=sim.url),
        store=s3_store,
    )


@pytest.fixture
def worker(
    tmp_path: Path, settings: Settings, redis_url: str, slack: SlackFake, engine: EngineDeps
) -> Iterator[PreforkWorker]:
    """``celery worker --pool=prefork --concurrency=3``; SIGKILLed (whole group) at teardown."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(("GPUBOT_", "PYTEST", "SLACK_"))
    }
    assert settings.vast_api_key is not None
    env.update(
        GPUBOT_HOME=str(settings.home),
        GPUBOT_DATABASE_URL=str(settings.database_url),
        GPUBOT_BROKER_URL=redis_url,
        GPUBOT_S3_BUCKET=str(settings.s3_bucket),
        GPUBOT_TICK_SECONDS=str(TICK_SECONDS),
        VAST_URL=settings.vast_url,
        VAST_API_KEY=settings.vast_api_key.get_secret_value(),
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_API_URL=slack.url,
        PYTHONPATH=str(REPO),
    )
    log_path = tmp_path / "worker.log"
    queue = f"gpubot-workers-test-{uuid.uuid4().hex[:8]}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "app.worker", "worker",
                "--pool=prefork", f"--concurrency={CHILDREN}", "--loglevel=INFO",
                "-n", f"{queue}@%h", "-Q", queue,
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = PreforkWorker(proc=proc, log_path=log_path, queue=queue)
    try:
        deadline = time.monotonic() + 20
        while " ready." not in started.log():
            assert proc.poll() is None, f"worker exited:\n{started.log()[-4000:]}"
            assert time.monotonic() < deadline, f"worker not ready:\n{started.log()[-4000:]}"
            time.sleep(0.05)  # polling the log, bounded by the deadline
        yield started
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _queue_messages(deps: EngineDeps) -> None:
    with session_scope(deps.sessions) as session:
        for channel in CHANNELS:
            outbox.post_parent(session, channel=channel, text=f"hello {channel}")


def _delivered(slack: SlackFake) -> set[str]:
    return {m.channel for c in CHANNELS for m in slack.top_level(c)}


def _undelivered_rows(deps: EngineDeps) -> int:
    """Outbox rows still dirty or without a Slack ``ts`` (the worker records it after the post)."""
    with session_scope(deps.sessions) as session:
        return sum(1 for r in session.scalars(select(MessageRow)) if r.dirty or not r.ts)


def _children_that_delivered(log: str) -> set[str]:
    pattern = rf"/(ForkPoolWorker-\d+)\] Task {re.escape(DELIVER)}\[[^\]]+\] succeeded"
    return set(re.findall(pattern, log))


def test_every_prefork_child_delivers_when_its_first_task_is_a_delivery(
    worker: PreforkWorker, engine: EngineDeps, slack: SlackFake, redis_url: str
) -> None:
    from celery import Celery

    # given messages in the outbox and a prefork worker that has run nothing yet
    _queue_messages(engine)
    client: Any = Celery("gpubot-workers-client")
    client.conf.update(celery_config(Settings(GPUBOT_BROKER_URL=redis_url)))

    def settled(log: str) -> bool:
        return (
            _delivered(slack) == set(CHANNELS)
            and _undelivered_rows(engine) == 0
            and len(_children_that_delivered(log)) == CHILDREN
        )

    try:
        # when deliveries arrive before any tick: a burst, then more until every child has
        # run one (children that start late still get a delivery as their first task)
        for _ in range(CHILDREN * 3):
            client.send_task(DELIVER, expires=10, queue=worker.queue)
        deadline = time.monotonic() + 2 * TICK_SECONDS
        next_send = time.monotonic() + SEND_EVERY_SECONDS
        while not settled(worker.log()) and time.monotonic() < deadline:
            assert worker.proc.poll() is None, f"worker exited:\n{worker.log()[-4000:]}"
            if time.monotonic() >= next_send:
                client.send_task(DELIVER, expires=10, queue=worker.queue)
                next_send += SEND_EVERY_SECONDS
            time.sleep(0.05)  # polling the Slack fake and the log, bounded by the deadline
    finally:
        client.close()

    # then every message reached Slack within two ticks, and the outbox is clean
    log = worker.log()
    missing = sorted(set(CHANNELS) - _delivered(slack))
    assert not missing, f"not delivered within two ticks: {missing}\n{log[-4000:]}"
    assert _undelivered_rows(engine) == 0
    # every child ran deliveries, none failed, and no secret reached the log
    assert len(_children_that_delivered(log)) == CHILDREN, log[-4000:]
    assert "raised unexpected" not in log, log[-4000:]
    assert BOT_TOKEN not in log
