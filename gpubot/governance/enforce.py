"""Budget enforcement, every reconcile tick: 50/80/100 % alerts and stop requests for jobs and
for users, channels and the team at their cap.

Bookkeeping: a job's announced thresholds live in ``JobRow.alerted_pcts`` as
``{"limit_usd": "<cap>", "pcts": [50, 80]}`` (a changed cap starts over); a scope's in
``budget_alert`` audit events (target ``"<scope>:<id>"``), one per threshold, valid for the
period and the limit they were raised for. ``BudgetRow.alerted`` is not used. Texts come from
:mod:`gpubot.render.budgets`; audit events go through :func:`gpubot.notify.audit.record`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, load_only

from gpubot import costs
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.governance.limits import (
    TEAM_ID,
    DailySpend,
    Limit,
    burn_by_job,
    burn_per_hour,
    daily_spend,
    limits_for_scopes,
    recently_billed,
    spend_by_job,
)
from gpubot.governance.periods import dec, period_adjective, period_start
from gpubot.models import JobState
from gpubot.notify import audit, outbox
from gpubot.render import budgets as text

RECENT_SPEND_WINDOW = timedelta(hours=1)
"""Scopes whose ledger grew within this window are checked even without a live job."""
ALERT_ACTION = "budget_alert"
BUDGET_APPROVED_KEY = "budget_approved_by"
"""A job whose ``plan`` has this key set (by the approval of an over-budget launch) is not
stopped by user/channel/team budgets; its own cap still applies."""
STOP_LEAD_TICKS = 2
"""A cap is enforced this many ticks early: stopping takes a tick to reach the job (final
checkpoint) and another for the destroy request, and the instance bills until then. Stopping
when ``spent + burn × lead`` reaches the cap keeps the overshoot within one tick of price."""

_ENFORCE_COLUMNS = (
    JobRow.id, JobRow.state, JobRow.requester, JobRow.channel, JobRow.budget_usd,
    JobRow.alerted_pcts, JobRow.stop_requested_reason, JobRow.created_at,
)
"""The job columns enforcement loads (``plan`` is read only for a job a scope stops)."""

STOPPABLE = frozenset(
    s.value
    for s in JobState.live_states()
    if s not in {JobState.AWAITING_APPROVAL, JobState.TEARING_DOWN}
)
"""Jobs that enforcement looks at and may stop: live, approved and not already tearing down."""


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


def _audit(
    session: Session,
    now: datetime,
    action: str,
    target: str,
    reason: str,
    detail: dict[str, Any] | None = None,
) -> None:
    # Stamped with the tick's clock: scope alerts are looked up by period from ``at``.
    audit.record(session, "gpubot", action, target, reason, detail, at=now)


def request_stop(session: Session, job: JobRow, reason: str, now: datetime) -> bool:
    """Set the job's stop reason (and make it due) unless one is set already or the job is no
    longer stoppable; say so in its thread and audit ``budget_stop``. True when this call set
    it."""
    result = session.execute(
        update(JobRow)
        .where(
            JobRow.id == job.id,
            JobRow.stop_requested_reason.is_(None),
            JobRow.state.in_(STOPPABLE),
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
        text=text.job_stop_text(job.id, reason),
    )
    _audit(session, now, "budget_stop", job.id, reason)
    return True


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
            alert = text.job_alert_text(job.id, max(warn), spent, limit, burn)
            outbox.reply(
                session,
                channel=job.channel,
                thread_key=job.id,
                job_id=job.id,
                text=alert,
                blocks=text.job_alert_blocks(job.id, alert),
            )
    if verdict.stop and job.stop_requested_reason is None:
        reason = text.job_stop_reason(limit, spent)
        if predicted:
            reason += "; it would pass the cap before the next check"
        return request_stop(session, job, reason, now)
    return False


AlertEvents = dict[str, list[tuple[datetime, Mapping[str, Any]]]]
"""``budget_alert`` events by target (``"<scope>:<id>"``): (at, detail) pairs."""


def _alert_events(session: Session, targets: Sequence[str], since: datetime) -> AlertEvents:
    """The ``budget_alert`` events of ``targets`` at or after ``since``, in one query (the
    ``(action, target, at)`` index: only alert events are read, however long the audit
    trail)."""
    out: AlertEvents = {t: [] for t in targets}
    if not targets:
        return out
    rows = session.execute(
        select(AuditEventRow.target, AuditEventRow.at, AuditEventRow.detail).where(
            AuditEventRow.action == ALERT_ACTION,
            AuditEventRow.target.in_(sorted(set(targets))),
            AuditEventRow.at >= since,
        )
    )
    for target, at, detail in rows:
        out[target].append((at, detail or {}))
    return out


def _scope_alerted(
    events: Sequence[tuple[datetime, Mapping[str, Any]]], limit: Limit, since: datetime
) -> set[int]:
    """Thresholds already announced for ``limit`` in its period starting at ``since``."""
    out: set[int] = set()
    for at, d in events:
        if at < since or d.get("period") != limit.period:
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
    channel of their newest job); the team's ops channel (else live-job channels)."""
    if scope == "channel":
        return [scope_id]
    if scope == "team" and deps.config.ops.channel:
        return [deps.config.ops.channel]
    channels = sorted({j.channel for j in jobs})
    if not channels and scope == "user":
        # The channel of the user's newest job (the ledger's requester/channel are copied
        # from the job, so this is where their newest entries came from), not a ledger scan.
        last = session.scalars(
            select(JobRow.channel)
            .where(JobRow.requester == scope_id, JobRow.channel != "")
            .order_by(JobRow.created_at.desc())
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
    *,
    limits: Sequence[Limit],
    daily: DailySpend,
    events: Sequence[tuple[datetime, Mapping[str, Any]]],
) -> list[str]:
    """Alerts and stops for one user, channel or the team: ``limits`` its budgets, ``daily``
    its spend (from the earliest period start on), ``events`` its earlier alert events."""
    stopped: list[str] = []
    for limit in limits:
        since = period_start(limit.period, now)
        spent = daily.since(since)
        alerted = _scope_alerted(events, limit, since)
        verdict = costs.budget_verdict(spent, limit.limit_usd, alerted)
        for pct in verdict.new_alert_pcts:
            _audit(
                session,
                now,
                ALERT_ACTION,
                f"{scope}:{scope_id}",
                f"{pct}% of the {period_adjective(limit.period)} budget",
                {
                    "pct": pct,
                    "period": limit.period,
                    "period_start": since.isoformat(),
                    "limit_usd": str(limit.limit_usd),
                    "spent_usd": str(spent),
                },
            )
        message = ""
        if verdict.stop:
            reason = text.scope_stop_reason(
                scope, scope_id, limit.period, limit.limit_usd, spent
            )
            newly = [
                j.id
                for j in jobs
                if not (j.plan or {}).get(BUDGET_APPROVED_KEY)
                and request_stop(session, j, reason, now)
            ]
            stopped.extend(newly)
            if 100 in verdict.new_alert_pcts or newly:
                message = text.scope_stop_text(reason, newly)
        elif verdict.new_alert_pcts:
            burn = burn_per_hour(session, [j.id for j in jobs])
            message = text.scope_alert_text(
                scope,
                scope_id,
                max(verdict.new_alert_pcts),
                limit.period,
                limit.limit_usd,
                spent,
                burn,
            )
        if message:
            for channel in _scope_channels(deps, session, scope, scope_id, jobs):
                outbox.to_channel(session, channel=channel, text=message)
        if verdict.stop:
            # Jobs of this scope are stopped; a later, stricter limit adds nothing.
            break
    return stopped


