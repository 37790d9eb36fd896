"""Budgets: spend from the ledger, launch checks, enforcement every tick, show/set, and the
daily reconciliation of the ledger with the provider's own charges.

Scopes and limits:

* ``job``: ``JobRow.budget_usd`` (``budget=`` at launch, else ``[budgets] job_default_usd``),
  counted over the job's whole life.
* ``user`` / ``channel`` / ``team``: a :class:`~gpubot.db.tables.BudgetRow` for the scope and
  period overrides the config's monthly default (``[budgets] user_monthly_usd`` ...); rows for
  other periods (``day``, ``week``) apply in addition. The team's scope id is :data:`TEAM_ID`.
  Periods are calendar periods in UTC (day, ISO week from Monday, month).

Spend is the sum of ledger entries whose ``period_end`` is after the period's start (so an
entry belongs to the period in which it ended). Money is ``Decimal`` USD throughout.

Bookkeeping: a job's announced thresholds live in ``JobRow.alerted_pcts`` as
``{"limit_usd": "<cap>", "pcts": [50, 80]}`` (a changed cap starts over); a scope's in
``AuditEventRow(action="budget_alert", target="<scope>:<id>")`` entries, one per threshold,
valid for the period and the limit they were raised for. ``BudgetRow.alerted`` is not used.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from gpubot import costs
from gpubot.config import OnExceed
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, BudgetRow, InstanceRow, JobRow, LedgerEntryRow
from gpubot.deps import EngineDeps
from gpubot.errors import CommandError
from gpubot.models import JobState
from gpubot.notify import ops, outbox
from gpubot.render import mrkdwn as md
from gpubot.render.blocks import ACTION_CANCEL, ACTION_EXTEND_BUDGET, button

logger = logging.getLogger(__name__)

TEAM_ID = "team"
"""The scope id of the team-wide budget."""
SCOPES = ("job", "user", "channel", "team")
PERIODS = ("day", "week", "month")
_PERIOD_ALIASES = {"today": "day", "day": "day", "week": "week", "month": "month"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RECENT_SPEND_WINDOW = timedelta(hours=1)
"""Scopes whose ledger grew within this window are checked even without a live job."""
CHARGE_TOLERANCE_USD = Decimal("0.01")
"""Differences between the ledger and the provider's charges above this are escalated."""
ALERT_ACTION = "budget_alert"
BUDGET_APPROVED_KEY = "budget_approved_by"
"""A job whose ``plan`` has this key set (by the approval of an over-budget launch) is not
stopped by user/channel/team budgets; its own cap still applies."""

_STOPPABLE = frozenset(
    s.value
    for s in JobState.live_states()
    if s not in {JobState.AWAITING_APPROVAL, JobState.TEARING_DOWN}
)
"""Jobs that enforcement looks at and may stop: live, approved and not already tearing down."""


# -- pure helpers ---------------------------------------------------------------------------


def normalize_period(period: str) -> str:
    """``day`` (also ``today``), ``week`` or ``month``.

    Raises:
        CommandError: any other value.
    """
    key = _PERIOD_ALIASES.get(period.strip().lower())
    if key is None:
        raise CommandError(f"unknown period {period!r}: use day, week or month")
    return key


def period_start(period: str, now: datetime) -> datetime:
    """The UTC start of the calendar ``period`` (day | week | month) containing ``now``.

    Weeks start on Monday 00:00 UTC. ``now`` must be timezone-aware.

    Raises:
        CommandError: an unknown period. ValueError: a naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("period_start needs an aware datetime")
    key = normalize_period(period)
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if key == "day":
        return day
    if key == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_adjective(period: str) -> str:
    return {"day": "daily", "week": "weekly", "month": "monthly"}[normalize_period(period)]


def scope_display(scope: str, scope_id: str) -> str:
    """How a scope is named in chat: ``user <@U1>``, ``channel <#C1>``, ``the team``."""
    match scope:
        case "user":
            return f"user {md.mention(scope_id)}"
        case "channel":
            return f"channel {md.channel_ref(scope_id)}"
        case "team":
            return "the team"
        case _:
            return f"job {md.inline(scope_id, 60)}"


def job_stop_reason(limit_usd: Decimal, spent_usd: Decimal) -> str:
    """The stop reason stored on a job that reached its own cap."""
    return f"budget of {costs.format_usd(limit_usd)} reached (spent {costs.format_usd(spent_usd)})"


