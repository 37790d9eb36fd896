"""Budget limits and spend: which budgets apply to a scope, what it has spent, what it burns.

Scopes and limits:

* ``job``: ``JobRow.budget_usd`` (``budget=`` at launch, else ``[budgets] job_default_usd``),
  counted over the job's whole life.
* ``user`` / ``channel`` / ``team``: a :class:`~gpubot.db.tables.BudgetRow` for the scope and
  period overrides the config's monthly default (``[budgets] user_monthly_usd`` ...); rows for
  other periods (``day``, ``week``) apply in addition. The team's scope id is :data:`TEAM_ID`.

Spend is the sum of ledger entries whose ``period_end`` is after the period's start (so an
entry belongs to the period in which it ended), read from the per-day spend summaries
(:mod:`gpubot.db.spend`, kept in the ledger's own transactions): at most one row per day of
the period, never a scan of the ledger, so a check costs the same with 1 million ledger rows
as with none. Burn rates come from the billing instances' current prices, not from history.
Money is ``Decimal`` USD throughout. Every figure shown for a budget (``/gpu budget``, App
Home, the launch gate, enforcement) comes from here. Reads only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, and_, func, or_, select
from sqlalchemy.orm import Session

from gpubot import costs
from gpubot.db import spend as summaries
from gpubot.db.tables import BudgetRow, InstanceRow, SpendSummaryRow
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


def _scope_id(scope: str, scope_id: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"unknown budget scope {scope!r}; use one of {', '.join(SCOPES)}")
    return TEAM_ID if scope == "team" else scope_id


def spend(session: Session, *, scope: str, scope_id: str, since: datetime) -> Decimal:
    """Ledger total of ``scope``/``scope_id`` for entries ending after ``since`` (USD).

    ``scope`` is ``job`` | ``user`` | ``channel`` | ``team`` (``scope_id`` ignored for team);
    ``since`` a UTC midnight (a period start, or ``periods.EPOCH`` for all time). Read from
    the spend summaries: one indexed range over the scope's day rows. Returns ``Decimal(0)``
    when nothing was spent, with the ledger quantum's 8 places.

    Raises:
        ValueError: an unknown scope, or a ``since`` that is not a UTC midnight.
    """
    key = _scope_id(scope, scope_id)
    total = session.scalar(
        select(func.sum(SpendSummaryRow.amount_usd_e8)).where(
            SpendSummaryRow.scope == scope,
            SpendSummaryRow.scope_id == key,
            SpendSummaryRow.day >= summaries.day_of(since),
        )
    )
    return quantize(summaries.from_e8(total))


@dataclass(frozen=True, slots=True)
class DailySpend:
    """One scope's spend summaries per UTC day (integers of 10^-8 USD), from a first day on:
    every period starting on or after that day is answered without another query."""

    first_day: date
    amount_e8_by_day: Mapping[date, int]

    def since(self, since: datetime) -> Decimal:
        """The same figure as :func:`spend` with this ``since`` (a UTC midnight no earlier
        than ``first_day``).

        Raises:
            ValueError: ``since`` is not a UTC midnight, or is before ``first_day``.
        """
        day = summaries.day_of(since)
        if day < self.first_day:
            raise ValueError(f"spend read from {self.first_day}, not from {day}")
        total = sum(e8 for d, e8 in self.amount_e8_by_day.items() if d >= day)
        return quantize(summaries.from_e8(total))


def daily_spend(
    session: Session, keys: Iterable[tuple[str, str]], *, since: datetime
) -> dict[tuple[str, str], DailySpend]:
    """Spend per day of many user/channel/team scopes from ``since`` (a UTC midnight) on, in
    one query over the spend summaries: the earliest period start of a tick's budget checks,
    then :meth:`DailySpend.since` per limit. Every key given is in the result (an empty
    :class:`DailySpend` when nothing was spent), the team's under ``("team", TEAM_ID)``
    whatever id was given for it.

    Raises:
        ValueError: an unknown scope, or a ``since`` that is not a UTC midnight.
    """
    first = summaries.day_of(since)
    wanted: dict[str, set[str]] = {}
    out: dict[tuple[str, str], dict[date, int]] = {}
    for scope, scope_id in keys:
        key = _scope_id(scope, scope_id)
        wanted.setdefault(scope, set()).add(key)
        out[(scope, key)] = {}
    if wanted:
        t = SpendSummaryRow
        rows = session.execute(
            select(t.scope, t.scope_id, t.day, t.amount_usd_e8).where(
                t.day >= first,
                or_(*(and_(t.scope == scope, t.scope_id.in_(sorted(ids)))
                      for scope, ids in sorted(wanted.items()))),
            )
        )
        for scope, key, day, amount_e8 in rows:
            days = out[(scope, key)]
            days[day] = days.get(day, 0) + int(amount_e8)
    return {k: DailySpend(first, days) for k, days in out.items()}


def spend_by_job(session: Session, job_ids: Sequence[str]) -> dict[str, Decimal]:
    """Whole-life ledger totals of many jobs in one query (from the spend summaries); jobs
    without ledger entries are absent."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(SpendSummaryRow.scope_id, func.sum(SpendSummaryRow.amount_usd_e8))
        .where(SpendSummaryRow.scope == "job", SpendSummaryRow.scope_id.in_(list(job_ids)))
        .group_by(SpendSummaryRow.scope_id)
    ).all()
    return {str(job_id): quantize(summaries.from_e8(total)) for job_id, total in rows}


