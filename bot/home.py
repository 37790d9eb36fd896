"""The App Home tab: the user's live jobs (thread link, Cancel, Keep alive), spend against
budgets, recent activity; published with ``views.publish``
(https://api.slack.com/methods/views.publish).

Published in two ways: by the ``app_home_opened`` listener (:func:`publish`), and by the
outbox delivery (:mod:`bot.delivery`) for a ``home`` row, which the engine queues when a job
of the user changes state (:func:`gpubot.notify.outbox.request_home_refresh`).

:func:`build_home_view` reads the database only (no provider or SSH call), so it is fast
enough for either. Spend against budgets comes from
:func:`gpubot.governance.limits.scope_usage`: the same figures as ``/gpu budget show``, for the
user, the channels of their live jobs and the team. The view is drawn by
:func:`gpubot.render.views.home_view`.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpubot.chat import permissions
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, JobGroupRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.governance.limits import TEAM_ID, scope_usage
from gpubot.models import JobState
from gpubot.notify import events
from gpubot.render import budgets as budget_render
from gpubot.render import mrkdwn as md
from gpubot.render.budgets import ScopeUsage
from gpubot.render.views import (
    HOME_ACTIVITY_MAX,
    HOME_JOBS_MAX,
    ActivityEntry,
    HomeJob,
    home_view,
)

logger = logging.getLogger(__name__)

HOME_CHANNELS_MAX = 3
"""Spend is shown for at most this many channels (those of the user's newest live jobs)."""


def _thread_ts(session: Session, job: JobRow) -> str | None:
    """The ts of the job's thread root: the job's own card, or its group's for a run."""
    if job.group_id:
        group = session.get(JobGroupRow, job.group_id)
        return group.thread_ts if group is not None else None
    return job.thread_ts


def _spend_lines(usages: list[ScopeUsage]) -> list[str]:
    """One line per budget: ``You``, each channel (``#channel``), ``Team``."""
    labels = {"user": "You", "team": "Team"}
    return [
        budget_render.usage_line(
            labels.get(u.scope) or md.channel_ref(u.scope_id), u.spent_usd, u.limit_usd, u.period
        )
        for u in usages
    ]


def build_home_view(deps: EngineDeps, user: str) -> dict[str, Any]:
    """The ``home`` view for ``user``: their live jobs (newest first, at most
    :data:`~gpubot.render.views.HOME_JOBS_MAX`), spend against the user's, their live jobs'
    channels' and the team's budgets, and the newest audit events (the user's own; every
    user's for an admin). At most 100 blocks."""
    live = [s.value for s in JobState.live_states()]
    now = deps.clock()
    mine = (JobRow.requester == user, JobRow.state.in_(live))
    with session_scope(deps.sessions) as session:
        total = int(session.scalar(select(func.count()).select_from(JobRow).where(*mine)) or 0)
        rows = list(
            session.scalars(
                select(JobRow).where(*mine).order_by(JobRow.created_at.desc())
                .limit(HOME_JOBS_MAX)
            )
        )
        jobs = [
            HomeJob(view=events.job_view(session, job), channel=job.channel,
                    thread_ts=_thread_ts(session, job))
            for job in rows
        ]
        usages = scope_usage(deps, session, "user", user, now)
        channels = list(dict.fromkeys(job.channel for job in rows if job.channel))
        for channel in channels[:HOME_CHANNELS_MAX]:
            usages += scope_usage(deps, session, "channel", channel, now)
        usages += scope_usage(deps, session, "team", TEAM_ID, now)
        query = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(HOME_ACTIVITY_MAX)
        if not permissions.is_admin(deps.config, user):
            query = query.where(AuditEventRow.actor == user)
        activity = [
            ActivityEntry(at=r.at, actor=r.actor, action=r.action, target=r.target,
                          reason=r.reason)
            for r in session.scalars(query)
        ]
    return home_view(user=user, jobs=jobs, total_jobs=total, spend_lines=_spend_lines(usages),
                     activity=activity)


def publish(client: WebClient, deps: EngineDeps, user: str) -> None:
    """Publish the Home tab for ``user`` now (the ``app_home_opened`` listener); a Slack
    error is logged, not raised. The outbox's ``home`` rows are published by
    :mod:`bot.delivery` instead (paced and retried)."""
    try:
        client.views_publish(user_id=user, view=build_home_view(deps, user))
    except SlackApiError as e:
        logger.warning("views.publish failed: %s", e.response.get("error"))
