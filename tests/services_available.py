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
def _redis_db() -> int:
    """One Redis database per pytest-xdist worker (gw0 → 15, gw1 → 14, ...), so parallel
    workers never flush or consume each other's queues."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = "".join(ch for ch in worker if ch.isdigit()) or "0"
    return 15 - (int(digits) % 8)


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