def scope_stop_reason(
    scope: str, scope_id: str, period: str, limit: Decimal, spent: Decimal
) -> str:
    """The stop reason stored on the live jobs of a scope that reached its budget."""
    return (
        f"{period_adjective(period)} budget of {costs.format_usd(limit)} for "
        f"{scope_display(scope, scope_id)} reached (spent {costs.format_usd(spent)})"
    )


def forecast_line(spent_usd: Decimal, limit_usd: Decimal, burn_per_hour_usd: Decimal) -> str:
    """One sentence: when the budget runs out at the current burn rate.

    ``At the current $0.40/h the budget runs out in 3 h 10 m.``; nothing billing →
    ``Nothing is billing right now.``; already reached → ``The budget is used up.``
    """
    runout = costs.forecast_runout(spent_usd, limit_usd, burn_per_hour_usd)
    if runout is None:
        return "Nothing is billing right now."
    if runout == timedelta(0):
        return "The budget is used up."
    return (
        f"At the current {costs.format_usd(burn_per_hour_usd)}/h the budget runs out in "
        f"{costs.format_duration(runout)}."
    )


def job_alert_text(
    job_id: str, pct: int, spent_usd: Decimal, limit_usd: Decimal, burn_per_hour_usd: Decimal
) -> str:
    """The 50/80 % warning posted in a job's thread."""
    return (
        f":warning: Budget alert: {job_id} has used {pct}% of its "
        f"{costs.format_usd(limit_usd)} budget ({costs.format_usd(spent_usd)} spent). "
        + forecast_line(spent_usd, limit_usd, burn_per_hour_usd)
    )


def job_stop_text(job_id: str, reason: str) -> str:
    """The 100 % message posted in a job's thread."""
    return (
        f":octagonal_sign: Budget 100%: stopping {job_id}: {reason}. "
        "Saving a checkpoint where supported, "
        "then destroying the instance."
    )


def read_job_alerts(stored: Mapping[str, Any] | None, budget_usd: Decimal) -> set[int]:
    """Thresholds already announced for a job at its current cap (a changed cap resets them)."""
    if not stored:
        return set()
    try:
        if Decimal(str(stored.get("limit_usd"))) != budget_usd:
            return set()
    except (InvalidOperation, ValueError):
        return set()
    return {int(p) for p in stored.get("pcts", [])}


