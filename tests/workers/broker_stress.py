"""A broker stress harness: real producer and Celery worker processes on one broker URL.

Used by ``tests/workers/test_embedded_broker.py`` and ``bench/embedded_broker.py``.

* The Celery app (``app``, for ``celery -A tests.workers.broker_stress:app worker``) is built
  from the project's own ``workers.celery_app.celery_config`` for the broker named by
  ``STRESS_BROKER_URL`` (unset: gpubot's embedded default in ``STRESS_HOME``), minus the beat
  schedule, on a queue of its own (``STRESS_QUEUE``).
* Its one task, ``record(msg_id, sent_at)``, inserts ``(msg_id, pid, sent_at, got_at)`` into
  the SQLite file ``STRESS_STORE`` (WAL, 30 s busy timeout): the store counts every delivery,
  so a lost message is a missing id and a duplicate is an id seen twice.
* ``python -m tests.workers.broker_stress produce PREFIX COUNT [PACE_S]`` publishes ``COUNT``
  messages with ids ``PREFIX-0…`` (``PACE_S`` > 0: one every ``PACE_S`` seconds, for idle
  latency) and exits 0.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from gpubot.settings import Settings
from workers.celery_app import celery_config

REPO = Path(__file__).resolve().parents[2]
DECODE_ERROR_MARKERS = ("JSONDecodeError", "DecodeError", "Traceback", "undecodable")


def _make_app() -> Celery:
    home = os.environ.get("STRESS_HOME", "/nonexistent-stress-home")
    url = os.environ.get("STRESS_BROKER_URL") or None
    if url == "filesystem://":
        # kombu's own filesystem transport, configured as gpubot configured it before gpubotfs.
        config = celery_config(Settings(GPUBOT_HOME=home))
        config["broker_url"] = url
        config["broker_transport_options"]["store_processed"] = False
    else:
        config = celery_config(Settings(GPUBOT_HOME=home, GPUBOT_BROKER_URL=url))
    config["beat_schedule"] = {}
    config["task_default_queue"] = os.environ.get("STRESS_QUEUE", "stress")
    if url and url.startswith("sqla+"):
        # kombu's sqla transport passes its transport options to create_engine().
        config["broker_transport_options"] = {"connect_args": {"timeout": 30}}
    app = Celery("broker_stress")
    app.conf.update(config)
    return app


app = _make_app()
_store: sqlite3.Connection | None = None


def init_store(path: Path) -> None:
    """Create the delivery table in the SQLite file ``path`` (WAL mode)."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS seen (msg_id TEXT NOT NULL, pid INTEGER NOT NULL,"
            " sent_at REAL NOT NULL, got_at REAL NOT NULL)"
        )


@app.task(name="stress.record")
def record(msg_id: str, sent_at: float) -> None:
    """Insert one delivery row (one per execution, duplicates included)."""
    global _store
    got_at = time.time()
    if _store is None:
        _store = sqlite3.connect(os.environ["STRESS_STORE"], timeout=30.0)
        _store.execute("PRAGMA synchronous=NORMAL")
    _store.execute("INSERT INTO seen VALUES (?, ?, ?, ?)", (msg_id, os.getpid(), sent_at, got_at))
    _store.commit()


def produce(prefix: str, count: int, pace_s: float = 0.0) -> None:
    """Publish ``count`` ``record`` messages on one connection."""
    with app.producer_or_acquire() as producer:
        for i in range(count):
            record.apply_async((f"{prefix}-{i}", time.time()), producer=producer)
            if pace_s > 0:
                time.sleep(pace_s)  # pacing the load, not waiting for state


@dataclass
class Counts:
    """What the store saw."""

    rows: int
    distinct: int
    latencies_s: list[float] = field(default_factory=list)
    first_sent: float = 0.0
    last_got: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.rows - self.distinct


def read_counts(store: Path, *, with_latencies: bool = False) -> Counts:
    """Rows, distinct ids (and, on request, per-row latency and the time span) in ``store``."""
    with sqlite3.connect(store, timeout=30.0) as db:
        rows, distinct, first, last = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT msg_id), MIN(sent_at), MAX(got_at) FROM seen"
        ).fetchone()
        lat = (
            [r[0] for r in db.execute("SELECT got_at - sent_at FROM seen")]
            if with_latencies
            else []
        )
    return Counts(int(rows), int(distinct), lat, float(first or 0.0), float(last or 0.0))


class Processes:
    """Producer and worker subprocesses sharing one environment; logs in ``log_dir``."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            self.env.pop(name, None)
        self.log_dir = log_dir
        self.workers: list[subprocess.Popen[bytes]] = []
        self.producers: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def start_worker(self, name: str) -> None:
        """A real ``celery worker`` (solo pool) consuming the stress queue."""
        self.workers.append(
            self._spawn(
                name,
                [sys.executable, "-m", "celery", "-A", "tests.workers.broker_stress:app",
                 "worker", "--pool=solo", "--loglevel=WARNING", "-n", f"{name}@%h"],
            )
        )

    def start_producer(self, prefix: str, count: int, pace_s: float = 0.0) -> None:
        self.producers.append(
            self._spawn(
                f"producer-{prefix}",
                [sys.executable, "-m", "tests.workers.broker_stress", "produce", prefix,
                 str(count), str(pace_s)],
            )
        )

    def wait_producers(self, deadline: float) -> list[int]:
        """Exit codes of the producers (each waited until ``deadline``)."""
        return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in self.producers]

    def stop(self) -> None:
        """Warm-stop the workers (SIGTERM, then SIGKILL after 20 s) and reap everything."""
        for proc in self.workers + self.producers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers + self.producers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_problems(self) -> list[str]:
        """Log lines that name a decode error or a traceback, from every process."""
        bad: list[str] = []
        for log in sorted(self.log_dir.glob("*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if any(marker in line for marker in DECODE_ERROR_MARKERS):
                    bad.append(f"{log.name}: {line}")
        return bad


def wait_for(store: Path, expected: int, deadline: float) -> Counts:
    """Poll ``store`` until ``expected`` distinct ids are seen or ``deadline``; the counts."""
    counts = read_counts(store)
    while counts.distinct < expected and time.monotonic() < deadline:
        time.sleep(0.2)  # polling interval with a deadline
        counts = read_counts(store)
    return counts


def main(argv: list[str]) -> int:
    """``produce PREFIX COUNT [PACE_S]``."""
    if len(argv) >= 3 and argv[0] == "produce":
        produce(argv[1], int(argv[2]), float(argv[3]) if len(argv) > 3 else 0.0)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


def env_for(
    home: Path, store: Path, queue: str, broker_url: str | None = None
) -> dict[str, Any]:
    """The environment variables the harness reads."""
    env = {"STRESS_HOME": str(home), "STRESS_STORE": str(store), "STRESS_QUEUE": queue}
    if broker_url:
        env["STRESS_BROKER_URL"] = broker_url
    return env


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