def enforce(
    deps: EngineDeps, *, now: datetime, tick_interval_seconds: float | None = None
) -> list[str]:
    """Check every budget against the ledger; run every tick right after metering.

    Spend comes from the spend summaries and burn from the instances' prices
    (:mod:`.limits`), so the cost of a check does not grow with the ledger's history.

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
        # Only the columns enforcement reads (the job's other JSON columns are not decoded;
        # ``plan`` loads on first use, when a scope stop looks for an approval).
        jobs = list(
            session.scalars(
                select(JobRow)
                .options(load_only(*_ENFORCE_COLUMNS))
                .where(JobRow.state.in_(STOPPABLE))
                .order_by(JobRow.created_at)
            )
        )
        capped = [j.id for j in jobs if j.budget_usd is not None]
        spent_by_job = spend_by_job(session, capped)
        burns = burn_by_job(session, capped)
        interval = max(deps.settings.tick_seconds, tick_interval_seconds or 0.0)
        lead = STOP_LEAD_TICKS * interval
        for job in jobs:
            if job.budget_usd is not None and _enforce_job(
                session,
                job,
                now,
                lead,
                spent=spent_by_job.get(job.id, Decimal(0)),
                burn=burns.get(job.id, Decimal(0)),
            ):
                stopped.append(job.id)
        live = [j for j in jobs if j.id not in stopped and j.stop_requested_reason is None]
        recent = now - RECENT_SPEND_WINDOW
        scopes: list[tuple[str, str, list[JobRow]]] = []
        for scope, attr in (("user", "requester"), ("channel", "channel")):
            ids = {getattr(j, attr) for j in jobs}
            ids |= recently_billed(session, scope, recent)
            for scope_id in sorted(i for i in ids if i):
                scopes.append((scope, scope_id, [j for j in live if getattr(j, attr) == scope_id]))
        scopes.append(("team", TEAM_ID, live))
        # Three queries for every scope's budgets, spend and earlier alerts, not three each.
        keys = [(scope, scope_id) for scope, scope_id, _ in scopes]
        limits = limits_for_scopes(deps, session, keys)
        starts = [period_start(lim.period, now) for ls in limits.values() for lim in ls]
        first = min(starts, default=period_start("month", now))
        daily = daily_spend(session, keys, since=first)
        events = _alert_events(session, [f"{scope}:{sid}" for scope, sid in keys], first)
        for scope, scope_id, scope_jobs in scopes:
            if not limits[(scope, scope_id)]:
                continue
            scope_jobs = [j for j in scope_jobs if j.id not in stopped]
            stopped.extend(
                _enforce_scope(
                    deps, session, scope, scope_id, scope_jobs, now,
                    limits=limits[(scope, scope_id)],
                    daily=daily[(scope, scope_id)],
                    events=events[f"{scope}:{scope_id}"],
                )
            )
    if stopped:
        deps.enqueuer.kick()
    return stopped