def dec(value: object) -> Decimal:
    """A Decimal from a vendor number (floats go through ``str``); junk raises ValueError."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not an amount: {value!r}")
    try:
        out = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as e:
        raise ValueError(f"not an amount: {value!r}") from e
    if not out.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    return out


def _quantize(x: Decimal) -> Decimal:
    return x.quantize(costs.LEDGER_QUANTUM, rounding=ROUND_HALF_UP)


# -- spend ----------------------------------------------------------------------------------


def _scope_filter(scope: str, scope_id: str) -> ColumnElement[bool] | None:
    match scope:
        case "job":
            return LedgerEntryRow.job_id == scope_id
        case "user":
            return LedgerEntryRow.requester == scope_id
        case "channel":
            return LedgerEntryRow.channel == scope_id
        case "team":
            return None
    raise ValueError(f"unknown budget scope {scope!r}; use one of {', '.join(SCOPES)}")


def spend(session: Session, *, scope: str, scope_id: str, since: datetime) -> Decimal:
    """Ledger total of ``scope``/``scope_id`` for entries ending after ``since`` (USD).

    ``scope`` is ``job`` | ``user`` | ``channel`` | ``team`` (``scope_id`` ignored for team).
    Returns ``Decimal(0)`` when nothing was spent, rounded to the ledger quantum.

    Raises:
        ValueError: an unknown scope.
    """
    stmt = select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
        LedgerEntryRow.period_end > since
    )
    cond = _scope_filter(scope, scope_id)
    if cond is not None:
        stmt = stmt.where(cond)
    total = session.scalar(stmt)
    return _quantize(dec(total or 0))


# -- limits ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    """One budget that applies to a scope."""

    scope: str
    scope_id: str
    period: str
    limit_usd: Decimal
    source: str
    """``override`` (a BudgetRow) or ``default`` (gpubot.toml ``[budgets]``)."""


def _default_monthly(deps: EngineDeps, scope: str) -> Decimal | None:
    policy = deps.config.budgets
    return {
        "user": policy.user_monthly_usd,
        "channel": policy.channel_monthly_usd,
        "team": policy.team_monthly_usd,
    }.get(scope)


def limits_for(deps: EngineDeps, session: Session, scope: str, scope_id: str) -> list[Limit]:
    """The budgets applying to a user, channel or team: BudgetRows, plus the config's monthly
    default unless a ``month`` row overrides it. Empty when nothing limits the scope."""
    rows = session.scalars(
        select(BudgetRow).where(BudgetRow.scope == scope, BudgetRow.scope_id == scope_id)
    ).all()
    limits = [
        Limit(scope, scope_id, normalize_period(r.period), dec(r.limit_usd), "override")
        for r in rows
    ]
    if not any(lim.period == "month" for lim in limits):
        default = _default_monthly(deps, scope)
        if default is not None:
            limits.append(Limit(scope, scope_id, "month", default, "default"))
    order = {p: i for i, p in enumerate(PERIODS)}
    return sorted(limits, key=lambda lim: order[lim.period])


# -- launch check ---------------------------------------------------------------------------


class LaunchOutcome(enum.StrEnum):
    OK = "ok"
    REFUSE = "refuse"
    NEEDS_APPROVAL = "needs_approval"


@dataclass(frozen=True, slots=True)
class LaunchBudgetVerdict:
    """Whether a launch fits the budgets. ``reason`` is safe to show in Slack."""

    outcome: LaunchOutcome
    reason: str = ""
    exceeded: tuple[Limit, ...] = ()

    @property
    def ok(self) -> bool:
        return self.outcome is LaunchOutcome.OK


def launch_verdict(
    checks: Sequence[tuple[Limit, Decimal]], estimate_usd: Decimal, on_exceed: OnExceed
) -> LaunchBudgetVerdict:
    """Pure decision: each ``(limit, spent)`` must satisfy spent + estimate <= limit.

    Any excess → ``refuse`` or ``needs_approval`` (per ``on_exceed``) with one reason per
    exceeded budget joined by ``; ``.
    """
    over: list[Limit] = []
    reasons: list[str] = []
    for limit, spent in checks:
        projected = spent + estimate_usd
        if projected > limit.limit_usd:
            over.append(limit)
            who = scope_display(limit.scope, limit.scope_id)
            reasons.append(
                f"the {period_adjective(limit.period)} budget of "
                f"{costs.format_usd(limit.limit_usd)} for {who}"
                f" would be exceeded ({costs.format_usd(spent)} spent + "
                f"{costs.format_usd(estimate_usd)} estimated = {costs.format_usd(projected)})"
            )
    if not over:
        return LaunchBudgetVerdict(LaunchOutcome.OK)
    outcome = (
        LaunchOutcome.NEEDS_APPROVAL if on_exceed is OnExceed.APPROVAL else LaunchOutcome.REFUSE
    )
    return LaunchBudgetVerdict(outcome, "; ".join(reasons), tuple(over))


def check_launch(
    deps: EngineDeps, session: Session, *, requester: str, channel: str, estimate_usd: Decimal
) -> LaunchBudgetVerdict:
    """Would a launch estimated at ``estimate_usd`` exceed the requester's, the channel's or
    the team's budget for the current period? Reads only; honours ``[budgets] on_exceed``."""
    now = deps.clock()
    checks: list[tuple[Limit, Decimal]] = []
    for scope, scope_id in (("user", requester), ("channel", channel), ("team", TEAM_ID)):
        for limit in limits_for(deps, session, scope, scope_id):
            spent = spend(
                session, scope=scope, scope_id=scope_id, since=period_start(limit.period, now)
            )
            checks.append((limit, spent))
    return launch_verdict(checks, dec(estimate_usd), deps.config.budgets.on_exceed)


# -- enforcement ----------------------------------------------------------------------------


def _burn_per_hour(session: Session, job_ids: Iterable[str]) -> Decimal:
    """$/h now billing for these jobs: compute of running instances plus their storage."""
    ids = list(job_ids)
    if not ids:
        return Decimal(0)
    rows = session.scalars(
        select(InstanceRow).where(
            InstanceRow.job_id.in_(ids),
            InstanceRow.destroyed_at.is_(None),
            InstanceRow.destroy_requested_at.is_(None),
            InstanceRow.provider_id.is_not(None),
        )
    ).all()
    burn = Decimal(0)
    for row in rows:
        if row.provider_status in (None, "running"):
            burn += dec(row.price_per_hour_usd)
        burn += costs.storage_cost_usd(
            row.storage_per_gb_month_usd, row.disk_gb, costs.SECONDS_PER_HOUR
        )
    return burn


