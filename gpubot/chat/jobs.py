"""The job verbs: ``/gpu status``, ``jobs``, ``logs``, ``cancel`` (jobs and groups), ``keep``,
and the Cancel / Destroy now / Keep alive buttons.

Each verb checks the caller's right on the job (:mod:`gpubot.chat.permissions`), changes only
request flags a worker reads on its next step (``cancel_requested``, ``keep_until``) or
finishes a job that never started, and posts what it did in the job's thread. Audit entries
are written in the same transaction as the change.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gpubot.chat import permissions
from gpubot.chat.reply import Reply, job_or_none, no_job, refusal
from gpubot.commands import LogsCommand
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobGroupRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.errors import RemoteError
from gpubot.models import JobState
from gpubot.notify import audit, events, outbox
from gpubot.redact import redact
from gpubot.render import chat as texts
from gpubot.render import events as thread
from gpubot.render import slack as slack_render
from gpubot.render.text import card_lines

MAX_KEEP_HOURS = 24.0
"""One Keep alive postpones the idle reaper by at most this long."""


def status(deps: EngineDeps, job_id: str) -> Reply:
    """``/gpu status <job>``: the job's card. When the job has loss points, its loss chart (a
    PNG under ``GPUBOT_HOME/charts``) is queued in the outbox as a file for the job's thread
    (the deliverer uploads it there with ``files_upload_v2``), and the answer says so: the
    chart never goes to the top of the channel and no answer names a server path. A chart
    still waiting in the outbox for this job is not queued twice."""
    with session_scope(deps.sessions) as session:
        job = job_or_none(session, job_id)
        if job is None:
            return no_job(job_id)
        view = events.job_view(session, job)
        points = list((job.metrics_history or {}).get("points") or [])
        channel = job.channel
    chart = "none"
    if points:
        from gpubot.render.charts import loss_chart_png

        path = deps.settings.home / "charts" / f"{job_id}-status-loss.png"
        drawn = loss_chart_png([(int(p[0]), float(p[1])) for p in points], path)
        with session_scope(deps.sessions) as session:
            waiting = session.scalars(
                select(MessageRow.id).where(
                    MessageRow.job_id == job_id,
                    MessageRow.kind == "file",
                    MessageRow.file_path == str(drawn),
                    MessageRow.dirty.is_(True),
                )
            ).first()
            if waiting is None:
                outbox.upload(
                    session,
                    channel=channel,
                    thread_key=job_id,
                    path=str(drawn),
                    title=texts.status_chart_title(job_id, len(points)),
                    job_id=job_id,
                )
        chart = "thread"
    text = texts.status_text(card_lines(view), chart_in_thread=chart == "thread")
    return Reply(text=text, blocks=slack_render.text_blocks(text), job_id=job_id)


def list_jobs(deps: EngineDeps, user: str, *, include_finished: bool) -> Reply:
    """``/gpu status`` (live jobs) and ``/gpu jobs`` (also the 10 newest finished): the
    requester's own jobs, newest first."""
    live = [s.value for s in JobState.live_states()]
    with session_scope(deps.sessions) as session:
        rows = list(
            session.scalars(
                select(JobRow)
                .where(JobRow.requester == user, JobRow.state.in_(live))
                .order_by(JobRow.created_at.desc())
                .limit(40)
            )
        )
        if include_finished:
            rows += list(
                session.scalars(
                    select(JobRow)
                    .where(JobRow.requester == user, JobRow.state.not_in(live))
                    .order_by(JobRow.created_at.desc())
                    .limit(10)
                )
            )
        views = [events.job_view(session, job) for job in rows]
    title = texts.jobs_title(include_finished=include_finished)
    text = texts.jobs_text(title, [card_lines(v)[0] for v in views])
    return Reply(text=text, blocks=slack_render.jobs_blocks(views, title))


def logs(deps: EngineDeps, command: LogsCommand, user: str, channel: str) -> Reply:
    """``/gpu logs <job> [lines]``: the newest log lines over SSH (redacted). Outside the job's
    channel only its owner or an admin may read them. Slow: run after the ack."""
    from gpubot.engine import remote_job
    from gpubot.engine.steps import current_instance

    with session_scope(deps.sessions) as session:
        job = job_or_none(session, command.job_id)
        if job is None:
            return no_job(command.job_id)
        if job.channel != channel:
            permissions.check_owner_or_admin(deps.config, user, job, "read the log of")
        instance = current_instance(session, job.id)
        if instance is not None:
            session.expunge(instance)
        session.expunge(job)
    if instance is None or not instance.ssh_host:
        return refusal(texts.no_log_instance(job.id, job.state))
    try:
        with remote_job.connect(deps, instance) as remote:
            tail = remote.tail(job, command.lines)
    except RemoteError as e:
        return refusal(texts.log_unreadable(job.id, redact(e.user_message)))
    tail_lines = redact(tail).split("\n")
    title = texts.log_title(job.id, command.lines)
    return Reply(
        text=texts.log_text(title, tail_lines),
        blocks=slack_render.code_blocks(title, tail_lines),
        job_id=job.id,
    )


