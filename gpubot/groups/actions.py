"""What users do to a group after launching it: cancel it, approve or reject it, retry its
failed files. Only the requester or an admin may cancel or retry; approving follows the approval
rules of single jobs (:func:`gpubot.chat.permissions.check_approver`).

Each action writes its reply in the group's thread and an audit event (through
:func:`gpubot.notify.audit.record`) in the same transaction as its change; all are safe to
repeat.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from gpubot.chat import permissions, quotas
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobGroupRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.errors import CommandError, PermissionDenied
from gpubot.groups import children as kids
from gpubot.groups import submit
from gpubot.models import JobState
from gpubot.notify import audit, events, outbox
from gpubot.render import groups as render


def owned_group(
    session: Session, deps: EngineDeps, group_id: str, actor: str, what: str
) -> JobGroupRow:
    """The group, when ``actor`` launched it or is an admin.

    Raises:
        CommandError: no such group. PermissionDenied: anyone else (``what`` names the action
            in the message).
    """
    group = session.get(JobGroupRow, group_id)
    if group is None:
        raise CommandError(f"no group {group_id}")
    if actor != group.requester and not permissions.is_admin(deps.config, actor):
        raise PermissionDenied(
            f"{actor} may not {what} {group_id}",
            user_message=render.not_owner_text(group.requester, group_id, what),
        )
    return group


def cancel_group(deps: EngineDeps, group_id: str, actor: str) -> int:
    """Cancel every live child (``cancel_requested``; held ones are released to tear down).

    Children awaiting approval are cancelled at once. Returns how many children were newly
    flagged or cancelled. Safe to repeat.

    Raises:
        CommandError: no such group. PermissionDenied: not the requester or an admin.
    """
    now = deps.clock()
    reason = render.cancel_reason(group_id, actor)
    count = 0
    with session_scope(deps.sessions) as session:
        group = owned_group(session, deps, group_id, actor, "cancel")
        group.spec = dict(group.spec or {}, cancelled_by=actor)
        children = kids.of_group(session, group)
        before = {j.id: j.state for j in children}
        kids.cancel_awaiting(session, children, reason, now)
        count += sum(1 for j in children if before[j.id] != j.state)
        for job in children:
            done = session.execute(
                update(JobRow)
                .where(JobRow.id == job.id, JobRow.cancel_requested.is_(False))
                .where(JobRow.state.in_([s.value for s in JobState.live_states()
                                         if s is not JobState.AWAITING_APPROVAL]))
                .values(cancel_requested=True, reason=reason, due_at=now)
                .execution_options(synchronize_session=False)
            )
            count += done.rowcount  # type: ignore[attr-defined]
        outbox.reply(session, channel=group.channel, thread_key=group.id, group_id=group.id,
                     text=render.cancelled_text(reason, count))
        audit.record(session, actor, "cancel", group_id, reason, at=now)
    deps.enqueuer.kick()
    return count


def approve_group(deps: EngineDeps, group_id: str, actor: str) -> list[str]:
    """An admin approves every child awaiting approval; the concurrency limit still holds
    (children beyond it are held).

    Children awaiting approval do not count against the live-job quota; approving them does,
    so an approval that would take the requester past ``per_user_max_live_jobs`` is refused
    (nothing changes). Returns the approved child ids (empty when none was waiting; nothing
    is posted then).

    Raises:
        CommandError: no such group. PermissionDenied: not an admin, the requester, or the
            quota (:func:`gpubot.chat.quotas.check_group_approval`).
    """
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        if group is None:
            raise CommandError(f"no group {group_id}")
        permissions.check_approver(deps.config, actor, group.requester)
        children = kids.of_group(session, group)
        waiting = [j for j in children if j.state == JobState.AWAITING_APPROVAL.value]
        quotas.check_group_approval(
            session, deps.config, group_id=group_id, requester=group.requester,
            waiting=len(waiting),
        )
        approved = []
        for job in waiting:
            done = session.execute(
                update(JobRow)
                .where(JobRow.id == job.id, JobRow.state == JobState.AWAITING_APPROVAL.value)
                .values(state=JobState.QUEUED.value, due_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount == 1:  # type: ignore[attr-defined]
                approved.append(job.id)
        if not approved:
            return []
        session.flush()
        for job in waiting:
            session.refresh(job)
            events.refresh_card(session, job)
        kids.hold_excess(session, group, now, deps.config.engine.max_concurrent_children)
        outbox.reply(session, channel=group.channel, thread_key=group.id, group_id=group.id,
                     text=render.approved_text(actor))
        audit.record(session, actor, "approve", group_id, at=now)
    deps.enqueuer.kick()
    return approved


def reject_group(deps: EngineDeps, group_id: str, actor: str, reason: str) -> list[str]:
    """An admin rejects a group awaiting approval: every child still awaiting approval is
    finished as cancelled (nothing was rented for them); children already approved are left
    alone. ``reason`` (mrkdwn) is stored on each. Returns the rejected child ids (empty when
    none was waiting; nothing is posted then).

    Raises:
        CommandError: no such group. PermissionDenied: not an admin.
    """
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        if group is None:
            raise CommandError(f"no group {group_id}")
        permissions.check_admin(deps.config, actor, "reject a launch")
        children = kids.of_group(session, group)
        waiting = [j.id for j in children if j.state == JobState.AWAITING_APPROVAL.value]
        kids.cancel_awaiting(session, children, reason, now)
        rejected = [j.id for j in children if j.id in waiting and j.state != "awaiting_approval"]
        if not rejected:
            return []
        outbox.reply(session, channel=group.channel, thread_key=group.id, group_id=group.id,
                     text=render.cancelled_text(reason, len(rejected)))
        audit.record(session, actor, "reject", group_id, reason, at=now)
    return rejected


def retry_failed(deps: EngineDeps, group_id: str, actor: str) -> str | None:
    """Run the failed files of a finished sharded group again, in one new shard job.

    Returns the new child's id, or None when no file failed. The group goes back to
    ``running`` and its manifest is rewritten when the new shard ends. A repeated call while
    that retry runs returns the same job (idempotent). The launch itself is
    :func:`gpubot.groups.submit.submit_retry`.

    Raises:
        CommandError: no such group, not a sharded group, it is still running, or its input
            is no longer declared (or may no longer be used).
        PermissionDenied: not the requester or an admin. NoOfferError/BudgetError: as submit.
    """
    with session_scope(deps.sessions) as session:
        group = owned_group(session, deps, group_id, actor, "retry")
        if group.kind != "shards":
            raise CommandError(f"{group_id} is a {group.kind}; only sharded runs retry files")
        spec = dict(group.spec or {})
        if group.state == kids.RUNNING:
            if spec.get("retries"):
                return str(spec["retries"][-1])  # a repeated click: the retry in flight
            raise CommandError(f"{group_id} is still running; retry when it has finished")
        requester, channel, template = group.requester, group.channel, group.template
    failed = list((spec.get("result") or {}).get("failed", []))
    if not failed:
        return None
    return submit.submit_retry(
        deps,
        group_id,
        spec=spec,
        template_name=template,
        files=failed,
        actor=actor,
        requester=requester,
        channel=channel,
    )