def _request_stop(session: Session, job: JobRow, reason: str, now: datetime) -> bool:
    """Set the job's stop reason unless one is set already. True when this call set it."""
    result = session.execute(
        update(JobRow)
        .where(
            JobRow.id == job.id,
            JobRow.stop_requested_reason.is_(None),
            JobRow.state.in_(_STOPPABLE),
        )
        .values(stop_requested_reason=reason, due_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    outbox.reply(
        session,
        channel=job.channel,
        thread_key=job.id,
        job_id=job.id,
        text=job_stop_text(job.id, reason),
    )
    session.add(
        AuditEventRow(at=now, actor="gpubot", action="budget_stop", target=job.id, reason=reason)
    )
    return True


def _alert_blocks(job_id: str, text: str) -> list[dict[str, Any]]:
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "block_id": f"budget:{job_id}",
            "elements": [
                button(ACTION_EXTEND_BUDGET, "Raise budget", job_id, "primary"),
                button(ACTION_CANCEL, "Stop now", job_id, "danger"),
            ],
        },
    ]


STOP_LEAD_TICKS = 2
"""A cap is enforced this many ticks early: stopping takes a tick to reach the job (final
checkpoint) and another for the destroy request, and the instance bills until then. Stopping
when ``spent + burn × lead`` reaches the cap keeps the overshoot within one tick of price."""


def _spend_by_job(session: Session, job_ids: Sequence[str]) -> dict[str, Decimal]:
    """Ledger totals of many jobs in one query (one GROUP BY, not one query per job)."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(LedgerEntryRow.job_id, func.sum(LedgerEntryRow.amount_usd))
        .where(LedgerEntryRow.job_id.in_(list(job_ids)))
        .group_by(LedgerEntryRow.job_id)
    ).all()
    return {str(job_id): _quantize(dec(total or 0)) for job_id, total in rows}


def _burn_by_job(session: Session, job_ids: Sequence[str]) -> dict[str, Decimal]:
    """$/h billing now per job (see _burn_per_hour), for many jobs in one query."""
    if not job_ids:
        return {}
    rows = session.scalars(
        select(InstanceRow).where(
            InstanceRow.job_id.in_(list(job_ids)),
            InstanceRow.destroyed_at.is_(None),
            InstanceRow.destroy_requested_at.is_(None),
            InstanceRow.provider_id.is_not(None),
        )
    ).all()
    burn: dict[str, Decimal] = {}
    for row in rows:
        amount = costs.storage_cost_usd(
            row.storage_per_gb_month_usd, row.disk_gb, costs.SECONDS_PER_HOUR
        )
        if row.provider_status in (None, "running"):
            amount += dec(row.price_per_hour_usd)
        burn[row.job_id] = burn.get(row.job_id, Decimal(0)) + amount
    return burn


def _enforce_job(
    session: Session,
    job: JobRow,
    now: datetime,
    lead_seconds: float,
    *,
    spent: Decimal,
    burn: Decimal,
) -> bool:
    assert job.budget_usd is not None
    limit = dec(job.budget_usd)
    alerted = read_job_alerts(job.alerted_pcts, limit)
    projected = spent + burn * Decimal(str(lead_seconds)) / Decimal(3600)
    verdict = costs.budget_verdict(spent, limit, alerted)
    predicted = not verdict.stop and projected >= limit
    if predicted:
        verdict = costs.budget_verdict(limit, limit, alerted)
    if verdict.new_alert_pcts:
        pcts = sorted(alerted | set(verdict.new_alert_pcts))
        session.execute(
            update(JobRow)
            .where(JobRow.id == job.id)
            .values(alerted_pcts={"limit_usd": str(limit), "pcts": pcts})
            .execution_options(synchronize_session=False)
        )
        warn = [p for p in verdict.new_alert_pcts if p < 100]
        if warn and not verdict.stop:
            text = job_alert_text(job.id, max(warn), spent, limit, burn)
            outbox.reply(
                session,
                channel=job.channel,
                thread_key=job.id,
                job_id=job.id,
                text=text,
                blocks=_alert_blocks(job.id, text),
            )
    if verdict.stop and job.stop_requested_reason is None:
        reason = job_stop_reason(limit, spent)
        if predicted:
            reason += "; it would pass the cap before the next check"
        return _request_stop(session, job, reason, now)
    return False


def _scope_alerted(
    session: Session, scope: str, scope_id: str, limit: Limit, since: datetime
) -> set[int]:
    events = session.scalars(
        select(AuditEventRow).where(
            AuditEventRow.action == ALERT_ACTION,
            AuditEventRow.target == f"{scope}:{scope_id}",
            AuditEventRow.at >= since,
        )
    ).all()
    out: set[int] = set()
    for ev in events:
        d = ev.detail or {}
        if d.get("period") != limit.period:
            continue
        try:
            if dec(d.get("limit_usd")) != limit.limit_usd:
                continue
            out.add(int(d.get("pct", 0)))
        except (ValueError, TypeError):
            continue
    return out


def _scope_channels(
    deps: EngineDeps, session: Session, scope: str, scope_id: str, jobs: Sequence[JobRow]
) -> list[str]:
    """Where a scope's alerts go: the channel itself; a user's live-job channels (else the
    channel of their newest ledger entry); the team's ops channel (else live-job channels)."""
    if scope == "channel":
        return [scope_id]
    if scope == "team" and deps.config.ops.channel:
        return [deps.config.ops.channel]
    channels = sorted({j.channel for j in jobs})
    if not channels and scope == "user":
        last = session.scalars(
            select(LedgerEntryRow.channel)
            .where(LedgerEntryRow.requester == scope_id, LedgerEntryRow.channel != "")
            .order_by(LedgerEntryRow.id.desc())
            .limit(1)
        ).first()
        if last:
            channels = [last]
    return channels


