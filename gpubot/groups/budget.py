"""The group budget: ``budget=`` on a group command caps the sum of its children's ledger.

Alerts at 50/80 % go to the group's thread (once each, remembered in
``spec["alerted_pcts"]``); at 100 % every live child gets ``stop_requested_reason`` (the
engine checkpoints, then destroys), children still awaiting approval are cancelled, and the
stop is audited (once, ``spec["budget_stopped"]``). The texts come from
:mod:`gpubot.render.groups`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gpubot import costs
from gpubot.db.spend import from_e8
from gpubot.db.tables import JobGroupRow, JobRow, SpendSummaryRow
from gpubot.groups import children as kids
from gpubot.notify import audit, outbox
from gpubot.render import groups as render


def group_spent_usd(session: Session, job_ids: list[str]) -> Decimal:
    """What the ledger holds for these jobs together (0 for none), read from their
    whole-life spend summaries (a child's group never changes, so the group's total is the sum
    of its children's; no ledger scan)."""
    if not job_ids:
        return Decimal(0)
    total = session.scalar(
        select(func.sum(SpendSummaryRow.amount_usd_e8)).where(
            SpendSummaryRow.scope == "job", SpendSummaryRow.scope_id.in_(job_ids)
        )
    )
    return from_e8(total)


def enforce_group_budget(
    session: Session, group: JobGroupRow, children: list[JobRow], now: datetime
) -> bool:
    """Alerts at 50/80 % and the stop at 100 % of ``group.budget_usd`` (which must be set).

    Changes go into ``session`` (the caller commits); ``group.spec`` is replaced only when it
    changed. Returns True when this call stopped the group (False when it had been stopped
    before or is under its cap).
    """
    assert group.budget_usd is not None
    limit = Decimal(str(group.budget_usd))
    spent = group_spent_usd(session, [j.id for j in children])
    spec = dict(group.spec or {})
    alerted = {int(p) for p in spec.get("alerted_pcts", [])}
    verdict = costs.budget_verdict(spent, limit, alerted)
    stopped = False
    if verdict.new_alert_pcts:
        spec["alerted_pcts"] = sorted(alerted | set(verdict.new_alert_pcts))
        warn = [p for p in verdict.new_alert_pcts if p < 100]
        if warn and not verdict.stop:
            outbox.reply(
                session,
                channel=group.channel,
                thread_key=group.id,
                group_id=group.id,
                text=render.budget_alert_text(group.id, max(warn), limit, spent),
            )
    if verdict.stop and not spec.get("budget_stopped"):
        reason = render.budget_stop_reason(group.id, limit, spent)
        spec["budget_stopped"] = reason
        for job in children:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job.id, JobRow.stop_requested_reason.is_(None))
                .where(JobRow.state.in_(kids.STOPPABLE))
                .values(stop_requested_reason=reason, due_at=now)
                .execution_options(synchronize_session=False)
            )
        kids.cancel_awaiting(session, children, reason, now)
        outbox.reply(
            session,
            channel=group.channel,
            thread_key=group.id,
            group_id=group.id,
            text=render.budget_stop_text(group.id, reason),
        )
        audit.record(session, "gpubot", "budget_stop", group.id, reason, at=now)
        stopped = True
    if spec != group.spec:
        group.spec = spec
    return stopped
