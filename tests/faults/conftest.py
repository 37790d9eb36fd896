"""Fault-suite fixtures: a fresh PostgreSQL database per test, the simulator over HTTP with
real SSH, moto's S3 server, real Celery worker *subprocesses* on Redis, and the invariant
checks every fault test ends with (no leak, no duplicate rental, ledger = billing, user told).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gpubot.chat.launch import plan_launch, submit
from gpubot.commands.grammar import parse_command
from gpubot.db.engine import make_engine, make_sessionmaker, session_scope
from gpubot.db.tables import InstanceRow, JobRow, LedgerEntryRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.engine.steps import advance_job
from gpubot.engine.tick import TickReport, reconcile_tick
from gpubot.providers.vastai.provider import VastAIProvider
from gpubot.settings import Settings
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from gpubot.wiring import build_engine_deps
from tests.fixtures.postgres import fresh_database
from tests.scenarios.conftest import TEST_TEMPLATES
from tests.services_available import require_redis

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}
FAULT_TEMPLATES = TEST_TEMPLATES.replace(
    "destroy_deadline_minutes = 5", "destroy_deadline_minutes = 1"
)
CENT = Decimal("0.01")


# -- PostgreSQL: a fresh database per test ---------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """``postgresql+psycopg2://…/<fresh db>``; dropped afterwards."""
    with fresh_database("gpubot_fault") as url:
        yield url


# -- the simulator ---------------------------------------------------------------------------


@pytest.fixture
def sim_speed() -> float:
    return 10.0


@pytest.fixture
def sim(tmp_path: Path, sim_speed: float) -> Iterator[SimServer]:
    server = SimServer(home=tmp_path / "sim", seed=7, speed=sim_speed)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sim_clock(server: SimServer) -> Callable[[], datetime]:
    return lambda: datetime.fromtimestamp(server.engine.now(), UTC)


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "gpubot.toml"
    path.write_text(FAULT_TEMPLATES)
    return path


# -- an in-process engine (inline ticks) on PostgreSQL --------------------------------------