def cancel_unstarted(session: Session, job_id: str, reason: str, now: datetime) -> bool:
    """Finish a job still awaiting approval as cancelled. Nothing was rented and no worker
    claims such rows, so this guarded UPDATE is the whole job; False if it moved on."""
    done = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.state == JobState.AWAITING_APPROVAL.value)
        .values(
            state=JobState.CANCELLED.value,
            outcome=JobState.CANCELLED.value,
            reason=reason,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def cancel(deps: EngineDeps, job_id: str, user: str, *, reason: str) -> Reply:
    """``/gpu cancel <job>`` and the Cancel / Destroy now buttons (owner or admin).

    A job awaiting approval is finished here; a started one gets ``cancel_requested`` and an
    early tick (the engine checkpoints and destroys). ``reason`` (mrkdwn) is recorded on the
    job. Cancelling a finished or already-cancelling job changes nothing."""
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        job = job_or_none(session, job_id)
        if job is None:
            return no_job(job_id)
        permissions.check_owner_or_admin(deps.config, user, job, "cancel")
        state = JobState(job.state)
        if state.is_finished():
            return Reply(text=texts.already_finished(job_id, state.value), job_id=job_id)
        if state is JobState.AWAITING_APPROVAL:
            # Nothing was rented and no worker claims such rows: finish it here, guarded.
            if cancel_unstarted(session, job_id, reason, now):
                session.refresh(job)
                events.note(session, job, thread.cancelled_before_start(job_id, reason))
                events.refresh_card(session, job)
                audit.record(session, user, "cancel", job_id, reason)
                return Reply(text=texts.cancelled(job_id), job_id=job_id)
        if job.cancel_requested:
            return Reply(text=texts.already_cancelling(job_id), job_id=job_id)
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(cancel_requested=True, reason=reason, due_at=now)
            .execution_options(synchronize_session=False)
        )
        session.refresh(job)
        events.note(session, job, thread.cancelling(reason))
        audit.record(session, user, "cancel", job_id, reason)
    deps.enqueuer.kick()
    return Reply(text=texts.cancelling(job_id), job_id=job_id)


def cancel_group(deps: EngineDeps, group_id: str, user: str) -> Reply:
    """``/gpu cancel g-…``: cancel every child of a sweep or sharded run (requester or
    admin)."""
    from gpubot import groups

    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        if group is None:
            return no_job(group_id)
        if group.requester != user and not permissions.is_admin(deps.config, user):
            return refusal(texts.group_cancel_refused(group_id, group.requester))
    count = groups.cancel_group(deps, group_id, user)
    with session_scope(deps.sessions) as session:
        audit.record(session, user, "cancel_group", group_id, texts.cancel_reason(user))
    return Reply(text=texts.group_cancelling(group_id, count), job_id=group_id)


def keep(deps: EngineDeps, job_id: str, user: str, *, hours: float) -> Reply:
    """``/gpu keep <job> [hours]`` and Keep alive: postpone the idle reaper by ``hours``
    (clamped to 0.1–24) and clear a pending idle warning (owner or admin)."""
    hours = min(max(hours, 0.1), MAX_KEEP_HOURS)
    now = deps.clock()
    until = now + timedelta(hours=hours)
    with session_scope(deps.sessions) as session:
        job = job_or_none(session, job_id)
        if job is None:
            return no_job(job_id)
        permissions.check_owner_or_admin(deps.config, user, job, "keep")
        if JobState(job.state).is_finished():
            return refusal(texts.nothing_to_keep(job_id, job.state))
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(keep_until=until, idle_warned_at=None)
            .execution_options(synchronize_session=False)
        )
        session.refresh(job)
        events.note(session, job, thread.kept_alive(user=user, job_id=job_id, until=until))
        audit.record(session, user, "keep", job_id, f"{hours:g} h", {"until": until.isoformat()})
    return Reply(text=texts.kept(job_id, thread.keep_time(until)), job_id=job_id)
