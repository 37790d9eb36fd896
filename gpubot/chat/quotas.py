"""Live-job quotas (``[roles] per_user_max_live_jobs`` / ``per_channel_max_live_jobs``) for
single launches, group launches and group approvals.

What counts as live: every job that has not finished, each child of a sweep or sharded run
included (held children too), except the children of a group that still await an admin's
approval: they rent nothing until approved, and approving them is checked here again
(:func:`check_group_approval`). A single job awaiting approval counts (as it always did).

Every check raises :class:`gpubot.errors.PermissionDenied` with a ``user_message`` that says
which limit and by how much; nothing has changed when it is raised.
"""

from __future__ import annotations

from sqlalchemy import and_, func, not_, select
from sqlalchemy.orm import Session

from gpubot.config import BotConfig
from gpubot.db.tables import JobRow
from gpubot.errors import PermissionDenied
from gpubot.models import JobState
from gpubot.render import limits as render


def live_jobs_count(
    session: Session, *, user: str | None = None, channel: str | None = None
) -> int:
    """Jobs that count against the quotas (see the module docstring), optionally of one
    requester and/or one channel."""
    live = [s.value for s in JobState.live_states()]
    waiting_child = and_(
        JobRow.group_id.is_not(None), JobRow.state == JobState.AWAITING_APPROVAL.value
    )
    query = (
        select(func.count())
        .select_from(JobRow)
        .where(JobRow.state.in_(live), not_(waiting_child))
    )
    if user is not None:
        query = query.where(JobRow.requester == user)
    if channel is not None:
        query = query.where(JobRow.channel == channel)
    return int(session.scalar(query) or 0)


def check_quota(
    session: Session, config: BotConfig, user: str, channel: str, *, adding: int = 1
) -> None:
    """Raise PermissionDenied when ``adding`` more live jobs would exceed a quota.

    ``adding=1`` is a single launch (refused when the user already has the limit); a group
    launch passes its number of children and gets a message naming the group size.
    """
    roles = config.roles
    mine = live_jobs_count(session, user=user)
    if mine + adding > roles.per_user_max_live_jobs:
        raise PermissionDenied(
            f"{user} has {mine} live jobs, +{adding} exceeds the quota",
            user_message=_message(adding, mine, roles.per_user_max_live_jobs, "user"),
        )
    here = live_jobs_count(session, channel=channel)
    if here + adding > roles.per_channel_max_live_jobs:
        raise PermissionDenied(
            f"channel {channel} has {here} live jobs, +{adding} exceeds the quota",
            user_message=_message(adding, here, roles.per_channel_max_live_jobs, "channel"),
        )


def check_group_quota(
    session: Session, config: BotConfig, user: str, channel: str, *, kind: str, children: int
) -> None:
    """Raise PermissionDenied when a group of ``children`` jobs would exceed a quota (every
    child counts, whether it runs now, is held, or awaits approval)."""
    roles = config.roles
    for scope, live, limit in (
        ("user", live_jobs_count(session, user=user), roles.per_user_max_live_jobs),
        ("channel", live_jobs_count(session, channel=channel), roles.per_channel_max_live_jobs),
    ):
        if live + children > limit:
            raise PermissionDenied(
                f"group of {children} exceeds the {scope} quota ({live} live, limit {limit})",
                user_message=render.group_quota_refusal(
                    kind=kind, children=children, live=live, limit=limit, scope=scope
                ),
            )


def check_group_approval(
    session: Session, config: BotConfig, *, group_id: str, requester: str, waiting: int
) -> None:
    """Raise PermissionDenied when approving ``waiting`` children of ``group_id`` would take
    its requester past the per-user quota (the jobs they launched meanwhile count)."""
    limit = config.roles.per_user_max_live_jobs
    live = live_jobs_count(session, user=requester)
    if waiting and live + waiting > limit:
        raise PermissionDenied(
            f"approving {group_id} exceeds {requester}'s quota",
            user_message=render.approve_quota_refusal(
                group_id=group_id, requester=requester, waiting=waiting, live=live, limit=limit
            ),
        )


def _message(adding: int, live: int, limit: int, scope: str) -> str:
    if scope == "user":
        return (
            f"You already have {live} live jobs (the limit is {limit}). Cancel one or wait "
            "for it to finish."
        )
    return f"This channel already has {live} live jobs (the limit is {limit})."