def _enforce_scope(
    deps: EngineDeps,
    session: Session,
    scope: str,
    scope_id: str,
    jobs: Sequence[JobRow],
    now: datetime,
) -> list[str]:
    stopped: list[str] = []
    for limit in limits_for(deps, session, scope, scope_id):
        since = period_start(limit.period, now)
        spent = spend(session, scope=scope, scope_id=scope_id, since=since)
        alerted = _scope_alerted(session, scope, scope_id, limit, since)
        verdict = costs.budget_verdict(spent, limit.limit_usd, alerted)
        who = scope_display(scope, scope_id)
        adjective = period_adjective(limit.period)
        for pct in verdict.new_alert_pcts:
            session.add(
                AuditEventRow(
                    at=now,
                    actor="gpubot",
                    action=ALERT_ACTION,
                    target=f"{scope}:{scope_id}",
                    reason=f"{pct}% of the {adjective} budget",
                    detail={
                        "pct": pct,
                        "period": limit.period,
                        "period_start": since.isoformat(),
                        "limit_usd": str(limit.limit_usd),
                        "spent_usd": str(spent),
                    },
                )
            )
        text = ""
        if verdict.stop:
            reason = scope_stop_reason(scope, scope_id, limit.period, limit.limit_usd, spent)
            newly = [
                j.id
                for j in jobs
                if not (j.plan or {}).get(BUDGET_APPROVED_KEY)
                and _request_stop(session, j, reason, now)
            ]
            stopped.extend(newly)
            if 100 in verdict.new_alert_pcts or newly:
                text = f":octagonal_sign: Budget reached: {reason}."
                if newly:
                    text += (
                        f" Stopping {len(newly)} live job(s) (checkpoint where supported, then "
                        f"destroy): {', '.join(newly)}."
                    )
                else:
                    text += " New launches will be refused or need approval."
        elif verdict.new_alert_pcts:
            burn = _burn_per_hour(session, [j.id for j in jobs])
            text = (
                f":warning: Budget alert: {who} has used {max(verdict.new_alert_pcts)}% of the "
                f"{adjective} budget of {costs.format_usd(limit.limit_usd)} "
                f"({costs.format_usd(spent)} spent). "
                + forecast_line(spent, limit.limit_usd, burn)
            )
        if text:
            for channel in _scope_channels(deps, session, scope, scope_id, jobs):
                outbox.to_channel(session, channel=channel, text=text)
        if verdict.stop:
            # Jobs of this scope are stopped; a later, stricter limit adds nothing.
            break
    return stopped


