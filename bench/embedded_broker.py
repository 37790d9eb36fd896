"""Embedded broker vs Redis: throughput and latency through real producer and worker processes.

For each broker: one real ``celery worker`` (solo pool) on the project's Celery configuration
(``tests/workers/broker_stress.py``), warmed up with one message, then

* **load**: 2 producer processes publish ``--messages`` tasks as fast as they can; throughput
  is messages / (last task run - first publish), latency is task start - publish, per message
  (queueing included);
* **idle**: 1 producer publishes ``--idle`` tasks one every 50 ms; latency as above (what a
  single early-tick kick or a beat entry waits).

Brokers: ``gpubotfs://`` (the embedded default, workers/embedded_broker.py), kombu's stock
``filesystem://`` (what gpubot used before; half-written files are counted as decode errors
and lost messages), kombu's ``sqla+sqlite://`` (the other embedded candidate; it polls once a
second) and Redis (``GPUBOT_BENCH_REDIS_URL``, default db 14 on 127.0.0.1; skipped if absent).
Each run has its own queue name and folders. Lost = ids never run; dup = ids run twice.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()

REDIS_URL = os.environ.get("GPUBOT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1.0):
            return True
    except OSError:
        return False


def _stats(store: Path, prefix: str) -> tuple[int, int, list[float], float, float]:
    with sqlite3.connect(store, timeout=30.0) as db:
        rows = db.execute(
            "SELECT msg_id, sent_at, got_at FROM seen WHERE msg_id LIKE ?", (f"{prefix}%",)
        ).fetchall()
    if not rows:
        return 0, 0, [], 0.0, 0.0
    ids = {r[0] for r in rows}
    lat = [r[2] - r[1] for r in rows]
    return len(rows), len(ids), lat, min(r[1] for r in rows), max(r[2] for r in rows)


def run(name: str, url: str | None, messages: int, idle: int, root: Path) -> list[object]:
    """One broker: warm-up, load, idle; one table row."""
    from gpubot.settings import Settings
    from tests.workers import broker_stress as bs

    tmp = Path(tempfile.mkdtemp(prefix=f"{name.split(':')[0]}-", dir=root))
    home = tmp / "home"
    Settings(GPUBOT_HOME=str(home)).ensure_home()
    if url and url.startswith("sqla+sqlite"):
        url = f"sqla+sqlite:///{tmp / 'broker.db'}"
    store = tmp / "store.db"
    bs.init_store(store)
    procs = bs.Processes(bs.env_for(home, store, f"bench-{uuid.uuid4().hex[:8]}", url), tmp)
    deadline = time.monotonic() + 900
    try:
        procs.start_worker("w0")
        procs.start_producer("warm", 1)
        procs.wait_producers(deadline)
        bs.wait_for(store, 1, deadline)
        procs.producers.clear()
        half = messages // 2
        procs.start_producer("load-a", half)
        procs.start_producer("load-b", messages - half)
        procs.wait_producers(deadline)
        procs.producers.clear()
        bs.wait_for(store, 1 + messages, min(deadline, time.monotonic() + 120))
        procs.start_producer("idle", idle, 0.05)
        procs.wait_producers(deadline)
        bs.wait_for(store, 1 + messages + idle, min(deadline, time.monotonic() + 30))
    finally:
        procs.stop()
    rows, distinct, lat, first, last = _stats(store, "load-")
    _, idle_distinct, idle_lat, _, _ = _stats(store, "idle-")
    span = max(last - first, 1e-9)
    return [
        name,
        f"{distinct / span:.0f}" if distinct else "-",
        f"{c.percentile(lat, 50) * 1000:.0f}" if lat else "-",
        f"{c.percentile(lat, 99) * 1000:.0f}" if lat else "-",
        f"{c.percentile(idle_lat, 50) * 1000:.0f}" if idle_lat else "-",
        f"{c.percentile(idle_lat, 99) * 1000:.0f}" if idle_lat else "-",
        messages - distinct + idle - idle_distinct,
        rows - distinct,
        sum("DecodeError" in line for line in procs.log_problems()),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="load phase messages")
    parser.add_argument("--idle", type=int, default=100, help="idle phase messages")
    parser.add_argument(
        "--brokers", default="gpubotfs,filesystem,sqla,redis", help="comma-separated subset"
    )
    args = parser.parse_args()
    c.print_header(
        f"embedded broker: {args.messages} msgs (2 producers, 1 worker), {args.idle} idle msgs"
    )
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    candidates: dict[str, str | None] = {
        "gpubotfs (default)": None,
        "filesystem (kombu)": "filesystem://",
        "sqla+sqlite (kombu)": "sqla+sqlite",
        "redis": REDIS_URL,
    }
    wanted = {b.strip() for b in args.brokers.split(",")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpubot-bench-broker-") as root:
        for name, url in candidates.items():
            if name.split(" ")[0].split("+")[0] not in wanted:
                continue
            if name == "redis" and not _redis_up():
                print("redis: not reachable on 127.0.0.1:6379, skipped")
                continue
            rows.append(run(name, url, args.messages, args.idle, Path(root)))
            print(f"  done: {name}", flush=True)
    print(
        c.table(
            ["broker", "msg/s", "load p50 ms", "load p99 ms", "idle p50 ms", "idle p99 ms",
             "lost", "dup", "decode errors"],
            rows,
        )
    )
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
