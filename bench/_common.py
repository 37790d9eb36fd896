"""Helpers shared by the bench scripts: machine facts, tables, signing, throwaway databases.

Not a benchmark itself. Every script puts the repository root on ``sys.path`` through
:func:`setup` so that ``python bench/<name>.py`` works from anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "GPUBOT_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
"""A PostgreSQL URL the bench may use to CREATE/DROP its own throwaway databases."""


def setup() -> None:
    """Repo root on sys.path, no proxies (everything is on 127.0.0.1), quiet logs."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        os.environ.pop(name, None)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    import logging

    logging.basicConfig(level=logging.ERROR)
    quiet()


def quiet() -> None:
    """Silence logging again (Alembic's migration env reconfigures it; werkzeug logs requests)."""
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    for name in ("werkzeug", "alembic", "gpubot", "bot", "slack_bolt", "slack_sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> str:
    cores = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    return (
        f"machine: {cpu_model()} | cores: {cores} (usable {usable}) | "
        f"Python {platform.python_version()} | {platform.system()} {platform.release()}"
    )


def print_header(title: str) -> None:
    print(f"== {title}")
    print(machine_facts())


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(pct / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fast_tmp_root() -> str | None:
    """/dev/shm when writable (SQLite without fsync cost, for benches that measure $ not
    time), else None (the default temp dir)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


# -- Slack request signing ------------------------------------------------------------------


def slack_headers(body: str, secret: str, *, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack sends with a request: v0 HMAC-SHA256 over ``v0:{ts}:{raw body}``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
    }


# -- PostgreSQL throwaway databases ---------------------------------------------------------


def pg_available() -> bool:
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


@contextmanager
def pg_database(prefix: str = "gpubot_bench") -> Iterator[str]:
    """Create a fresh database on the PostgreSQL server, yield its URL, drop it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
