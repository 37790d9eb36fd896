"""The App Home tab: the user's live jobs and instances, spend vs budgets, recent audit events.

``build_home_view`` reads the database only (no provider or SSH call), so it is fast enough to
run in the ``app_home_opened`` listener. Spend against budgets comes from
:func:`gpubot.governance.limits.scope_usage`: the same figures as ``/gpu budget show``.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import select

from gpubot.chat import permissions
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.governance.limits import TEAM_ID, scope_usage
from gpubot.models import JobState
from gpubot.notify import events
from gpubot.render import budgets as budget_render
from gpubot.render import mrkdwn as md
from gpubot.render.slack import MAX_HOME_JOBS, home_view

logger = logging.getLogger(__name__)


def build_home_view(deps: EngineDeps, user: str) -> dict[str, Any]:
    """The ``home`` view for ``user`` (Block Kit, at most 100 blocks)."""
    live = [s.value for s in JobState.live_states()]
    now = deps.clock()
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
        usages = scope_usage(deps, session, "user", user, now)
        usages += scope_usage(deps, session, "team", TEAM_ID, now)
        query = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(10)
        if not permissions.is_admin(deps.config, user):
            query = query.where(AuditEventRow.actor == user)
        audit_lines = [
            f"{r.at:%m-%d %H:%M} {md.mention(r.actor)} {md.inline(r.action, 60)} "
            f"{md.inline(r.target, 120)}"
            for r in session.scalars(query)
        ]
    spend_lines = budget_render.home_spend_lines(usages)
    return home_view(user=user, jobs=views, spend_lines=spend_lines, audit_lines=audit_lines)


def publish(client: WebClient, deps: EngineDeps, user: str) -> None:
    """Publish the Home tab for ``user``; a Slack error is logged, not raised."""
    try:
        client.views_publish(user_id=user, view=build_home_view(deps, user))
    except SlackApiError as e:
        logger.warning("views.publish failed: %s", e.response.get("error"))