def enforce(
    deps: EngineDeps, *, now: datetime, tick_interval_seconds: float | None = None
) -> list[str]:
    """Check every budget against the ledger; run every tick right after metering.

    For each live, approved job with a cap: alerts at 50/80 % in its thread (each once per
    cap, with a forecast at the current $/h), and at 100 % sets ``stop_requested_reason`` (the
    engine then checkpoints where supported and destroys) and says so in the thread. Then the
    same for every user, channel and the team with a live job or recent spend: alerts to the
    scope's channel(s), and at 100 % every live job of the scope is told to stop.

    Database only (no provider calls), one transaction. Writes ``alerted_pcts``,
    ``stop_requested_reason`` and ``due_at`` with plain guarded UPDATEs (no job lock needed:
    the engine never writes these columns). Returns the ids of jobs told to stop by this call
    (a job already told to stop is not repeated).
    """
    stopped: list[str] = []
    with session_scope(deps.sessions) as session:
        jobs = list(
            session.scalars(
                select(JobRow).where(JobRow.state.in_(_STOPPABLE)).order_by(JobRow.created_at)
            )
        )
        capped = [j.id for j in jobs if j.budget_usd is not None]
        spent_by_job = _spend_by_job(session, capped)
        burn_by_job = _burn_by_job(session, capped)
        interval = max(deps.settings.tick_seconds, tick_interval_seconds or 0.0)
        lead = STOP_LEAD_TICKS * interval
        for job in jobs:
            if job.budget_usd is not None and _enforce_job(
                session,
                job,
                now,
                lead,
                spent=spent_by_job.get(job.id, Decimal(0)),
                burn=burn_by_job.get(job.id, Decimal(0)),
            ):
                stopped.append(job.id)
        live = [j for j in jobs if j.id not in stopped and j.stop_requested_reason is None]
        recent = now - RECENT_SPEND_WINDOW
        scopes: list[tuple[str, str, list[JobRow]]] = []
        for scope, column, attr in (
            ("user", LedgerEntryRow.requester, "requester"),
            ("channel", LedgerEntryRow.channel, "channel"),
        ):
            ids = {getattr(j, attr) for j in jobs}
            ids |= set(
                session.scalars(
                    select(column).where(LedgerEntryRow.created_at >= recent).distinct()
                )
            )
            for scope_id in sorted(i for i in ids if i):
                scopes.append((scope, scope_id, [j for j in live if getattr(j, attr) == scope_id]))
        scopes.append(("team", TEAM_ID, live))
        for scope, scope_id, scope_jobs in scopes:
            scope_jobs = [j for j in scope_jobs if j.id not in stopped]
            stopped.extend(_enforce_scope(deps, session, scope, scope_id, scope_jobs, now))
    if stopped:
        deps.enqueuer.kick()
    return stopped


# -- show / set -----------------------------------------------------------------------------


def _usage_line(label: str, spent: Decimal, limit: Decimal | None, period: str) -> str:
    if limit is None:
        return f"• {label}: {costs.format_usd(spent)} this {period}, no limit"
    pct = costs.budget_verdict(spent, limit).used_pct
    return (
        f"• {label}: {costs.format_usd(spent)} of {costs.format_usd(limit)} "
        f"{period_adjective(period)} ({pct}%)"
    )


def show(deps: EngineDeps, *, user: str, channel: str) -> str:
    """A text summary of the budgets that apply to ``user`` in ``channel``: their live jobs'
    caps, their own, the channel's and the team's, with spend so far in each period."""
    now = deps.clock()
    lines = ["*Budgets*"]
    with session_scope(deps.sessions) as session:
        jobs = session.scalars(
            select(JobRow)
            .where(JobRow.requester == user, JobRow.state.in_(_STOPPABLE))
            .order_by(JobRow.created_at)
        ).all()
        for job in jobs:
            spent = spend(session, scope="job", scope_id=job.id, since=EPOCH)
            if job.budget_usd is None:
                lines.append(f"• job {job.id}: {costs.format_usd(spent)} so far, no cap")
            else:
                pct = costs.budget_verdict(spent, dec(job.budget_usd)).used_pct
                lines.append(
                    f"• job {job.id}: {costs.format_usd(spent)} of "
                    f"{costs.format_usd(dec(job.budget_usd))} ({pct}%)"
                )
        for scope, scope_id, label in (
            ("user", user, f"you ({md.mention(user)})"),
            ("channel", channel, f"this channel ({md.channel_ref(channel)})"),
            ("team", TEAM_ID, "the team"),
        ):
            limits = limits_for(deps, session, scope, scope_id)
            if not limits:
                spent = spend(
                    session, scope=scope, scope_id=scope_id, since=period_start("month", now)
                )
                lines.append(_usage_line(label, spent, None, "month"))
            for limit in limits:
                spent = spend(
                    session,
                    scope=scope,
                    scope_id=scope_id,
                    since=period_start(limit.period, now),
                )
                lines.append(_usage_line(label, spent, limit.limit_usd, limit.period))
    action = (
        "need an admin's approval"
        if deps.config.budgets.on_exceed is OnExceed.APPROVAL
        else "are refused"
    )
    lines.append(f"Launches that would exceed a budget {action}; at 100% live jobs are stopped.")
    return "\n".join(lines)


