"""CPU time of one reconcile tick at 1000 live jobs, on SQLite and PostgreSQL.

Setup: N jobs in ``running`` (each with the default $20 job budget, as ``[budgets]
job_default_usd`` gives every launch) and one instance row each; a ``FakeProvider`` lists N
running observations. The tick is the real ``reconcile_tick``: list, observe and meter (two
ledger entries per instance: compute + storage), budget enforcement (job, user, channel and
team scopes), claim due jobs; dispatch is a no-op. Between ticks (not timed) every job's lock
is released and it is made due again, so each timed tick does the same work; the fake clock
moves 10 s per tick.

Measured with ``time.process_time()`` (CPU of this process: SQLAlchemy, the driver, SQLite
itself). PostgreSQL's server CPU is not in it: it is shown on its own (the backends serving
the bench database, read from ``/proc``, as the server runs on this machine), and wall time
too. Points: a
fresh database, then after ``--history-hours`` of ledger history per job (one entry per kind
per tick, as the tick writes them) and after ``--ledger-rows`` history rows in total (bulk
inserted with executemany on SQLite, COPY on PostgreSQL, with one audit event per 10 ledger
rows, then the spend summaries rebuilt from the ledger when the code has them). A second
table gives the CPU of each tick phase (median); ``--profile`` prints the cProfile top
entries of one tick per point.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
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


def seed_history(deps: Any, n: int, rows: int, tick_s: float) -> tuple[int, float]:
    """About ``rows`` ledger rows as ticks would have written them (compute + storage, one
    pair per job per tick, ending at the clock's now), and one audit event (no budget alert)
    per :data:`AUDIT_PER_LEDGER_ROWS` of them over the same time, bulk inserted: executemany
    on SQLite, COPY on PostgreSQL. Then the spend summaries are rebuilt from the ledger (when
    the code has them). Returns (rows written, seconds spent rebuilding summaries)."""
    from sqlalchemy import select

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import InstanceRow, LedgerEntryRow

    ticks = max(1, rows // (2 * n))
    end = deps.clock()
    with session_scope(deps.sessions) as session:
        ids = dict(session.execute(select(InstanceRow.job_id, InstanceRow.id)).all())
    engine = deps.sessions.kw["bind"]
    table = LedgerEntryRow.__table__
    time_bind = table.c.period_end.type.bind_processor(engine.dialect)
    stamps = []
    for t in range(ticks + 1):
        at = end - timedelta(seconds=tick_s * (ticks - t))
        stamps.append(time_bind(at) if time_bind else at)
    cols = ("instance_id", "job_id", "requester", "channel", "kind", "amount_usd",
            "period_start", "period_end", "created_at")
    kinds = (("compute", "0.00111111"), ("storage", "0.00001543"))

    def gen() -> Any:
        for i in range(n):
            job_id = f"j{i:05d}"
            for t in range(ticks):
                for kind, amount in kinds:
                    yield (ids[job_id], job_id, f"U{i % 20:03d}", f"C{i % 5:03d}", kind,
                           amount, stamps[t], stamps[t + 1], stamps[t + 1])

    audit_cols = ("at", "actor", "action", "target", "reason", "detail")

    def audit_gen() -> Any:
        # The audit trail that comes with such a history: one event per AUDIT_PER_LEDGER_ROWS
        # ledger rows (commands, launches, stops ...), none a budget alert.
        actions = ("command", "launch", "cancel", "budget_stop")
        for k in range(n * ticks * 2 // AUDIT_PER_LEDGER_ROWS):
            t = k * ticks // max(1, n * ticks * 2 // AUDIT_PER_LEDGER_ROWS)
            yield (stamps[t + 1], f"U{k % 20:03d}", actions[k % 4], f"j{k % n:05d}", "", "{}")

    def copy(cur: Any, table: str, columns: tuple[str, ...], records: Any) -> None:
        if engine.dialect.name == "sqlite":
            cur.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})",
                records,
            )
            return
        buf = io.StringIO()
        for rec in records:
            buf.write("\t".join(str(v) for v in rec))
            buf.write("\n")
        buf.seek(0)
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf)

    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        copy(cur, "ledger_entries", cols, gen())
        copy(cur, "audit_events", audit_cols, audit_gen())
        raw.commit()
    finally:
        raw.close()
    written = n * ticks * 2
    rebuild_s = 0.0
    try:
        from gpubot.db.spend import rebuild_spend_summaries
    except ImportError:  # the code before the summaries
        return written, rebuild_s
    w0 = time.perf_counter()
    with session_scope(deps.sessions) as session:
        rebuild_spend_summaries(session)
    rebuild_s = time.perf_counter() - w0
    with engine.connect() as conn:  # fresh planner statistics, as autovacuum/ANALYZE would
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    return written, rebuild_s


AUDIT_PER_LEDGER_ROWS = 10
"""History seeding: one audit event per this many ledger rows."""


def reset(deps: Any) -> None:
    """Untimed: every job unlocked and due now (the steady state of a busy engine)."""
    from sqlalchemy import update

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import JobRow

    with session_scope(deps.sessions) as session:
        session.execute(
            update(JobRow).values(lock_token=None, lock_expires_at=None, due_at=deps.clock())
        )


PHASES = ("list", "meter", "enforce", "groups", "claim")


def _phase_timers(deps: Any) -> dict[str, float]:
    """Wrap the tick's phases (module attributes it calls) with CPU accumulators."""
    from gpubot import groups
    from gpubot.engine import tick
    from gpubot.governance import enforce

    spent = dict.fromkeys(PHASES, 0.0)

    def wrap(owner: Any, name: str, phase: str) -> None:
        inner = getattr(owner, name)
        if getattr(inner, "_bench_wrapped", False):
            inner = inner.__wrapped__

        def timed(*args: Any, **kwargs: Any) -> Any:
            c0 = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[phase] += time.process_time() - c0

        timed._bench_wrapped = True  # type: ignore[attr-defined]
        timed.__wrapped__ = inner  # type: ignore[attr-defined]
        setattr(owner, name, timed)

    wrap(deps.provider, "list_instances", "list")
    wrap(tick, "observe_and_meter", "meter")
    wrap(enforce, "enforce", "enforce")
    wrap(groups, "advance_groups", "groups")
    wrap(tick, "claim_due_jobs", "claim")
    return spent


def server_cpu_s(deps: Any) -> float | None:
    """CPU seconds used so far by the PostgreSQL backends serving this database (from
    ``/proc``: the server runs on this machine); None on SQLite or when not readable."""
    engine = deps.sessions.kw["bind"]
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        pids = [r[0] for r in conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def timed_ticks(deps: Any, ticks: int, profile: bool = False
                ) -> tuple[float, float, Any, dict[str, float], str, float | None]:
    from gpubot.engine.tick import reconcile_tick

    cpu: list[float] = []
    wall: list[float] = []
    server: list[float] = []
    phases: dict[str, list[float]] = {p: [] for p in (*PHASES, "commit+other")}
    report = None
    spent = _phase_timers(deps)
    for _ in range(ticks):
        deps.clock.advance(seconds=10)
        reset(deps)
        for p in spent:
            spent[p] = 0.0
        s0 = server_cpu_s(deps)
        w0, c0 = time.perf_counter(), time.process_time()
        report = reconcile_tick(deps, dispatch=lambda job_id, token: None)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        s1 = server_cpu_s(deps)
        if s0 is not None and s1 is not None:
            server.append(s1 - s0)
        for p in PHASES:
            phases[p].append(spent[p])
        phases["commit+other"].append(cpu[-1] - sum(spent.values()))
    top = ""
    if profile:
        deps.clock.advance(seconds=10)
        reset(deps)
        prof = cProfile.Profile()
        prof.enable()
        reconcile_tick(deps, dispatch=lambda job_id, token: None)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
        top = out.getvalue()
    return (statistics.median(cpu), statistics.median(wall), report,
            {p: statistics.median(v) for p, v in phases.items()}, top,
            statistics.median(server) if server else None)


def measure(db: str, url: str, home: Path, n: int, ticks: int, history_hours: float,
            ledger_rows: list[int], profile: bool
            ) -> tuple[list[list[object]], list[list[object]]]:
    deps = build_deps(url, home, n)
    c.quiet()
    seed(deps, n)
    rows: list[list[object]] = []
    phase_rows: list[list[object]] = []
    total = 0

    def point(label: str) -> None:
        cpu, wall, report, phases, top, server = timed_ticks(deps, ticks, profile)
        rows.append([db, n, label, f"{cpu * 1000:.0f}",
                     f"{server * 1000:.0f}" if server is not None else "-",
                     f"{wall * 1000:.0f}",
                     report.instances_seen, report.ledger_entries, len(report.claimed)])
        phase_rows.append([db, label, *(f"{v * 1000:.0f}" for v in phases.values())])
        if top:
            print(f"-- cProfile, one tick: {db}, {label}")
            print(top)

    point("fresh")
    targets: list[tuple[str, int]] = []
    if history_hours > 0:
        targets.append(("h", int(history_hours * 3600 / deps.settings.tick_seconds) * 2 * n))
    targets += [("rows", r) for r in ledger_rows]
    for kind, target in targets:
        if target <= total:
            continue
        written, rebuild_s = seed_history(deps, n, target - total, deps.settings.tick_seconds)
        total += written
        extra = f", summaries rebuilt in {rebuild_s:.1f} s" if rebuild_s else ""
        label = (f"+{history_hours:g} h ledger ({total} rows{extra})" if kind == "h"
                 else f"{total} ledger rows{extra}")
        point(label)
    deps.sessions.kw["bind"].dispose()
    return rows, phase_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=2, help="timed ticks (median reported)")
    parser.add_argument("--history-hours", type=float, default=0.1)
    parser.add_argument("--ledger-rows", type=int, action="append", default=[],
                        help="also measure with this many history rows (repeatable), e.g. "
                        "--ledger-rows 1000000")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--profile", action="store_true",
                        help="print cProfile top entries of one extra tick per point")
    args = parser.parse_args()
    c.print_header(
        f"reconcile tick CPU at {args.jobs} live jobs (median of {args.ticks} ticks, "
        "no-op dispatch)"
    )
    print(f"load average before: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} "
          f"{os.getloadavg()[2]:.1f}")
    rows: list[list[object]] = []
    phase_rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="gpubot-bench-tick-") as tmp:
        if args.db in ("sqlite", "both"):
            home = Path(tmp) / "sqlite"
            home.mkdir()
            r, p = measure("sqlite", f"sqlite:///{home / 'gpubot.db'}", home, args.jobs,
                           args.ticks, args.history_hours, args.ledger_rows, args.profile)
            rows += r
            phase_rows += p
        if args.db in ("postgres", "both"):
            if c.pg_available():
                with c.pg_database("gpubot_bench_tick") as url:
                    r, p = measure("postgres", url, Path(tmp) / "pg", args.jobs, args.ticks,
                                   args.history_hours, args.ledger_rows, args.profile)
                    rows += r
                    phase_rows += p
            else:
                print(f"PostgreSQL not reachable at {c.PG_ADMIN_URL}: skipped")
    print(c.table(
        ["db", "jobs", "ledger", "CPU ms/tick", "server CPU ms/tick", "wall ms/tick", "listed",
         "ledger rows added",
         "claimed"],
        rows,
    ))
    print(c.table(["db", "ledger", *(f"{p} ms" for p in PHASES), "commit+other ms"],
                  phase_rows))
    print("CPU ms per phase (median). commit+other: the metering transaction's commit (ledger")
    print("and summary writes) and the tick's own sessions.")
    print(f"load average after: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} "
          f"{os.getloadavg()[2]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
