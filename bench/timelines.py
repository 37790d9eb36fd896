"""Idle waste and budget overshoot in $, from scripted timelines through the real engine.

Both timelines run the real ``reconcile_tick`` (list, meter, budget enforcement, claim) and the
real ``advance_job`` steps on a fresh SQLite database, with ``FakeClock`` (moved one tick at a
time) and ``FakeProvider`` (destroy removes the instance from the listing; the next tick
verifies it). A step that asks for an early tick (``Enqueuer.kick``) gets one at the same
instant, as the Celery worker does (the engine now requests the destroy in the very step
that decides a teardown, so this only affects the destroy verification). Instances cost
exactly $1.00/h compute and nothing for storage.

1. Idle interactive rental (``/gpu rent``): GPU at 80 % for 30 min, then 0 % for ever.
   Waste = ledger $ metered after the last use, until the destroy request stops metering.
   Policy: ``[idle]`` from the built-in gpubot.toml (window, grace, threshold).
2. Budget: a training job with ``budget=$0.50`` on a $1.00/h instance, busy (its progress
   advances every poll; a fake SSH runner answers the status commands). The instance starts
   at several offsets inside a tick interval, since billing is not aligned to ticks.
   Overshoot = ledger total of the job - $0.50.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()

PRICE = Decimal("1.00")
BUDGET = Decimal("0.50")


class Kicker:
    def __init__(self) -> None:
        self.kicked = False

    def kick(self) -> None:
        self.kicked = True


class BusyRunner:
    """A Runner for a job that is running and advancing; everything else succeeds quietly."""

    host_key = "ssh-ed25519 AAAAfakehostkey"

    def __init__(self) -> None:
        self.step = 0

    def exec(self, command: str, *, timeout_seconds: float = 60.0) -> Any:
        from gpubot.remote.runner import ExecResult

        if '"stage": ' in command and "running" in command:
            self.step += 10
            progress = json.dumps({"epoch": 1, "step": self.step, "total_steps": 10**9,
                                   "metrics": {"loss": 1.0}, "timestamp": 0})
            line = json.dumps({"stage": "job", "running": True, "pid": 4242, "exit_code": None,
                               "log_size": 10, "disk_free_mb": 9000, "dmesg_readable": False,
                               "oom_hint": None, "cancelled": False, "now": 0,
                               "progress": progress})
            return ExecResult(0, line + "\n", "")
        return ExecResult(0, "", "")

    def put_file(self, local_path: Path, remote_path: str) -> None:
        return None

    def put_bytes(self, data: bytes, remote_path: str, *, mode: int = 0o644) -> None:
        return None

    def get_bytes(self, remote_path: str) -> bytes | None:
        return None

    def close(self) -> None:
        return None


def make_deps(home: Path, tick_s: float, start: datetime) -> tuple[Any, Any, Kicker]:
    from gpubot.testing.fakes import FakeClock, FakeProvider, fake_deps

    provider = FakeProvider()
    deps = fake_deps(home, provider=provider, clock=FakeClock(start))
    deps.settings = deps.settings.model_copy(update={"tick_seconds": tick_s})
    kicker = Kicker()
    deps.enqueuer = kicker
    runner = BusyRunner()
    deps.connect = lambda target, *, known_host_key: runner
    c.quiet()
    return deps, provider, kicker


def tick(deps: Any, kicker: Kicker, kick: bool) -> None:
    from gpubot.engine.steps import advance_job
    from gpubot.engine.tick import reconcile_tick

    def dispatch(job_id: str, token: str) -> None:
        advance_job(deps, job_id, token)

    reconcile_tick(deps, dispatch=dispatch)
    rounds = 0
    while kick and kicker.kicked and rounds < 20:
        kicker.kicked = False
        reconcile_tick(deps, dispatch=dispatch)
        rounds += 1
    kicker.kicked = False


def job_state(deps: Any, job_id: str) -> str:
    from gpubot.db.engine import session_scope
    from gpubot.db.tables import JobRow

    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        return job.state


def ledger(deps: Any, job_id: str, since: datetime | None = None) -> Decimal:
    from sqlalchemy import func, select

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import LedgerEntryRow

    stmt = select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
        LedgerEntryRow.job_id == job_id
    )
    if since is not None:
        stmt = stmt.where(LedgerEntryRow.period_start >= since)
    with session_scope(deps.sessions) as session:
        return Decimal(str(session.scalar(stmt)))


def destroy_requested_at(deps: Any, job_id: str) -> datetime | None:
    from sqlalchemy import select

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import InstanceRow

    with session_scope(deps.sessions) as session:
        return session.scalars(
            select(InstanceRow.destroy_requested_at).where(InstanceRow.job_id == job_id)
        ).first()


def seed(deps: Any, provider: Any, job_id: str, *, kind: str, template: str,
         budget: Decimal | None, started: datetime, util: float) -> None:
    from gpubot.db.engine import session_scope
    from gpubot.models import JobState
    from gpubot.testing.fakes import observation, seed_instance, seed_job

    with session_scope(deps.sessions) as session:
        job = seed_job(session, job_id, state=JobState.RUNNING, template=template,
                       budget_usd=budget, created_at=started)
        job.kind = kind
        job.remote_root = "/workspace" if kind == "job" else None
        row = seed_instance(session, job_id, "5001", price_per_hour_usd=PRICE,
                            created_at=started)
        row.ssh_host, row.ssh_port = "127.0.0.1", 22
    provider.add(observation("5001", label=f"gpubot:{job_id}", price_per_hour_usd=PRICE,
                             gpu_util_pct=util, ssh_host="127.0.0.1", ssh_port=22))


def idle_timeline(tmp: Path, tick_s: float, kick: bool) -> list[object]:
    from gpubot.testing.fakes import T0

    deps, provider, kicker = make_deps(tmp, tick_s, T0)
    job_id = "rent01"
    seed(deps, provider, job_id, kind="interactive", template="rent", budget=None,
         started=T0, util=80.0)
    use_until = T0 + timedelta(minutes=30)
    last_use: datetime | None = None
    deadline = T0 + timedelta(hours=6)
    while deps.clock() < deadline:
        deps.clock.advance(seconds=tick_s)
        if last_use is None and deps.clock() >= use_until:
            last_use = deps.clock()
            provider.instances["5001"] = replace(provider.instances["5001"], gpu_util_pct=0.0)
        tick(deps, kicker, kick)
        if job_state(deps, job_id) in ("succeeded", "failed", "cancelled"):
            break
    assert last_use is not None
    requested = destroy_requested_at(deps, job_id)
    waste = ledger(deps, job_id, since=last_use)
    policy = deps.config.idle
    minutes = (requested - last_use).total_seconds() / 60 if requested else float("nan")
    deps.sessions.kw["bind"].dispose()
    return [f"{tick_s:g} s",
            f"{policy.window_minutes}+{policy.grace_minutes} min", f"{minutes:.2f}",
            f"${waste:.4f}", job_state(deps, job_id)]


def budget_timeline(
    tmp: Path, tick_s: float, kick: bool, offset_s: float
) -> tuple[Decimal, float]:
    from gpubot.testing.fakes import T0

    deps, provider, kicker = make_deps(tmp, tick_s, T0)
    job_id = "train01"
    started = T0 + timedelta(seconds=offset_s)
    seed(deps, provider, job_id, kind="job", template="train", budget=BUDGET,
         started=started, util=90.0)
    deadline = T0 + timedelta(hours=3)
    while deps.clock() < deadline:
        deps.clock.advance(seconds=tick_s)
        tick(deps, kicker, kick)
        if job_state(deps, job_id) in ("succeeded", "failed", "cancelled"):
            break
    spent = ledger(deps, job_id)
    requested = destroy_requested_at(deps, job_id)
    cap_at = started + timedelta(hours=float(BUDGET / PRICE))
    late = (requested - cap_at).total_seconds() if requested else float("nan")
    deps.sessions.kw["bind"].dispose()
    return spent - BUDGET, late


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", default="10,30,60", help="tick intervals in seconds")
    args = parser.parse_args()
    ticks = [float(t) for t in args.ticks.split(",")]
    c.print_header("timelines: idle waste and budget overshoot (real tick + engine steps)")
    idle_rows: list[list[object]] = []
    budget_rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="gpubot-bench-tl-", dir=c.fast_tmp_root()) as tmp:
        n = 0
        for tick_s in ticks:
            n += 1
            idle_rows.append(idle_timeline(Path(tmp) / f"idle{n}", tick_s, True))
            overs: list[Decimal] = []
            lates: list[float] = []
            offsets = [tick_s * f for f in (0.0, 0.25, 0.5, 0.75)]
            for k, offset in enumerate(offsets):
                over, late = budget_timeline(Path(tmp) / f"b{n}-{k}", tick_s, True, offset)
                overs.append(over)
                lates.append(late)
            mean = sum(overs, Decimal(0)) / len(overs)
            budget_rows.append([
                f"{tick_s:g} s", len(offsets), f"${mean:.4f}", f"${min(overs):.4f}",
                f"${max(overs):.4f}", f"{100 * mean / BUDGET:.2f} %",
                f"{min(lates):.0f} .. {max(lates):.0f}",
            ])
    print("\n1. Interactive rental idle after 30 min of use ($1.00/h):")
    print(c.table(["tick", "idle policy", "min last use -> destroy", "waste $",
                   "final state"], idle_rows))
    print("\n2. Job with budget=$0.50 on a $1.00/h instance (cap reached 30 min in):")
    print(c.table(["tick", "offsets", "mean overshoot", "min", "max", "mean % of cap",
                   "s cap -> destroy request"], budget_rows))
    print("Overshoot = ledger total - $0.50; negative = stopped before the cap (the budget "
          "enforcer stops early by a projected lead).")
    print("Offsets: the instance starts 0, 1/4, 1/2, 3/4 of a tick after a tick boundary.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
