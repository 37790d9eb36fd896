"""``/gpu budget show | set``, the data side: what applies to a user in a channel, and setting
a job's cap or a user's, channel's or the team's limit.

Both return plain data (:class:`~gpubot.render.budgets.BudgetOverview`,
:class:`~gpubot.render.budgets.BudgetChange`); the replies are built by
:func:`gpubot.render.budgets.overview_text` and :func:`gpubot.render.budgets.budget_set_text`.
The rest of governance: :mod:`.periods` (calendar periods, amounts), :mod:`.limits` (spend and
limits per scope), :mod:`.gate` (the launch budget gate), :mod:`.enforce` (alerts and stops
every tick), :mod:`.charges` (the daily billing check), :mod:`.reports` (``/gpu cost``).
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select, update

from gpubot.config import OnExceed
from gpubot.db.engine import session_scope
from gpubot.db.tables import BudgetRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.errors import CommandError
from gpubot.governance.enforce import STOPPABLE
from gpubot.governance.limits import (
    SCOPES,
    TEAM_ID,
    default_monthly,
    scope_usage,
    spend,
    spend_by_job,
)
from gpubot.governance.periods import EPOCH, dec, normalize_period, period_start, quantize
from gpubot.notify import audit, outbox
from gpubot.render import budgets as text
from gpubot.render.budgets import BudgetChange, BudgetOverview, JobUsage


def show(deps: EngineDeps, *, user: str, channel: str) -> BudgetOverview:
    """The budgets that apply to ``user`` in ``channel``: their live jobs' caps with spend so
    far, then their own, the channel's and the team's limits with spend in each current
    period (the same figures the launch gate and enforcement use). Reads only."""
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        jobs = session.scalars(
            select(JobRow)
            .where(JobRow.requester == user, JobRow.state.in_(STOPPABLE))
            .order_by(JobRow.created_at)
        ).all()
        spent = spend_by_job(session, [job.id for job in jobs])
        job_usage = tuple(
            JobUsage(
                job.id,
                spent.get(job.id, Decimal(0)),
                None if job.budget_usd is None else dec(job.budget_usd),
            )
            for job in jobs
        )
        scopes = tuple(
            usage
            for scope, scope_id in (("user", user), ("channel", channel), ("team", TEAM_ID))
            for usage in scope_usage(deps, session, scope, scope_id, now)
        )
    return BudgetOverview(
        jobs=job_usage,
        scopes=scopes,
        over_budget_needs_approval=deps.config.budgets.on_exceed is OnExceed.APPROVAL,
    )


def set_budget(
    deps: EngineDeps,
    *,
    actor: str,
    scope: str,
    scope_id: str | None,
    amount_usd: Decimal,
    period: str = "month",
) -> BudgetChange:
    """Set a budget and record who did it (audit ``budget_set``). Returns what changed.

    ``scope`` user | channel | team write a BudgetRow (created or updated; team's id is
    :data:`~gpubot.governance.limits.TEAM_ID`); ``job`` sets the job's cap (its alerts start
    over) and says so in the job's thread. Permission checks are the caller's.

    Raises:
        CommandError: unknown scope or period, a negative/non-finite amount, a missing id,
            or an unknown job. Nothing is written then.
    """
    try:
        amount = dec(amount_usd)
    except ValueError as e:
        raise CommandError(f"not an amount: {amount_usd!r}") from e
    if amount < 0:
        raise CommandError("a budget cannot be negative")
    amount = quantize(amount)
    if scope not in SCOPES:
        raise CommandError(f"unknown budget scope {scope!r}: use team, user, channel or job")
    key = normalize_period(period)
    if scope == "team":
        scope_id = TEAM_ID
    if not scope_id:
        raise CommandError(f"budget set {scope} needs a {scope}")
    now = deps.clock()
    previous: Decimal | None
    is_default = False
    with session_scope(deps.sessions) as session:
        if scope == "job":
            job = session.get(JobRow, scope_id)
            if job is None:
                raise CommandError(f"no job {scope_id}")
            previous = None if job.budget_usd is None else dec(job.budget_usd)
            session.execute(
                update(JobRow)
                .where(JobRow.id == scope_id)
                .values(budget_usd=amount)
                .execution_options(synchronize_session=False)
            )
            spent = spend(session, scope="job", scope_id=scope_id, since=EPOCH)
            outbox.reply(
                session,
                channel=job.channel,
                thread_key=job.id,
                job_id=job.id,
                text=text.job_budget_set_note(actor, amount),
            )
        else:
            row = session.scalars(
                select(BudgetRow).where(
                    BudgetRow.scope == scope,
                    BudgetRow.scope_id == scope_id,
                    BudgetRow.period == key,
                )
            ).first()
            if row is None:
                previous = default_monthly(deps, scope) if key == "month" else None
                is_default = previous is not None
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
                previous = row.limit_usd
                row.limit_usd = amount
                row.updated_by = actor
                row.updated_at = now
            spent = spend(session, scope=scope, scope_id=scope_id, since=period_start(key, now))
        previous_str = None if previous is None else str(previous)
        if is_default:
            previous_str = f"{previous_str} (default)"
        audit.record(
            session,
            actor,
            "budget_set",
            f"{scope}:{scope_id}",
            detail={"period": key, "limit_usd": str(amount), "previous": previous_str},
            at=now,
        )
    return BudgetChange(scope, scope_id, key, amount, previous, is_default, spent)