@pytest.fixture
def engine(
    tmp_path: Path,
    sim: SimServer,
    s3_store: S3Store,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> EngineDeps:
    """Production wiring (official SDK, paramiko, boto3, PostgreSQL) on the simulator's clock."""
    from gpubot.config import load_config_text

    monkeypatch.setenv("GPUBOT_HOME", str(tmp_path / "home"))
    settings = Settings(
        GPUBOT_HOME=str(tmp_path / "home"),
        GPUBOT_DATABASE_URL=pg_url,
        VAST_API_KEY=sim.api_key,
        VAST_URL=sim.url,
        GPUBOT_S3_BUCKET=s3_store.bucket,
        GPUBOT_TICK_SECONDS=0.5,
    )
    return build_engine_deps(
        settings,
        config=load_config_text(FAULT_TEMPLATES, name="faults.toml"),
        provider=VastAIProvider(api_key=sim.api_key, server_url=sim.url),
        store=s3_store,
        clock=sim_clock(sim),
    )


def inline_tick(deps: EngineDeps, *, sweep: bool = False) -> TickReport:
    return reconcile_tick(
        deps, dispatch=lambda job_id, token: advance_job(deps, job_id, token), sweep=sweep
    )


def launch(deps: EngineDeps, text: str) -> str:
    plan = plan_launch(deps, parse_command(text, deps.config))
    job_id, created = submit(
        deps, plan, requester="U1", channel="C1", request_key=uuid.uuid4().hex
    )
    assert created
    return job_id


# -- reading state ---------------------------------------------------------------------------


def job_row(sessions: sessionmaker[Session], job_id: str) -> JobRow:
    with session_scope(sessions) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        session.expunge(job)
        return job


def instances_of(sessions: sessionmaker[Session], job_id: str) -> list[InstanceRow]:
    with session_scope(sessions) as session:
        rows = list(
            session.scalars(
                select(InstanceRow).where(InstanceRow.job_id == job_id).order_by(InstanceRow.id)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def thread_texts(sessions: sessionmaker[Session], job_id: str) -> str:
    with session_scope(sessions) as session:
        return "\n".join(
            m.text
            for m in session.scalars(
                select(MessageRow).where(MessageRow.job_id == job_id).order_by(MessageRow.id)
            )
        )


def wait_for(
    sessions: sessionmaker[Session],
    job_id: str,
    until: Callable[[JobRow], bool],
    *,
    tick: Callable[[], Any],
    timeout_s: float = 90.0,
    on_poll: Callable[[JobRow], None] | None = None,
    pace_s: float = 0.05,
) -> JobRow:
    """Call ``tick`` and poll until ``until(job)``; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        tick()
        job = job_row(sessions, job_id)
        if on_poll is not None:
            on_poll(job)
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} stuck in {job.state}: {job.phase_detail} / {job.reason}"
            )
        time.sleep(pace_s)  # pacing between polls, bounded by the deadline


# -- invariants ------------------------------------------------------------------------------


class LiveMonitor:
    """Polls the simulator's live instances in the background: the most instances any one
    job label had at the same time (a duplicate rental shows up as 2)."""

    def __init__(self, server: SimServer, interval_s: float = 0.05) -> None:
        self.server = server
        self.interval_s = interval_s
        self.max_live: dict[str, int] = {}
        self.seen_ids: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="live-monitor")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                engine = self.server.engine
                if engine is None:
                    continue
                with engine._lock:
                    live = [
                        (i.label or "", i.id)
                        for i in engine.instances.values()
                        if i.destroyed_at is None
                    ]
            except Exception:  # noqa: BLE001 - the server may be restarting
                continue
            counts: dict[str, int] = {}
            for label, iid in live:
                counts[label] = counts.get(label, 0) + 1
                self.seen_ids.setdefault(label, set()).add(iid)
            for label, n in counts.items():
                self.max_live[label] = max(self.max_live.get(label, 0), n)

    def __enter__(self) -> LiveMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def live_monitor(sim: SimServer) -> Iterator[LiveMonitor]:
    with LiveMonitor(sim) as monitor:
        yield monitor


@dataclass
class Outcome:
    job: JobRow
    rows: list[InstanceRow] = field(default_factory=list)
    thread: str = ""


def assert_clean(
    sessions: sessionmaker[Session],
    server: SimServer,
    job_id: str,
    *,
    monitor: LiveMonitor | None = None,
    attempts: int | None = None,
    tolerance_usd: Decimal = CENT,
    states: frozenset[str] = frozenset({"succeeded"}),
) -> Outcome:
    """The four invariants of the fault suite, for one finished job."""
    job = job_row(sessions, job_id)
    assert job.state in states, f"{job.state}: {job.reason}"
    if job.state == "failed":
        assert job.reason.strip(), "a failed job must say why"
    # 0 leaked instances: nothing live in the simulator, every rental verified destroyed.
    live = server.control.state()["instances"]
    assert live == [], f"leaked instances: {[(i['id'], i['label']) for i in live]}"
    rows = instances_of(sessions, job_id)
    rented = [r for r in rows if r.provider_id]
    assert rented, "the job never rented anything"
    for row in rented:
        assert row.destroyed_at is not None, f"instance {row.provider_id} not verified destroyed"
    # 0 duplicate rentals: no provider id twice; at most one live instance per job at a time.
    ids = [r.provider_id for r in rented]
    assert len(ids) == len(set(ids)), f"two rows share a provider id: {ids}"
    label = rented[0].label
    sim_ids = {
        int(i) for i, bill in server.control.billing()["instances"].items()
    }
    ours = {int(r.provider_id) for r in rented if r.provider_id}
    assert ours <= sim_ids
    if monitor is not None:
        assert monitor.max_live.get(label, 0) <= 1, f"{monitor.max_live[label]} live at once"
        assert monitor.seen_ids.get(label, set()) <= ours, (
            f"the simulator saw rentals {monitor.seen_ids.get(label)} we never recorded {ours}"
        )
    if attempts is not None:
        assert job.attempts == attempts
        assert len(rented) == attempts
    # a consistent ledger: per instance, within tolerance of the simulator's billing.
    with session_scope(sessions) as session:
        for row in rented:
            total = session.scalar(
                select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
                    LedgerEntryRow.instance_id == row.id
                )
            )
            billed = Decimal(server.control.billing(row.provider_id)["total_usd"])
            assert abs(Decimal(str(total)) - billed) <= tolerance_usd, (
                f"instance {row.provider_id}: ledger {total} vs billed {billed}"
            )
    # the user is told.
    thread = thread_texts(sessions, job_id)
    if job.state == "succeeded":
        assert "succeeded" in thread and "Final cost" in thread, thread
    else:
        assert job.id in thread and ("failed" in thread or "cancelled" in thread), thread
        assert job.reason.splitlines()[0][:60] in thread, thread
    return Outcome(job=job, rows=rows, thread=thread)


# -- real Celery worker subprocesses ---------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    """This pytest-xdist worker's own Redis database, emptied first.

    One database per xdist worker (see tests/services_available.py): tests of one worker run
    one at a time, so flushing it never pulls the queue from under a test running in parallel
    (a shared database here let modules on two xdist workers flush each other's queues).
    ``GPUBOT_FAULTS_REDIS_DB`` picks another database by hand.
    """
    import redis

    url = require_redis()
    if override := os.environ.get("GPUBOT_FAULTS_REDIS_DB"):
        url = url.rsplit("/", 1)[0] + "/" + override
    redis.Redis.from_url(url).flushdb()
    return url


class Worker:
    """``celery -A app.worker worker --pool=prefork`` in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str, concurrency: int = 1):
        self.env = env
        self.log_path = log_path
        self.name = name
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> Worker:
        log = self.log_path.open("ab")
        start_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "app.worker", "worker",
                "--pool=prefork", f"--concurrency={self.concurrency}", "--loglevel=INFO",
                "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while b" ready." not in self.log_path.read_bytes()[start_offset:]:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} not ready:\n{self.log_tail()}")
            time.sleep(0.05)  # polling the log, bounded by the deadline
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children), no warning."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()
        self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Cluster:
    """Everything a worker-subprocess test needs: env, the test's own EngineDeps (launching
    and reading only; never advancing jobs), a Celery client and the workers."""

    env: dict[str, str]
    deps: EngineDeps
    client: Any
    tmp_path: Path
    workers: list[Worker] = field(default_factory=list)
    min_tick_interval_s: float = 0.25
    _last_tick: float = 0.0

    def worker(self, name: str, concurrency: int = 1) -> Worker:
        w = Worker(self.env, self.tmp_path / f"{name}.log", name, concurrency)
        self.workers.append(w)
        return w.start()

    def tick(self) -> None:
        """What beat does: enqueue a reconcile tick (expiring, so a dead worker's backlog
        never piles up); at most one per ``min_tick_interval_s``."""
        now = time.monotonic()
        if now - self._last_tick < self.min_tick_interval_s:
            return
        self._last_tick = now
        self.client.send_task("workers.tasks.reconcile_tick_task", expires=3)

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.deps.sessions


@pytest.fixture
def cluster(
    tmp_path: Path,
    sim: SimServer,
    s3_store: S3Store,
    s3_env: str,
    pg_url: str,
    redis_url: str,
) -> Iterator[Cluster]:
    from celery import Celery

    from gpubot.config import load_config_text
    from workers.celery_app import celery_config

    home = tmp_path / "home"
    config_path = write_config(tmp_path)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(("GPUBOT_", "PYTEST"))
    }
    env.update(
        GPUBOT_HOME=str(home),
        GPUBOT_DATABASE_URL=pg_url,
        GPUBOT_BROKER_URL=redis_url,
        GPUBOT_CONFIG=str(config_path),
        GPUBOT_S3_BUCKET=s3_store.bucket,
        GPUBOT_TICK_SECONDS="0.5",
        GPUBOT_LOCK_TTL_SECONDS=os.environ.get("GPUBOT_FAULTS_LOCK_TTL_SECONDS", "4"),
        VAST_URL=sim.url,
        VAST_API_KEY=sim.api_key,
        PYTHONPATH=str(REPO),
    )
    settings = Settings(
        GPUBOT_HOME=str(home),
        GPUBOT_DATABASE_URL=pg_url,
        VAST_API_KEY=sim.api_key,
        VAST_URL=sim.url,
        GPUBOT_S3_BUCKET=s3_store.bucket,
        GPUBOT_TICK_SECONDS=0.5,
    )
    deps = build_engine_deps(
        settings,
        config=load_config_text(FAULT_TEMPLATES, name="faults.toml"),
        provider=VastAIProvider(api_key=sim.api_key, server_url=sim.url),
        store=s3_store,
    )
    client = Celery("gpubot-faults-client")
    client.conf.update(celery_config(Settings(GPUBOT_BROKER_URL=redis_url)))
    c = Cluster(env=env, deps=deps, client=client, tmp_path=tmp_path)
    try:
        yield c
    finally:
        for w in c.workers:
            w.kill()  # all state is in the database: no need for a warm shutdown
        client.close()


def fresh_sessions(url: str) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(url))