def set_budget(
    deps: EngineDeps,
    *,
    actor: str,
    scope: str,
    scope_id: str | None,
    amount_usd: Decimal,
    period: str = "month",
) -> str:
    """Set a budget and record who did it (AuditEventRow ``budget_set``). Returns a reply text.

    ``scope`` user | channel | team write a BudgetRow (created or updated; team's id is
    :data:`TEAM_ID`); ``job`` sets the job's cap (its alerts start over). Permission checks
    are the caller's.

    Raises:
        CommandError: unknown scope or period, a negative/non-finite amount, a missing id,
            or an unknown job.
    """
    try:
        amount = dec(amount_usd)
    except ValueError as e:
        raise CommandError(f"not an amount: {amount_usd!r}") from e
    if amount < 0:
        raise CommandError("a budget cannot be negative")
    amount = _quantize(amount)
    if scope not in SCOPES:
        raise CommandError(f"unknown budget scope {scope!r}: use team, user, channel or job")
    key = normalize_period(period)
    if scope == "team":
        scope_id = TEAM_ID
    if not scope_id:
        raise CommandError(f"budget set {scope} needs a {scope}")
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        if scope == "job":
            job = session.get(JobRow, scope_id)
            if job is None:
                raise CommandError(f"no job {scope_id}")
            old = job.budget_usd
            session.execute(
                update(JobRow)
                .where(JobRow.id == scope_id)
                .values(budget_usd=amount)
                .execution_options(synchronize_session=False)
            )
            spent = spend(session, scope="job", scope_id=scope_id, since=EPOCH)
            text = (
                f"Budget of job {scope_id} set to {costs.format_usd(amount)} (was "
                f"{costs.format_usd(dec(old)) if old is not None else 'no cap'}); "
                f"spent so far {costs.format_usd(spent)}."
            )
            outbox.reply(
                session,
                channel=job.channel,
                thread_key=job.id,
                job_id=job.id,
                text=f"{md.mention(actor)} set the budget to {costs.format_usd(amount)}.",
            )
            old_str = None if old is None else str(old)
        else:
            row = session.scalars(
                select(BudgetRow).where(
                    BudgetRow.scope == scope,
                    BudgetRow.scope_id == scope_id,
                    BudgetRow.period == key,
                )
            ).first()
            if row is None:
                default = _default_monthly(deps, scope) if key == "month" else None
                old_str = None if default is None else f"{default} (default)"
                session.add(
                    BudgetRow(
                        scope=scope,
                        scope_id=scope_id,
                        period=key,
                        limit_usd=amount,
                        updated_by=actor,
                        updated_at=now,
                    )
                )
            else:
                old_str = str(row.limit_usd)
                row.limit_usd = amount
                row.updated_by = actor
                row.updated_at = now
            spent = spend(session, scope=scope, scope_id=scope_id, since=period_start(key, now))
            text = (
                f"{period_adjective(key).capitalize()} budget for {scope_display(scope, scope_id)}"
                f" set to {costs.format_usd(amount)} (was {old_str or 'no limit'}); spent this "
                f"{key}: {costs.format_usd(spent)}."
            )
        session.add(
            AuditEventRow(
                at=now,
                actor=actor,
                action="budget_set",
                target=f"{scope}:{scope_id}",
                detail={"period": key, "limit_usd": str(amount), "previous": old_str},
            )
        )
    return text


