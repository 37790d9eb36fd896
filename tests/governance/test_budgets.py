"""Governance: pure helpers (literal tables) and the services on a real SQLite schema."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select

from gpubot.config import OnExceed
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, BudgetRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.errors import CommandError
from gpubot.governance import budgets, charges, enforce, gate, limits, periods
from gpubot.governance.gate import LaunchOutcome
from gpubot.governance.limits import Limit
from gpubot.models import JobState
from gpubot.render import budgets as budget_render
from gpubot.testing.fakes import T0, FakeClock, FakeProvider, seed_instance, seed_job, seed_ledger

D = Decimal

# -- pure -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "expected"),
    [
        ("month", datetime(2025, 3, 14, 12, 0, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC)),
        ("month", datetime(2025, 3, 1, 0, 0, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC)),
        ("day", datetime(2025, 3, 14, 23, 59, tzinfo=UTC), datetime(2025, 3, 14, tzinfo=UTC)),
        ("today", datetime(2025, 3, 14, 0, 0, 1, tzinfo=UTC), datetime(2025, 3, 14, tzinfo=UTC)),
        ("week", datetime(2025, 3, 14, 12, 0, tzinfo=UTC), datetime(2025, 3, 10, tzinfo=UTC)),
        ("week", datetime(2025, 3, 10, 0, 0, tzinfo=UTC), datetime(2025, 3, 10, tzinfo=UTC)),
        ("week", datetime(2025, 3, 2, 23, 0, tzinfo=UTC), datetime(2025, 2, 24, tzinfo=UTC)),
        # 01:30 on 1 April at UTC+2 is still March in UTC.
        (
            "month",
            datetime(2025, 4, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))),
            datetime(2025, 3, 1, tzinfo=UTC),
        ),
    ],
)
def test_period_start(period: str, now: datetime, expected: datetime) -> None:
    assert periods.period_start(period, now) == expected


def test_period_start_rejects_unknown_period_and_naive_time() -> None:
    with pytest.raises(CommandError):
        periods.period_start("year", T0)
    with pytest.raises(ValueError):
        periods.period_start("month", datetime(2025, 3, 1))


@pytest.mark.parametrize(
    ("spent", "limit", "burn", "text"),
    [
        ("18.10", "20", "0.60", "At the current $0.60/h the budget runs out in 3 h 10 m."),
        ("0", "10", "0.40", "At the current $0.40/h the budget runs out in 1 d 1 h."),
        ("9.99", "10", "0.60", "At the current $0.60/h the budget runs out in 1 m."),
        ("5", "10", "0", "Nothing is billing right now."),
        ("10", "10", "0.60", "The budget is used up."),
    ],
)
def test_forecast_line(spent: str, limit: str, burn: str, text: str) -> None:
    assert budget_render.forecast_line(D(spent), D(limit), D(burn)) == text


def _lim(scope: str, sid: str, limit: str, period: str = "month") -> Limit:
    return Limit(scope, sid, period, D(limit), "default")


@pytest.mark.parametrize(
    ("checks", "estimate", "on_exceed", "outcome", "over"),
    [
        ([], "5", OnExceed.REFUSE, LaunchOutcome.OK, []),
        ([(_lim("user", "U1", "100"), "95")], "5", OnExceed.REFUSE, LaunchOutcome.OK, []),
        (
            [(_lim("user", "U1", "100"), "95.01")],
            "5",
            OnExceed.REFUSE,
            LaunchOutcome.REFUSE,
            ["user"],
        ),
        (
            [(_lim("user", "U1", "100"), "95.01")],
            "5",
            OnExceed.APPROVAL,
            LaunchOutcome.NEEDS_APPROVAL,
            ["user"],
        ),
        (
            [
                (_lim("user", "U1", "100"), "10"),
                (_lim("channel", "C1", "20"), "16"),
                (_lim("team", "team", "30", "week"), "26"),
            ],
            "5",
            OnExceed.REFUSE,
            LaunchOutcome.REFUSE,
            ["channel", "team"],
        ),
        (
            [(_lim("team", "team", "0"), "0")],
            "0.01",
            OnExceed.REFUSE,
            LaunchOutcome.REFUSE,
            ["team"],
        ),
    ],
)
def test_launch_verdict_table(
    checks: list[tuple[Limit, str]],
    estimate: str,
    on_exceed: OnExceed,
    outcome: LaunchOutcome,
    over: list[str],
) -> None:
    verdict = gate.launch_verdict([(lim, D(s)) for lim, s in checks], D(estimate), on_exceed)
    assert verdict.outcome is outcome
    assert [lim.scope for lim in verdict.exceeded] == over
    assert bool(verdict.reason) == bool(over)


def test_launch_verdict_reason_names_the_budget_and_the_numbers() -> None:
    verdict = gate.launch_verdict(
        [(_lim("user", "U1", "100"), D("98"))], D("5"), OnExceed.REFUSE
    )
    assert verdict.reason == (
        "the monthly budget of $100.00 for user <@U1> would be exceeded "
        "($98.00 spent + $5.00 estimated = $103.00)"
    )


@pytest.mark.parametrize(
    ("stored", "budget", "expected"),
    [
        ({}, "10", set()),
        ({"limit_usd": "10", "pcts": [50, 80]}, "10", {50, 80}),
        ({"limit_usd": "10.00000000", "pcts": [50]}, "10", {50}),
        ({"limit_usd": "10", "pcts": [50, 80]}, "20", set()),
        ({"limit_usd": "junk", "pcts": [50]}, "10", set()),
    ],
)
def test_read_job_alerts(stored: dict[str, object], budget: str, expected: set[int]) -> None:
    assert enforce.read_job_alerts(stored, D(budget)) == expected


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], {}),
        (
            [
                {"source": "instance-7", "amount": 1.25, "start": 100, "end": 200},
                {"source": "instance-7", "amount": 0.1, "start": 50, "end": 300},
                {"source": "instance-8", "amount": "2.5", "metadata": {"label": "gpubot:j-8"}},
                {"source": "stripe", "amount": -25.0, "type": "credit"},
                {"source": "instance-9", "amount": None},
            ],
            {"7": ("1.35", 50, 300, None), "8": ("2.5", None, None, "gpubot:j-8")},
        ),
    ],
)
def test_charges_by_instance(
    rows: list[dict[str, object]],
    expected: dict[str, tuple[str, int | None, int | None, str | None]],
) -> None:
    got = charges.charges_by_instance(rows)
    assert set(got) == set(expected)
    for pid, (amount, start, end, label) in expected.items():
        ch = got[pid]
        assert ch.amount_usd == D(amount)
        assert ch.start == (datetime.fromtimestamp(start, UTC) if start is not None else None)
        assert ch.end == (datetime.fromtimestamp(end, UTC) if end is not None else None)
        assert ch.label == label


# -- services ---------------------------------------------------------------------------------


def _replies(
    deps: EngineDeps, *, job_id: str | None = None, channel: str | None = None
) -> list[str]:
    with session_scope(deps.sessions) as s:
        stmt = select(MessageRow).order_by(MessageRow.id)
        if job_id is not None:
            stmt = stmt.where(MessageRow.job_id == job_id)
        if channel is not None:
            stmt = stmt.where(MessageRow.channel == channel, MessageRow.job_id.is_(None))
        return [m.text for m in s.scalars(stmt)]


def _spend(
    deps: EngineDeps, job_id: str, amount: str, *, who: str = "U1", chan: str = "C1"
) -> None:
    with session_scope(deps.sessions) as s:
        seed_ledger(s, [(job_id, who, chan, "compute", amount)], at=deps.clock())


def _job(deps: EngineDeps, job_id: str, **kw: object) -> None:
    with session_scope(deps.sessions) as s:
        seed_job(s, job_id, **kw)  # type: ignore[arg-type]


def test_job_thresholds_alert_once_each_then_stop(deps: EngineDeps, clock: FakeClock) -> None:
    _job(deps, "j-1", budget_usd="10")
    with session_scope(deps.sessions) as s:
        seed_instance(s, "j-1", "101", price_per_hour_usd="0.60")

    _spend(deps, "j-1", "4.00")
    assert enforce.enforce(deps, now=clock()) == []
    assert _replies(deps, job_id="j-1") == []

    _spend(deps, "j-1", "1.25")  # 52.5 %
    assert enforce.enforce(deps, now=clock()) == []
    assert enforce.enforce(deps, now=clock.advance(seconds=10)) == []
    texts = _replies(deps, job_id="j-1")
    assert len(texts) == 1
    assert "j-1 has used 50% of its $10.00 budget ($5.25 spent)" in texts[0]
    assert "At the current $0.60/h the budget runs out in 7 h 55 m." in texts[0]

    _spend(deps, "j-1", "3.00")  # 82.5 %
    enforce.enforce(deps, now=clock.advance(seconds=10))
    enforce.enforce(deps, now=clock.advance(seconds=10))
    texts = _replies(deps, job_id="j-1")
    assert len(texts) == 2
    assert "used 80% of its $10.00 budget ($8.25 spent)" in texts[1]

    _spend(deps, "j-1", "1.95")  # 102 %
    assert enforce.enforce(deps, now=clock.advance(seconds=10)) == ["j-1"]
    assert enforce.enforce(deps, now=clock.advance(seconds=10)) == []
    texts = _replies(deps, job_id="j-1")
    assert len(texts) == 3
    assert texts[2].startswith(
        ":octagonal_sign: Budget 100%: stopping j-1: budget of $10.00 reached (spent $10.20)."
    )
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-1")
        assert job is not None
        assert job.stop_requested_reason == "budget of $10.00 reached (spent $10.20)"
        assert job.alerted_pcts == {"limit_usd": "10.00000000", "pcts": [50, 80, 100]}
        audit = s.scalars(select(AuditEventRow).where(AuditEventRow.action == "budget_stop"))
        assert [a.target for a in audit] == ["j-1"]


def test_jump_past_two_thresholds_posts_one_alert(deps: EngineDeps, clock: FakeClock) -> None:
    _job(deps, "j-2", budget_usd="10")
    _spend(deps, "j-2", "8.50")
    assert enforce.enforce(deps, now=clock()) == []
    texts = _replies(deps, job_id="j-2")
    assert len(texts) == 1 and "used 80%" in texts[0]
    assert "Nothing is billing right now." in texts[0]  # no live instance


def test_finished_and_unapproved_jobs_are_not_enforced(deps: EngineDeps, clock: FakeClock) -> None:
    _job(deps, "j-done", budget_usd="1", state=JobState.SUCCEEDED)
    _job(deps, "j-wait", budget_usd="1", state=JobState.AWAITING_APPROVAL)
    _spend(deps, "j-done", "5")
    _spend(deps, "j-wait", "5")
    assert enforce.enforce(deps, now=clock()) == []
    assert _replies(deps, job_id="j-done") == [] and _replies(deps, job_id="j-wait") == []


def test_raising_a_job_cap_restarts_its_alerts(deps: EngineDeps, clock: FakeClock) -> None:
    _job(deps, "j-3", budget_usd="10")
    _spend(deps, "j-3", "6")
    enforce.enforce(deps, now=clock())
    text = budget_render.budget_set_text(
        budgets.set_budget(deps, actor="UADMIN", scope="job", scope_id="j-3", amount_usd=D(11))
    )
    assert "Budget of job j-3 set to $11.00 (was $10.00)" in text
    enforce.enforce(deps, now=clock.advance(seconds=10))
    alerts = [t for t in _replies(deps, job_id="j-3") if "Budget alert" in t]
    assert len(alerts) == 2
    assert "of its $11.00 budget" in alerts[1]


def test_user_budget_alerts_channel_and_stops_only_that_users_jobs(
    deps: EngineDeps, clock: FakeClock
) -> None:
    budgets.set_budget(deps, actor="UADMIN", scope="user", scope_id="U1", amount_usd=D(20))
    _job(deps, "j-a", requester="U1", channel="C1")
    _job(deps, "j-b", requester="U1", channel="C1")
    _job(deps, "j-c", requester="U2", channel="C1")
    _spend(deps, "j-a", "10.50")
    assert enforce.enforce(deps, now=clock()) == []
    assert enforce.enforce(deps, now=clock.advance(seconds=10)) == []
    alerts = _replies(deps, channel="C1")
    assert len(alerts) == 1
    assert "user <@U1> has used 50% of the monthly budget of $20.00 ($10.50 spent)" in alerts[0]

    _spend(deps, "j-b", "9.60")
    assert sorted(enforce.enforce(deps, now=clock.advance(seconds=10))) == ["j-a", "j-b"]
    with session_scope(deps.sessions) as s:
        reasons = {j.id: j.stop_requested_reason for j in s.scalars(select(JobRow))}
    expected = "monthly budget of $20.00 for user <@U1> reached (spent $20.10)"
    assert reasons == {"j-a": expected, "j-b": expected, "j-c": None}
    assert "Stopping 2 live job(s)" in _replies(deps, channel="C1")[-1]
    assert enforce.enforce(deps, now=clock.advance(seconds=10)) == []


def test_team_default_budget_alerts_ops_channel(
    deps: EngineDeps, clock: FakeClock, ops_channel: str
) -> None:
    deps.config = replace(deps.config, ops=replace(deps.config.ops, channel=ops_channel))
    deps.config = replace(
        deps.config, budgets=replace(deps.config.budgets, team_monthly_usd=D(30))
    )
    _job(deps, "j-t", requester="U7", channel="C7")
    _spend(deps, "j-t", "25", who="U7", chan="C7")
    enforce.enforce(deps, now=clock())
    ops_msgs = _replies(deps, channel=ops_channel)
    assert (
        len(ops_msgs) == 1
        and "the team has used 80% of the monthly budget of $30.00" in ops_msgs[0]
    )


def test_spend_in_previous_month_does_not_count(deps: EngineDeps, clock: FakeClock) -> None:
    _job(deps, "j-old", requester="U1")
    with session_scope(deps.sessions) as s:
        seed_ledger(
            s, [("j-old", "U1", "C1", "compute", "99")], at=datetime(2025, 2, 28, tzinfo=UTC)
        )
        seed_ledger(s, [("j-old", "U1", "C1", "compute", "1.5")], at=T0)
        month = periods.period_start("month", T0)
        assert limits.spend(s, scope="user", scope_id="U1", since=month) == D("1.5")
        assert limits.spend(s, scope="job", scope_id="j-old", since=periods.EPOCH) == D("100.5")
        assert limits.spend(s, scope="channel", scope_id="C2", since=month) == D(0)
        assert limits.spend(s, scope="team", scope_id="", since=month) == D("1.5")
        with pytest.raises(ValueError):
            limits.spend(s, scope="galaxy", scope_id="x", since=month)


def test_check_launch_verdicts(deps: EngineDeps) -> None:
    # Defaults: user $100, channel $200, team $500 a month; on_exceed = refuse.
    _job(deps, "j-1", requester="U1", channel="C1")
    _spend(deps, "j-1", "96")
    with session_scope(deps.sessions) as s:
        ok = gate.check_launch(deps, s, requester="U1", channel="C1", estimate_usd=D(4))
        assert ok.ok
        refused = gate.check_launch(deps, s, requester="U1", channel="C1", estimate_usd=D(5))
        assert refused.outcome is LaunchOutcome.REFUSE
        assert "user <@U1>" in refused.reason and "$101.00" in refused.reason
        other = gate.check_launch(deps, s, requester="U2", channel="C1", estimate_usd=D(5))
        assert other.ok
    budgets.set_budget(deps, actor="UADMIN", scope="channel", scope_id="C1", amount_usd=D(50))
    deps.config = replace(
        deps.config, budgets=replace(deps.config.budgets, on_exceed=OnExceed.APPROVAL)
    )
    with session_scope(deps.sessions) as s:
        verdict = gate.check_launch(deps, s, requester="U2", channel="C1", estimate_usd=D(1))
        assert verdict.outcome is LaunchOutcome.NEEDS_APPROVAL
        assert [lim.scope for lim in verdict.exceeded] == ["channel"]


def test_set_budget_writes_row_and_audit_and_rejects_bad_input(deps: EngineDeps) -> None:
    text = budget_render.budget_set_text(
        budgets.set_budget(
            deps, actor="UADMIN", scope="user", scope_id="U1", amount_usd=D("50"), period="week"
        )
    )
    assert text.startswith("Weekly budget for user <@U1> set to $50.00 (was no limit)")
    budgets.set_budget(
        deps, actor="UADMIN", scope="user", scope_id="U1", amount_usd=D("60"), period="week"
    )
    budgets.set_budget(deps, actor="UADMIN", scope="team", scope_id=None, amount_usd=D("900"))
    for bad in (
        dict(scope="user", scope_id="U1", amount_usd=D(-1)),
        dict(scope="planet", scope_id="U1", amount_usd=D(1)),
        dict(scope="user", scope_id="", amount_usd=D(1)),
        dict(scope="job", scope_id="j-missing", amount_usd=D(1)),
        dict(scope="user", scope_id="U1", amount_usd=D(1), period="year"),
    ):
        with pytest.raises(CommandError):
            budgets.set_budget(deps, actor="UADMIN", **bad)  # type: ignore[arg-type]
    with session_scope(deps.sessions) as s:
        rows = {(r.scope, r.scope_id, r.period): r.limit_usd for r in s.scalars(select(BudgetRow))}
        assert rows == {("user", "U1", "week"): D(60), ("team", "team", "month"): D(900)}
        audit = s.scalars(
            select(AuditEventRow)
            .where(AuditEventRow.action == "budget_set")
            .order_by(AuditEventRow.id)
        ).all()
        assert [(a.actor, a.target, a.detail["limit_usd"]) for a in audit] == [
            ("UADMIN", "user:U1", "50.00000000"),
            ("UADMIN", "user:U1", "60.00000000"),
            ("UADMIN", "team:team", "900.00000000"),
        ]


def test_show_lists_job_user_channel_and_team(deps: EngineDeps) -> None:
    _job(deps, "j-1", requester="U1", channel="C1", budget_usd="20")
    _spend(deps, "j-1", "5")
    text = budget_render.overview_text(budgets.show(deps, user="U1", channel="C1"))
    assert "• job j-1: $5.00 of $20.00 (25.0%)" in text
    assert "• you (<@U1>): $5.00 of $100.00 monthly (5.0%)" in text
    assert "• this channel (<#C1>): $5.00 of $200.00 monthly (2.5%)" in text
    assert "• the team: $5.00 of $500.00 monthly (1.0%)" in text
    assert "are refused" in text


def test_check_charges_escalates_differences_over_a_cent(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock, ops_channel: str
) -> None:
    with session_scope(deps.sessions) as s:
        seed_job(s, "j-1")
        seed_job(s, "j-2")
        i1 = seed_instance(s, "j-1", "501")
        i2 = seed_instance(s, "j-2", "502")
        seed_ledger(s, [("j-1", "U1", "C1", "compute", "1.000")], at=T0, instance_id=i1.id)
        seed_ledger(s, [("j-2", "U1", "C1", "compute", "2.000")], at=T0, instance_id=i2.id)
    provider.charge_rows = [
        {"source": "instance-501", "type": "instance", "amount": 1.009},
        {"source": "instance-502", "type": "instance", "amount": 2.5},
        {"source": "instance-777", "type": "instance", "amount": 3.0, "metadata": {"label": "x"}},
        {"source": "instance-778", "amount": 4.0, "metadata": {"label": "gpubot:j-lost"}},
        {"source": "stripe", "type": "credit", "amount": -25.0},
    ]
    assert charges.check_charges(deps, now=clock()) == ["502", "778"]
    msgs = _replies(deps, channel=ops_channel)
    assert len(msgs) == 2
    assert "instance 502 (job j-2): the provider charged $2.50, our ledger has $2.00" in msgs[0]
    assert "instance 778 (label gpubot:j-lost) was charged $4.00" in msgs[1]


def test_approved_over_budget_job_is_not_stopped_by_scope_budget(
    deps: EngineDeps, clock: FakeClock
) -> None:
    budgets.set_budget(deps, actor="UADMIN", scope="user", scope_id="U1", amount_usd=D(5))
    _job(deps, "j-ok", requester="U1")
    _job(deps, "j-no", requester="U1")
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-ok")
        assert job is not None
        job.plan = {enforce.BUDGET_APPROVED_KEY: "UADMIN"}
    _spend(deps, "j-no", "6")
    assert enforce.enforce(deps, now=clock()) == ["j-no"]
