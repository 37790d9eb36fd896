"""The reconcile tick's metering and enforcement cost a fixed number of statements, whatever
the number of jobs, and the batched budget reads give the same figures as the per-scope ones.

Real databases: SQLite files and the PostgreSQL server (a throwaway database per test).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import event, select

from gpubot.db import spend as summaries
from gpubot.db.engine import session_scope
from gpubot.db.tables import BudgetRow, InstanceRow, LedgerEntryRow
from gpubot.deps import EngineDeps
from gpubot.engine.tick import reconcile_tick
from gpubot.governance import limits
from gpubot.governance.periods import period_start
from gpubot.notify import audit
from gpubot.testing.fakes import (
    FakeClock,
    FakeProvider,
    fake_deps,
    observation,
    seed_instance,
    seed_job,
    seed_ledger,
)

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
"""A Friday: the week started on Monday the 10th, the month on the 1st."""


def _deps(url: str, home: Path, provider: FakeProvider) -> EngineDeps:
    return fake_deps(home, database_url=url, provider=provider, clock=FakeClock(NOW))


def test_daily_spend_agrees_with_spend_and_the_ledger(database_url: str, tmp_path: Path) -> None:
    """``daily_spend(...).since(p)`` (one query for every scope) equals ``spend`` (one query
    per scope and period) and the ledger's own sum, for entries on both sides of each period
    start, including entries ending exactly at midnight (they belong to the day before)."""
    deps = _deps(database_url, tmp_path / "home", FakeProvider())
    ends = [
        datetime(2025, 2, 28, 23, 0, tzinfo=UTC),  # last month
        datetime(2025, 3, 1, 0, 0, tzinfo=UTC),  # midnight: still February
        datetime(2025, 3, 1, 0, 0, 1, tzinfo=UTC),
        datetime(2025, 3, 9, 12, 0, tzinfo=UTC),  # last week
        datetime(2025, 3, 10, 0, 0, tzinfo=UTC),  # midnight: still last week
        datetime(2025, 3, 13, 23, 59, tzinfo=UTC),  # yesterday
        datetime(2025, 3, 14, 0, 0, 1, tzinfo=UTC),
        NOW,
    ]
    with session_scope(deps.sessions) as s:
        for i, at in enumerate(ends):
            seed_ledger(s, [(f"j{i}", f"U{i % 2}", f"C{i % 3}", "compute", f"0.{i + 1}0000001"),
                            (f"j{i}", "U9", f"C{i % 3}", "storage", "0.00000003")], at=at)
    keys = [("user", "U0"), ("user", "U1"), ("user", "U9"), ("user", "U-none"),
            ("channel", "C0"), ("channel", "C1"), ("channel", "C2"), ("team", "")]
    first = min(period_start(p, NOW) for p in ("day", "week", "month"))
    with session_scope(deps.sessions) as s:
        daily = limits.daily_spend(s, keys, since=first)
        ledger = list(s.scalars(select(LedgerEntryRow)))
        for scope, scope_id in keys:
            key = (scope, limits.TEAM_ID if scope == "team" else scope_id)
            for period in ("day", "week", "month"):
                since = period_start(period, NOW)
                attr = {"user": "requester", "channel": "channel"}.get(scope)
                reference = sum(
                    (r.amount_usd for r in ledger
                     if r.period_end > since and (attr is None or getattr(r, attr) == scope_id)),
                    Decimal(0),
                )
                got = daily[key].since(since)
                assert got == limits.spend(s, scope=scope, scope_id=scope_id, since=since)
                assert got == reference, (scope, scope_id, period)
        with pytest.raises(ValueError):
            daily[("user", "U0")].since(first - timedelta(days=1))


def test_limits_for_scopes_equals_limits_for(tmp_path: Path) -> None:
    deps = _deps(f"sqlite:///{tmp_path / 'gpubot.db'}", tmp_path / "home", FakeProvider())
    with session_scope(deps.sessions) as s:
        s.add_all([
            BudgetRow(scope="user", scope_id="U1", period="week", limit_usd=Decimal(5)),
            BudgetRow(scope="user", scope_id="U1", period="month", limit_usd=Decimal(50)),
            BudgetRow(scope="user", scope_id="U2", period="day", limit_usd=Decimal(1)),
            BudgetRow(scope="channel", scope_id="C1", period="month", limit_usd=Decimal(70)),
            BudgetRow(scope="team", scope_id="team", period="week", limit_usd=Decimal(900)),
        ])
    keys = [("user", "U1"), ("user", "U2"), ("user", "U3"), ("channel", "C1"),
            ("channel", "C2"), ("team", "team")]
    with session_scope(deps.sessions) as s:
        batched = limits.limits_for_scopes(deps, s, keys)
        assert batched == {k: limits.limits_for(deps, s, *k) for k in keys}


def _fleet(deps: EngineDeps, provider: FakeProvider, first: int, n: int) -> None:
    with session_scope(deps.sessions) as s:
        for i in range(first, first + n):
            job_id = f"j-{i:03d}"
            seed_job(s, job_id, requester=f"U{i % 4}", channel=f"C{i % 3}",
                     budget_usd=Decimal(1000), created_at=NOW)
            seed_instance(s, job_id, str(700 + i), created_at=NOW)
            provider.add(observation(str(700 + i), label=f"gpubot:{job_id}",
                                     price_per_hour_usd="0.40", gpu_util_pct=50.0))


def _tick_statements(deps: EngineDeps) -> list[str]:
    """The SQL statements one tick sends (an executemany counts once), each by its first 60
    characters (a multi-row VALUES or an IN list grows with the rows, not the statements)."""
    statements: list[str] = []
    engine = deps.sessions.kw["bind"]

    def record(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(" ".join(statement.split())[:60])

    deps.clock.advance(seconds=10)  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", record)
    try:
        report = reconcile_tick(deps, dispatch=lambda job_id, token: None)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert report.ledger_entries > 0
    return statements


def test_tick_statements_do_not_grow_with_jobs(database_url: str, tmp_path: Path) -> None:
    """Metering and enforcement at 4 and at 40 live jobs send the same statements (rows are
    batched, never one statement per job); the instance rows are written and the spend
    summaries stay equal to the ledger's sums."""
    provider = FakeProvider()
    deps = _deps(database_url, tmp_path / "home", provider)
    _fleet(deps, provider, 0, 4)
    _tick_statements(deps)  # first metering of the fleet
    few = _tick_statements(deps)
    _fleet(deps, provider, 4, 36)
    _tick_statements(deps)
    many = _tick_statements(deps)
    assert sorted(many) == sorted(few)
    now = deps.clock()
    with session_scope(deps.sessions) as s:
        rows = list(s.scalars(select(InstanceRow)))
        assert len(rows) == 40
        assert {(r.metered_until, r.last_seen_at, r.provider_status) for r in rows} == {
            (now, now, "running")}
        assert summaries.stored_summaries(s) == summaries.ledger_sums(s)
        # j-000 was metered on all 4 ticks, once each: 4 compute entries of 10 s (the seeded
        # instances have no storage rate) of 10 s at $0.40/h, back to back
        first = list(s.scalars(select(LedgerEntryRow).where(LedgerEntryRow.job_id == "j-000")
                               .order_by(LedgerEntryRow.id)))
        assert [(e.kind, e.amount_usd) for e in first] == [("compute", Decimal("0.00111111"))] * 4
        assert [e.period_end - e.period_start for e in first] == [timedelta(seconds=10)] * 4
        assert first[-1].period_end == now


def test_alert_lookup_reads_alert_events_only(tmp_path: Path) -> None:
    """Enforcement's one ``budget_alert`` query goes through the (action, target, at) index
    (SQLite's plan), so a long audit trail of other events is never walked."""
    url = f"sqlite:///{tmp_path / 'gpubot.db'}"
    provider = FakeProvider()
    deps = _deps(url, tmp_path / "home", provider)
    _fleet(deps, provider, 0, 2)
    with session_scope(deps.sessions) as s:
        for i in range(200):
            audit.record(s, "U1", "command", f"j-{i:03d}", "", at=NOW - timedelta(minutes=i))
    captured: list[tuple[str, object]] = []
    engine = deps.sessions.kw["bind"]

    def record(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM audit_events" in statement and "budget_alert" in str(params):
            captured.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        reconcile_tick(deps, dispatch=lambda job_id, token: None)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(captured) == 1
    statement, params = captured[0]
    conn = sqlite3.connect(str(tmp_path / "gpubot.db"))
    try:
        plan = " ".join(str(r) for r in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params))
    finally:
        conn.close()
    assert "ix_audit_events_action_target_at" in plan
