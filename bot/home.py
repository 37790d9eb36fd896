"""The App Home tab: the user's live jobs and instances, spend vs budgets, recent audit events.

``build_home_view`` reads the database only (no provider or SSH call), so it is fast enough to
run in the ``app_home_opened`` listener.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import func, select

from gpubot.chat import permissions
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, BudgetRow, JobRow, LedgerEntryRow
from gpubot.deps import EngineDeps
from gpubot.models import JobState
from gpubot.notify import events
from gpubot.render import mrkdwn as md
from gpubot.render.slack import MAX_HOME_JOBS, home_view
from gpubot.render.text import usd

logger = logging.getLogger(__name__)


def _month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _limit(session: Any, scope: str, scope_id: str, default: Decimal | None) -> Decimal | None:
    row = session.scalars(
        select(BudgetRow).where(
            BudgetRow.scope == scope, BudgetRow.scope_id == scope_id, BudgetRow.period == "month"
        )
    ).first()
    return row.limit_usd if row is not None else default


def build_home_view(deps: EngineDeps, user: str) -> dict[str, Any]:
    """The ``home`` view for ``user`` (Block Kit, at most 100 blocks)."""
    live = [s.value for s in JobState.live_states()]
    start = _month_start(deps.clock())
    policy = deps.config.budgets
    with session_scope(deps.sessions) as session:
        jobs = list(
            session.scalars(
                select(JobRow)
                .where(JobRow.requester == user, JobRow.state.in_(live))
                .order_by(JobRow.created_at.desc())
                .limit(MAX_HOME_JOBS + 1)
            )
        )
        views = [events.job_view(session, job) for job in jobs]
        spent_mine = session.scalar(
            select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
                LedgerEntryRow.requester == user, LedgerEntryRow.created_at >= start
            )
        )
        spent_team = session.scalar(
            select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
                LedgerEntryRow.created_at >= start
            )
        )
        my_limit = _limit(session, "user", user, policy.user_monthly_usd)
        team_limit = _limit(session, "team", "team", policy.team_monthly_usd)
        query = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(10)
        if not permissions.is_admin(deps.config, user):
            query = query.where(AuditEventRow.actor == user)
        audit_lines = [
            f"{r.at:%m-%d %H:%M} {md.mention(r.actor)} {md.inline(r.action, 60)} "
            f"{md.inline(r.target, 120)}"
            for r in session.scalars(query)
        ]
    spend_lines = [
        f"You this month: {usd(Decimal(str(spent_mine)))} of "
        f"{usd(my_limit) if my_limit else 'no limit'}",
        f"Team this month: {usd(Decimal(str(spent_team)))} of "
        f"{usd(team_limit) if team_limit else 'no limit'}",
    ]
    return home_view(user=user, jobs=views, spend_lines=spend_lines, audit_lines=audit_lines)


def publish(client: WebClient, deps: EngineDeps, user: str) -> None:
    """Publish the Home tab for ``user``; a Slack error is logged, not raised."""
    try:
        client.views_publish(user_id=user, view=build_home_view(deps, user))
    except SlackApiError as e:
        logger.warning("views.publish failed: %s", e.response.get("error"))
