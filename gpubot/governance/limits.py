"""Budget limits and spend: which budgets apply to a scope, what it has spent, what it burns.

Scopes and limits:

* ``job``: ``JobRow.budget_usd`` (``budget=`` at launch, else ``[budgets] job_default_usd``),
  counted over the job's whole life.
* ``user`` / ``channel`` / ``team``: a :class:`~gpubot.db.tables.BudgetRow` for the scope and
  period overrides the config's monthly default (``[budgets] user_monthly_usd`` ...); rows for
  other periods (``day``, ``week``) apply in addition. The team's scope id is :data:`TEAM_ID`.

Spend is the sum of ledger entries whose ``period_end`` is after the period's start (so an
entry belongs to the period in which it ended). Money is ``Decimal`` USD throughout. Every
figure shown for a budget (``/gpu budget``, App Home, the launch gate, enforcement) comes from
here. Reads only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from gpubot import costs
from gpubot.db.tables import BudgetRow, InstanceRow, LedgerEntryRow
from gpubot.deps import EngineDeps
from gpubot.governance.periods import PERIODS, dec, normalize_period, period_start, quantize
from gpubot.render.budgets import ScopeUsage

TEAM_ID = "team"
"""The scope id of the team-wide budget."""
SCOPES = ("job", "user", "channel", "team")


@dataclass(frozen=True, slots=True)
class Limit:
    """One budget that applies to a scope."""

    scope: str
    scope_id: str
    period: str
    limit_usd: Decimal
    source: str
    """``override`` (a BudgetRow) or ``default`` (gpubot.toml ``[budgets]``)."""


# -- spend ------------------------------------------------------------------------------------


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
    return quantize(dec(session.scalar(stmt) or 0))


def spend_by_job(session: Session, job_ids: Sequence[str]) -> dict[str, Decimal]:
    """Whole-life ledger totals of many jobs in one query; jobs without entries are absent."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(LedgerEntryRow.job_id, func.sum(LedgerEntryRow.amount_usd))
        .where(LedgerEntryRow.job_id.in_(list(job_ids)))
        .group_by(LedgerEntryRow.job_id)
    ).all()
    return {str(job_id): quantize(dec(total or 0)) for job_id, total in rows}


# -- limits -----------------------------------------------------------------------------------


def default_monthly(deps: EngineDeps, scope: str) -> Decimal | None:
    """The config's monthly limit for ``user``/``channel``/``team`` (None: unlimited/other)."""
    policy = deps.config.budgets
    return {
        "user": policy.user_monthly_usd,
        "channel": policy.channel_monthly_usd,
        "team": policy.team_monthly_usd,
    }.get(scope)


def limits_for(deps: EngineDeps, session: Session, scope: str, scope_id: str) -> list[Limit]:
    """The budgets applying to a user, channel or team: BudgetRows, plus the config's monthly
    default unless a ``month`` row overrides it; shortest period first. Empty when nothing
    limits the scope."""
    rows = session.scalars(
        select(BudgetRow).where(BudgetRow.scope == scope, BudgetRow.scope_id == scope_id)
    ).all()
    limits = [
        Limit(scope, scope_id, normalize_period(r.period), dec(r.limit_usd), "override")
        for r in rows
    ]
    if not any(lim.period == "month" for lim in limits):
        default = default_monthly(deps, scope)
        if default is not None:
            limits.append(Limit(scope, scope_id, "month", default, "default"))
    order = {p: i for i, p in enumerate(PERIODS)}
    return sorted(limits, key=lambda lim: order[lim.period])


def scope_usage(
    deps: EngineDeps, session: Session, scope: str, scope_id: str, now: datetime
) -> list[ScopeUsage]:
    """Spend against each budget of a user, channel or team in its current period (one entry
    per limit, shortest period first); an unlimited scope gives one ``month`` entry with
    ``limit_usd`` None. What ``/gpu budget show`` and App Home display."""
    limits = limits_for(deps, session, scope, scope_id)
    if not limits:
        spent = spend(session, scope=scope, scope_id=scope_id, since=period_start("month", now))
        return [ScopeUsage(scope, scope_id, "month", spent, None)]
    return [
        ScopeUsage(
            scope,
            scope_id,
            lim.period,
            spend(session, scope=scope, scope_id=scope_id, since=period_start(lim.period, now)),
            lim.limit_usd,
        )
        for lim in limits
    ]


# -- burn -------------------------------------------------------------------------------------


def _billing_instances(session: Session, job_ids: Sequence[str]) -> Sequence[InstanceRow]:
    return session.scalars(
        select(InstanceRow).where(
            InstanceRow.job_id.in_(list(job_ids)),
            InstanceRow.destroyed_at.is_(None),
            InstanceRow.destroy_requested_at.is_(None),
            InstanceRow.provider_id.is_not(None),
        )
    ).all()


def _instance_burn(row: InstanceRow) -> Decimal:
    amount = costs.storage_cost_usd(
        row.storage_per_gb_month_usd, row.disk_gb, costs.SECONDS_PER_HOUR
    )
    if row.provider_status in (None, "running"):
        amount += dec(row.price_per_hour_usd)
    return amount


def burn_per_hour(session: Session, job_ids: Iterable[str]) -> Decimal:
    """$/h now billing for these jobs: compute of running instances plus their storage, for
    rentals not yet asked to be destroyed. ``Decimal(0)`` for no jobs."""
    ids = list(job_ids)
    if not ids:
        return Decimal(0)
    return sum((_instance_burn(row) for row in _billing_instances(session, ids)), Decimal(0))


def burn_by_job(session: Session, job_ids: Sequence[str]) -> dict[str, Decimal]:
    """:func:`burn_per_hour` per job, for many jobs in one query; idle jobs are absent."""
    if not job_ids:
        return {}
    burn: dict[str, Decimal] = {}
    for row in _billing_instances(session, job_ids):
        burn[row.job_id] = burn.get(row.job_id, Decimal(0)) + _instance_burn(row)
    return burn
