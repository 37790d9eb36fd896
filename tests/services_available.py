"""Availability checks for the real services tests use.

Under ``CI=true`` a missing service is a failure, never a skip: CI must prove the real thing.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

POSTGRES_URL = os.environ.get(
    "GPUBOT_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
LEASE_KEY = "gpubot-test:redis-db:{db}"
"""Keys in Redis database 0 naming the pid of the test process that holds database ``db``."""
_TEST_DBS = range(12, 0, -1)
"""Databases test processes lease; 13-15 are the benchmarks' (bench/), 0 holds the leases."""

_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redis_db() -> int:
    """A Redis database (1-12) this test process holds alone, for as long as it lives.

    Every test process (each pytest-xdist worker, and every pytest run started on the machine
    at the same time) leases its own database: it writes its pid under ``LEASE_KEY`` in
    database 0, taking a free slot or one whose holder is dead (compare-and-set, so two
    processes never take the same slot), and empties it. Fixed numbering per xdist worker let
    two pytest runs on one machine flush and consume each other's queues (tests then failed
    with jobs "stuck in queued"). Without a reachable Redis the per-worker number is used;
    the tests that need Redis fail or skip through :func:`require_redis` anyway.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = "".join(ch for ch in worker if ch.isdigit()) or "0"
    fallback = 12 - (int(digits) % 8)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=0, socket_timeout=2.0)
        claim = client.register_script(_CLAIM)
        me = str(os.getpid())
        for db in _TEST_DBS:
            key = LEASE_KEY.format(db=db)
            holder = client.get(key)
            if holder is not None and holder.decode() != me and _pid_alive(int(holder)):
                continue
            if claim(keys=[key], args=[me, "" if holder is None else holder.decode()]):
                # Whatever a dead holder left (queues, pace keys) is not this run's.
                redis.Redis(host="127.0.0.1", port=6379, db=db, socket_timeout=2.0).flushdb()
                return db
    except Exception:  # noqa: BLE001 - no Redis here: the fixed numbering is as good as any
        return fallback
    raise RuntimeError(
        f"all Redis test databases {_TEST_DBS.stop + 1}-{_TEST_DBS.start} are held by live "
        "test processes; wait for other pytest runs to end"
    )


REDIS_URL = os.environ.get("GPUBOT_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{_redis_db()}")
SSHD_PATH = shutil.which("sshd") or "/usr/sbin/sshd"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(available: bool, what: str) -> None:
    """Skip the calling test when ``what`` is missing, or fail under CI=true."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available", pytrace=False)
    pytest.skip(f"{what} not available")


def require_postgres() -> str:
    require(_port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")
    return POSTGRES_URL


def require_redis() -> str:
    require(_port_open("127.0.0.1", 6379), "Redis on 127.0.0.1:6379")
    return REDIS_URL


def require_sshd() -> str:
    require(os.path.exists(SSHD_PATH), f"OpenSSH sshd at {SSHD_PATH}")
    return SSHD_PATH
