"""CPU time of one reconcile tick at 1000 live jobs, on SQLite and PostgreSQL.

Setup: N jobs in ``running`` (each with the default $20 job budget, as ``[budgets]
job_default_usd`` gives every launch) and one instance row each; a ``FakeProvider`` lists N
running observations. The tick is the real ``reconcile_tick``: list, observe and meter (two
ledger entries per instance: compute + storage), budget enforcement (job, user, channel and
team scopes), claim due jobs; dispatch is a no-op. Between ticks (not timed) every job's lock
is released and it is made due again, so each timed tick does the same work; the fake clock
moves 10 s per tick.

Measured with ``time.process_time()`` (CPU of this process: SQLAlchemy, the driver, SQLite
itself; PostgreSQL's server CPU is *not* included, so its wall time is shown too). Two
points: a fresh database, and after ``--history-hours`` of ledger history per job (one entry
per kind per tick, as the tick writes them), since budget enforcement sums the ledger.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()


def build_deps(db_url: str, home: Path, n: int) -> Any:
    from gpubot.config import load_config
    from gpubot.db.engine import make_engine, make_sessionmaker, upgrade_to_head
    from gpubot.deps import EngineDeps
    from gpubot.settings import Settings
    from gpubot.testing.fakes import FakeClock, FakeProvider, MemoryStore, observation, refuse_ssh

    home.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(db_url)
    provider = FakeProvider()
    for i in range(n):
        provider.add(observation(str(100000 + i), label=f"gpubot:j{i:05d}",
                                 price_per_hour_usd="0.40", gpu_util_pct=90.0))
    return EngineDeps(
        settings=Settings(GPUBOT_HOME=home, GPUBOT_DATABASE_URL=db_url),
        config=load_config(None),
        sessions=make_sessionmaker(make_engine(db_url)),
        provider=provider,
        store=MemoryStore(),
        connect=refuse_ssh,
        ssh_key_path=home / "id_ed25519",
        ssh_public_key="ssh-ed25519 AAAAfake bench@gpubot",
        clock=FakeClock(),
    )


def seed(deps: Any, n: int) -> None:
    from sqlalchemy import insert

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import InstanceRow, JobRow

    now = deps.clock()
    jobs = [
        {
            "id": f"j{i:05d}", "template": "train", "requester": f"U{i % 20:03d}",
            "channel": f"C{i % 5:03d}", "state": "running", "kind": "job",
            "budget_usd": Decimal(20), "created_at": now, "updated_at": now, "due_at": now,
            "step_started_at": now, "remote_root": "/workspace",
        }
        for i in range(n)
    ]
    instances = [
        {
            "job_id": f"j{i:05d}", "provider_id": str(100000 + i), "label": f"gpubot:j{i:05d}",
            "price_per_hour_usd": Decimal("0.40"), "rental_type": "on_demand",
            "status": "running", "provider_status": "running", "created_at": now,
            "metered_until": now, "disk_gb": 40, "storage_per_gb_month_usd": Decimal("0.10"),
        }
        for i in range(n)
    ]
    with session_scope(deps.sessions) as session:
        session.execute(insert(JobRow), jobs)
        session.execute(insert(InstanceRow), instances)


def seed_history(deps: Any, n: int, hours: float, tick_s: float) -> int:
    """Ledger rows as ``hours`` of ticks would have written them (compute + storage)."""
    from sqlalchemy import insert, select

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import InstanceRow, LedgerEntryRow

    ticks = int(hours * 3600 / tick_s)
    end = deps.clock()
    with session_scope(deps.sessions) as session:
        ids = dict(session.execute(select(InstanceRow.job_id, InstanceRow.id)).all())
    written = 0
    batch: list[dict[str, object]] = []
    for i in range(n):
        job_id = f"j{i:05d}"
        for t in range(ticks):
            start = end - timedelta(seconds=tick_s * (ticks - t))
            stop = start + timedelta(seconds=tick_s)
            for kind, amount in (("compute", Decimal("0.00111111")),
                                 ("storage", Decimal("0.00001543"))):
                batch.append({
                    "instance_id": ids[job_id], "job_id": job_id, "requester": f"U{i % 20:03d}",
                    "channel": f"C{i % 5:03d}", "kind": kind, "amount_usd": amount,
                    "period_start": start, "period_end": stop, "created_at": stop,
                })
        if len(batch) >= 50_000 or i == n - 1:
            with session_scope(deps.sessions) as session:
                session.execute(insert(LedgerEntryRow), batch)
            written += len(batch)
            batch = []
    return written


def reset(deps: Any) -> None:
    """Untimed: every job unlocked and due now (the steady state of a busy engine)."""
    from sqlalchemy import update

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import JobRow

    with session_scope(deps.sessions) as session:
        session.execute(
            update(JobRow).values(lock_token=None, lock_expires_at=None, due_at=deps.clock())
        )


def timed_ticks(deps: Any, ticks: int) -> tuple[float, float, Any]:
    from gpubot.engine.tick import reconcile_tick

    cpu: list[float] = []
    wall: list[float] = []
    report = None
    for _ in range(ticks):
        deps.clock.advance(seconds=10)
        reset(deps)
        w0, c0 = time.perf_counter(), time.process_time()
        report = reconcile_tick(deps, dispatch=lambda job_id, token: None)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall), report


def measure(db: str, url: str, home: Path, n: int, ticks: int, history_hours: float
            ) -> list[list[object]]:
    deps = build_deps(url, home, n)
    c.quiet()
    seed(deps, n)
    rows: list[list[object]] = []
    cpu, wall, report = timed_ticks(deps, ticks)
    rows.append([db, n, "fresh", f"{cpu * 1000:.0f}", f"{wall * 1000:.0f}",
                 report.instances_seen, report.ledger_entries, len(report.claimed)])
    if history_hours > 0:
        written = seed_history(deps, n, history_hours, deps.settings.tick_seconds)
        cpu, wall, report = timed_ticks(deps, ticks)
        rows.append([db, n, f"+{history_hours:g} h ledger ({written} rows)",
                     f"{cpu * 1000:.0f}", f"{wall * 1000:.0f}", report.instances_seen,
                     report.ledger_entries, len(report.claimed)])
    deps.sessions.kw["bind"].dispose()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=2, help="timed ticks (median reported)")
    parser.add_argument("--history-hours", type=float, default=0.1)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    c.print_header(
        f"reconcile tick CPU at {args.jobs} live jobs (median of {args.ticks} ticks, "
        "no-op dispatch)"
    )
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="gpubot-bench-tick-") as tmp:
        if args.db in ("sqlite", "both"):
            home = Path(tmp) / "sqlite"
            home.mkdir()
            rows += measure("sqlite", f"sqlite:///{home / 'gpubot.db'}", home, args.jobs,
                            args.ticks, args.history_hours)
        if args.db in ("postgres", "both"):
            if c.pg_available():
                with c.pg_database("gpubot_bench_tick") as url:
                    rows += measure("postgres", url, Path(tmp) / "pg", args.jobs, args.ticks,
                                    args.history_hours)
            else:
                print(f"PostgreSQL not reachable at {c.PG_ADMIN_URL}: skipped")
    print(c.table(
        ["db", "jobs", "ledger", "CPU ms/tick", "wall ms/tick", "listed", "ledger rows added",
         "claimed"],
        rows,
    ))
    print("claimed = jobs handed to dispatch this tick (claim_due_jobs takes at most 100).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