def recently_billed(session: Session, scope: str, since: datetime) -> set[str]:
    """Ids of ``scope`` (user, channel, ...) with a ledger entry created at or after
    ``since``, from the summaries' ``last_entry_at`` (indexed; no ledger scan)."""
    return set(
        session.scalars(
            select(SpendSummaryRow.scope_id)
            .where(SpendSummaryRow.last_entry_at >= since, SpendSummaryRow.scope == scope)
            .distinct()
        )
    )


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
    return _limits(deps, scope, scope_id, rows)


def limits_for_scopes(
    deps: EngineDeps, session: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[Limit]]:
    """:func:`limits_for` of many ``(scope, scope_id)`` at once: one query for the BudgetRows
    of the scopes named (the budgets table holds overrides only: a few rows per scope)."""
    wanted = list(dict.fromkeys(keys))
    by_key: dict[tuple[str, str], list[BudgetRow]] = {k: [] for k in wanted}
    scopes = sorted({scope for scope, _ in wanted})
    if scopes:
        for row in session.scalars(select(BudgetRow).where(BudgetRow.scope.in_(scopes))):
            found = by_key.get((row.scope, row.scope_id))
            if found is not None:
                found.append(row)
    return {
        (scope, scope_id): _limits(deps, scope, scope_id, rows)
        for (scope, scope_id), rows in by_key.items()
    }


def _limits(
    deps: EngineDeps, scope: str, scope_id: str, rows: Iterable[BudgetRow]
) -> list[Limit]:
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


def _billing_instances(session: Session, job_ids: Sequence[str]) -> Sequence[Row[Any]]:
    """The billing rentals of these jobs: only the columns a burn rate needs (rows with
    attribute access, not ORM objects: 1000 per tick at 1000 jobs)."""
    i = InstanceRow
    return session.execute(
        select(
            i.job_id, i.provider_status, i.price_per_hour_usd, i.storage_per_gb_month_usd,
            i.disk_gb,
        ).where(
            i.job_id.in_(list(job_ids)),
            i.destroyed_at.is_(None),
            i.destroy_requested_at.is_(None),
            i.provider_id.is_not(None),
        )
    ).all()


def _instance_burn(row: Row[Any]) -> Decimal:
    amount = costs.storage_cost_usd(
        row.storage_per_gb_month_usd, row.disk_gb, costs.SECONDS_PER_HOUR
    )
    if row.provider_status in (None, "running"):
        amount += dec(row.price_per_hour_usd)
    return amount


def burn_per_hour(session: Session, job_ids: Iterable[str]) -> Decimal:
    """$/h now billing for these jobs: compute of running instances plus their storage, for
    rentals not yet asked to be destroyed. ``Decimal(0)`` for no jobs.

    From the instances' current prices (``price_per_hour_usd``, storage rate and disk) only:
    the ledger is not read, so the figure does not depend on how much history it holds."""
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