# -- reconciliation with the provider's charges ---------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceCharges:
    """The provider's charges for one instance, summed over its rows."""

    provider_id: str
    amount_usd: Decimal
    start: datetime | None
    end: datetime | None
    label: str | None


def _ts(value: object) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def charges_by_instance(rows: Iterable[Mapping[str, object]]) -> dict[str, InstanceCharges]:
    """Sum vast charge rows per instance. Pure.

    Only rows with ``source`` ``instance-<id>`` count (credits, transfers and other sources
    are skipped, as are rows with an unreadable amount). ``start``/``end`` (epoch seconds) are
    the earliest start and latest end seen; ``label`` comes from ``metadata.label``.
    """
    out: dict[str, InstanceCharges] = {}
    for row in rows:
        source = row.get("source")
        if not isinstance(source, str) or not source.startswith("instance-"):
            continue
        pid = source.removeprefix("instance-")
        try:
            amount = dec(row.get("amount"))
        except ValueError:
            logger.warning("charges: unreadable amount for %s", source)
            continue
        meta = row.get("metadata")
        label = meta.get("label") if isinstance(meta, Mapping) else None
        start, end = _ts(row.get("start")), _ts(row.get("end"))
        prev = out.get(pid)
        if prev is not None:
            amount += prev.amount_usd
            start = min((t for t in (prev.start, start) if t is not None), default=None)
            end = max((t for t in (prev.end, end) if t is not None), default=None)
            label = prev.label or label
        out[pid] = InstanceCharges(
            pid, amount, start, end, label if isinstance(label, str) else None
        )
    return out


def reconcile_charges(deps: EngineDeps, *, now: datetime) -> list[str]:
    """Compare our ledger per instance with the provider's charges; escalate differences.

    Run daily. For every instance in ``provider.charges()`` that we have a record of, the
    ledger entries of its rows overlapping the charges' time window are summed; a difference
    over :data:`CHARGE_TOLERANCE_USD` is escalated to ops (and audited). A charged instance we
    have no record of is escalated only if its label carries our prefix (spend we never
    metered). Returns the provider ids with a difference.

    Raises:
        ProviderError: the charges could not be read (TransientProviderError: try later).
    """
    charged = charges_by_instance(deps.provider.charges())
    prefix = f"{deps.settings.label_prefix}:"
    differing: list[str] = []
    with session_scope(deps.sessions) as session:
        for pid, ch in sorted(charged.items()):
            rows = session.scalars(select(InstanceRow).where(InstanceRow.provider_id == pid)).all()
            if not rows:
                if (
                    ch.label
                    and ch.label.startswith(prefix)
                    and ch.amount_usd > CHARGE_TOLERANCE_USD
                ):
                    differing.append(pid)
                    ops.escalate(
                        session,
                        f"Billing: instance {md.inline(pid, 40)} "
                        f"(label {md.inline(ch.label, 100)}) was charged "
                        f"{costs.format_usd(ch.amount_usd)} but has no record in our ledger.",
                    )
                continue
            stmt = select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
                LedgerEntryRow.instance_id.in_([r.id for r in rows])
            )
            if ch.start is not None:
                stmt = stmt.where(LedgerEntryRow.period_end > ch.start)
            if ch.end is not None:
                stmt = stmt.where(LedgerEntryRow.period_start < ch.end)
            ours = _quantize(dec(session.scalar(stmt) or 0))
            diff = ch.amount_usd - ours
            if abs(diff) <= CHARGE_TOLERANCE_USD:
                continue
            differing.append(pid)
            job_ids = sorted({r.job_id for r in rows})
            text = (
                f"Billing difference on instance {pid} (job {', '.join(job_ids)}): the provider "
                f"charged {costs.format_usd(ch.amount_usd)}, our ledger has "
                f"{costs.format_usd(ours)} (difference {costs.format_usd(diff)})."
            )
            ops.escalate(session, text)
            session.add(
                AuditEventRow(
                    at=now,
                    actor="gpubot",
                    action="charges_differ",
                    target=pid,
                    reason=text,
                    detail={"charged_usd": str(ch.amount_usd), "ledger_usd": str(ours)},
                )
            )
        session.add(
            AuditEventRow(
                at=now,
                actor="gpubot",
                action="charges_reconciled",
                target="",
                detail={"instances": len(charged), "differing": differing},
            )
        )
    return differing
