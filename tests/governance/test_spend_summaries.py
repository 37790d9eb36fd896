"""Spend summaries (gpubot/db/spend.py) equal the ledger's sums, and budgets never scan the
ledger.

Real databases: SQLite files and the PostgreSQL server (a throwaway database per test).
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event, insert, select

from gpubot.db import spend as summaries
from gpubot.db.engine import (
    make_engine,
    make_sessionmaker,
    migrations_dir,
    session_scope,
)
from gpubot.db.tables import LedgerEntryRow
from gpubot.deps import EngineDeps
from gpubot.engine.tick import reconcile_tick
from gpubot.governance import enforce, gate, limits, reports
from gpubot.governance.periods import EPOCH, period_start
from gpubot.groups.budget import group_spent_usd
from gpubot.testing.fakes import (
    FakeClock,
    FakeProvider,
    fake_deps,
    observation,
    seed_instance,
    seed_job,
    seed_ledger,
)

USERS = ("U1", "U2", "U3")
CHANNELS = ("C1", "C2")


def _deps(url: str, home: Path, provider: FakeProvider, clock: FakeClock) -> EngineDeps:
    return fake_deps(home, database_url=url, provider=provider, clock=clock)


def _seed_fleet(deps: EngineDeps, provider: FakeProvider, rng: random.Random, n: int) -> None:
    with session_scope(deps.sessions) as s:
        for i in range(n):
            job_id = f"j-{i:03d}"
            seed_job(s, job_id, requester=USERS[i % 3], channel=CHANNELS[i % 2],
                     budget_usd=Decimal(1000), created_at=deps.clock())
            price = Decimal(rng.choice(["0.13", "0.40", "1.2345", "3.07"]))
            seed_instance(s, job_id, str(500 + i), price_per_hour_usd=price,
                          created_at=deps.clock())
            provider.add(observation(str(500 + i), label=f"gpubot:{job_id}",
                                     price_per_hour_usd=price, gpu_util_pct=50.0))


def _ledger_rows(deps: EngineDeps) -> list[LedgerEntryRow]:
    with session_scope(deps.sessions) as s:
        return list(s.scalars(select(LedgerEntryRow)))


def _reference_spend(rows: list[LedgerEntryRow], since: datetime, **match: str | None
                     ) -> Decimal:
    """The old definition, exactly: the Decimal sum of entries ending after ``since``."""
    return sum(
        (r.amount_usd for r in rows
         if r.period_end > since and all(getattr(r, k) == v for k, v in match.items())),
        Decimal(0),
    )


def _assert_summaries_match_ledger(deps: EngineDeps) -> None:
    with session_scope(deps.sessions) as s:
        stored = summaries.stored_summaries(s)
        expected = summaries.ledger_sums(s)
    assert stored == expected
    rows = _ledger_rows(deps)
    assert rows, "the run wrote no ledger"
    now = deps.clock()
    job_ids = sorted({r.job_id for r in rows if r.job_id})
    with session_scope(deps.sessions) as s:
        for since in (period_start("day", now), period_start("week", now),
                      period_start("month", now), EPOCH):
            for user in USERS:
                assert limits.spend(s, scope="user", scope_id=user, since=since) == \
                    _reference_spend(rows, since, requester=user)
            for channel in CHANNELS:
                assert limits.spend(s, scope="channel", scope_id=channel, since=since) == \
                    _reference_spend(rows, since, channel=channel)
            assert limits.spend(s, scope="team", scope_id="", since=since) == \
                _reference_spend(rows, since)
            for group_by, attr in (("user", "requester"), ("channel", "channel"),
                                   ("job", "job_id"), ("kind", "kind")):
                keys = {getattr(r, attr) for r in rows if r.period_end > since}
                want = {(k or "-"): _reference_spend(rows, since, **{attr: k}) for k in keys}
                assert dict(reports.ledger_groups(s, since=since, group_by=group_by)) == want
        by_job = limits.spend_by_job(s, job_ids)
        assert by_job == {j: _reference_spend(rows, EPOCH, job_id=j) for j in job_ids}
        half = job_ids[: len(job_ids) // 2]
        assert group_spent_usd(s, half) == sum(
            (_reference_spend(rows, EPOCH, job_id=j) for j in half), Decimal(0)
        )


def test_randomized_run_summaries_equal_ledger_sums(database_url: str, tmp_path: Path) -> None:
    """Ticks across midnights (entries ending exactly at 00:00), a week and a month boundary,
    price changes, destroys, adjustments and entries without a job."""
    rng = random.Random(20261201)
    clock = FakeClock(datetime(2025, 3, 30, 21, 0, tzinfo=UTC))  # Sunday, 2 days to April
    provider = FakeProvider()
    deps = _deps(database_url, tmp_path / "home", provider, clock)
    _seed_fleet(deps, provider, rng, 12)
    for step in range(40):
        if step % 9 == 4:  # land exactly on the next midnight
            now = clock()
            clock.set((now + timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                        microsecond=0))
        else:
            clock.advance(seconds=rng.choice([10, 10, 37, 600, 3600, 4 * 3600]))
        if step % 7 == 3:
            with session_scope(deps.sessions) as s:
                seed_ledger(s, [
                    (rng.choice([None, "j-001", "j-004"]), rng.choice(USERS + ("",)),
                     rng.choice(CHANNELS + ("",)), "adjustment",
                     Decimal(rng.randint(-99_999_999, 99_999_999)) / 10**8),
                ], at=clock())
        if step == 20:
            obs = provider.instances[str(503)]
            provider.instances[str(503)] = observation(
                "503", label=obs.label, price_per_hour_usd="9.99",
                compute_per_hour_usd=Decimal("9.50"))
        if step == 25:
            provider.instances.pop(str(507))
        reconcile_tick(deps, dispatch=lambda job_id, token: None)
    _assert_summaries_match_ledger(deps)
    with session_scope(deps.sessions) as s:  # the repair path gives the same rows
        before = summaries.stored_summaries(s)
        summaries.rebuild_spend_summaries(s)
    with session_scope(deps.sessions) as s:
        assert summaries.stored_summaries(s) == before
    deps.sessions.kw["bind"].dispose()


def test_concurrent_ticks_on_postgres_keep_summaries_exact(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two workers ticking at the same moment, many times: every summary still equals the
    ledger (upserts serialise on the rows, in key order: no lost update, no deadlock)."""
    rng = random.Random(7)
    clock = FakeClock()
    provider = FakeProvider()
    deps = _deps(postgres_url, tmp_path / "home", provider, clock)
    _seed_fleet(deps, provider, rng, 30)
    errors: list[BaseException] = []

    def tick(barrier: threading.Barrier) -> None:
        try:
            barrier.wait(timeout=30)
            reconcile_tick(deps, dispatch=lambda job_id, token: None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _ in range(12):
        clock.advance(seconds=rng.choice([10, 60, 3600]))
        barrier = threading.Barrier(3)
        threads = [threading.Thread(target=tick, args=(barrier,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        # a third writer outside the tick: an adjustment through another session
        with session_scope(deps.sessions) as s:
            seed_ledger(s, [("j-002", "U3", "C1", "adjustment", "0.00000001")], at=clock())
    assert errors == []
    _assert_summaries_match_ledger(deps)
    deps.sessions.kw["bind"].dispose()


def _seed_history(deps: EngineDeps, rows: int) -> None:
    """History of other jobs, inserted in bulk (Core), then summarised by a rebuild."""
    now = deps.clock()
    batch = [
        {"job_id": f"old-{i % 50:02d}", "requester": "U1", "channel": "C1", "kind": "compute",
         "amount_usd": Decimal("0.00111111"),
         "period_start": now - timedelta(seconds=10 * (i + 1)),
         "period_end": now - timedelta(seconds=10 * i), "created_at": now}
        for i in range(rows)
    ]
    with session_scope(deps.sessions) as s:
        s.execute(insert(LedgerEntryRow), batch)
        summaries.rebuild_spend_summaries(s)


def test_budget_reads_never_touch_the_ledger_and_burn_is_the_price(
    database_url: str, tmp_path: Path
) -> None:
    """Enforcement, the launch gate, scope usage and group spend issue no SQL that reads
    ``ledger_entries``; burn is the instances' current price whatever the history, and the
    predictive stop decides as before (spent + 2 ticks of burn reaching the cap)."""
    clock = FakeClock()
    provider = FakeProvider()
    deps = _deps(database_url, tmp_path / "home", provider, clock)
    with session_scope(deps.sessions) as s:
        seed_job(s, "j-near", budget_usd="1.00")
        seed_job(s, "j-far", budget_usd="1.00")
        seed_instance(s, "j-near", "901", price_per_hour_usd="36.00")  # 0.20 per 20 s
        seed_instance(s, "j-far", "902", price_per_hour_usd="36.00")
        seed_ledger(s, [("j-near", "U1", "C1", "compute", "0.81"),
                        ("j-far", "U1", "C1", "compute", "0.79")], at=clock())
    _seed_history(deps, 3000)
    with session_scope(deps.sessions) as s:
        storage = limits.burn_per_hour(s, ["j-near"]) - Decimal("36.00")
        assert Decimal(0) <= storage < Decimal("0.01")  # + the disk's storage rate
        assert limits.burn_by_job(s, ["j-near", "j-far"]) == {
            "j-near": Decimal("36.00") + storage, "j-far": Decimal("36.00") + storage}
    statements: list[str] = []
    engine = deps.sessions.kw["bind"]

    def record(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        stopped = enforce.enforce(deps, now=clock(), tick_interval_seconds=10)
        with session_scope(deps.sessions) as s:
            gate.check_launch(deps, s, requester="U1", channel="C1",
                              estimate_usd=Decimal("1"))
            limits.scope_usage(deps, s, "user", "U1", clock())
            group_spent_usd(s, ["j-near", "j-far"])
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # 0.81 + 36 $/h x 20 s (0.20) >= 1.00 stops; 0.79 + 0.20 < 1.00 does not.
    assert stopped == ["j-near"]
    reading_ledger = [st for st in statements if "ledger_entries" in st]
    assert reading_ledger == []


def test_migration_builds_summaries_from_existing_ledger(
    database_url: str, tmp_path: Path
) -> None:
    """Upgrading a database that already has a ledger fills the summaries from it."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    script = ScriptDirectory.from_config(config)
    heads = script.get_heads()
    assert len(heads) == 1
    ours = next(r for r in script.walk_revisions() if "spend_summaries" in (r.doc or ""))
    assert isinstance(ours.down_revision, str)
    command.upgrade(config, ours.down_revision)
    engine = make_engine(database_url)
    t0 = datetime(2025, 3, 31, 23, 59, 50, tzinfo=UTC)
    rows = [
        {"job_id": job, "requester": user, "channel": "C1", "kind": "compute",
         "amount_usd": Decimal(amount), "period_start": t0 + timedelta(seconds=10 * i),
         "period_end": t0 + timedelta(seconds=10 * (i + 1)), "created_at": t0}
        for i, (job, user, amount) in enumerate([
            ("j-1", "U1", "0.10000001"), ("j-1", "U1", "0.2"), (None, "", "5"),
            ("j-2", "U2", "-0.00000003"),
        ])
    ]
    with engine.begin() as conn:
        conn.execute(insert(LedgerEntryRow.__table__), rows)
    command.upgrade(config, "head")
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        stored = summaries.stored_summaries(s)
        assert stored == summaries.ledger_sums(s)
        march, april = datetime(2025, 3, 31).date(), datetime(2025, 4, 1).date()
        assert stored[("job", "j-1", march)][0] == 10_000_001  # ended exactly at midnight
        assert stored[("job", "j-1", april)][0] == 20_000_000
        assert stored[("job", "", april)][0] == 500_000_000
        assert stored[("team", "team", april)][0] == 520_000_000 - 3
    engine.dispose()
