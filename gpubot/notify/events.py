"""Job events as outbox messages: one quiet live card per job, and replies only for what
needs attention or record.

The card is the job's top-level message (the root of its thread; a run of a sweep or sharded
group has its card in the group's thread instead, without a mention), edited in place from
the plan to the outcome and final cost. What used to be replies are card fields: the rental
(instance, GPU, rental type, attempt), the run starting (the state), each checkpoint ("last
checkpoint: ..., 2 min ago"). Replies are left for approvals, idle/stuck warnings,
interruptions and resumes, failures, destroy escalations and the final result (mentioning
the requester, with the chart and links; a group's successful run has none: its card and the
group's end say it).

Called inside the engine's applying transaction, so a message exists exactly when the state
change it reports was committed. This module reads the rows and writes the outbox; the texts
are built from plain data by :mod:`gpubot.render.events` and :mod:`gpubot.render.text`
(every job, user or provider value escaped there).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from gpubot import costs
from gpubot.db.spend import from_e8
from gpubot.db.tables import InstanceRow, JobRow, SpendSummaryRow
from gpubot.lifecycle import ProgressPoint, estimate_eta_seconds
from gpubot.models import RentalChoice
from gpubot.notify import ops, outbox
from gpubot.redact import redact_for_chat
from gpubot.render import events as render
from gpubot.render.blocks import ceiling_prompt_blocks, idle_warning_blocks
from gpubot.render.text import card_blocks, card_lines
from gpubot.render.views import JobView


def spent_usd(session: Session, job_id: str) -> Decimal:
    """Money the ledger holds for the job (all its rentals), read from the job's per-day spend
    summaries (kept in the ledger's own transaction, exact to the ledger's 10^-8 USD): a few
    rows per job, however long it ran, instead of one ledger row per tick."""
    return from_e8(session.scalar(_JOB_SPEND, {"job_id": job_id}))


_JOB_SPEND = select(func.sum(SpendSummaryRow.amount_usd_e8)).where(
    SpendSummaryRow.scope == "job", SpendSummaryRow.scope_id == bindparam("job_id")
)
_CARD_INSTANCE = (
    select(InstanceRow)
    .where(InstanceRow.job_id == bindparam("job_id"), InstanceRow.provider_id.is_not(None))
    .order_by(InstanceRow.id.desc())
    .limit(1)
)
"""The card's statements, built once: every step refreshes its job's card."""


def charged_per_hour_usd(instance: InstanceRow) -> Decimal:
    """The $/h the instance is charged while it runs (compute plus its disk's storage): the
    same figure the plan quoted, never the compute rate alone."""
    return costs.hourly_charge_usd(
        instance.price_per_hour_usd, instance.storage_per_gb_month_usd, instance.disk_gb
    )


def job_view(session: Session, job: JobRow) -> JobView:
    """The plain data of the job's status card (its newest provider-backed rental, progress,
    ETA, spend)."""
    instance = session.scalars(_CARD_INSTANCE, {"job_id": job.id}).first()
    progress = job.progress or {}
    first = progress.get("first")
    latest = progress.get("latest")
    eta = None
    if first and latest:
        eta = estimate_eta_seconds(
            ProgressPoint(int(first[0]), datetime.fromisoformat(first[1])),
            ProgressPoint(int(latest[0]), datetime.fromisoformat(latest[1])),
            progress.get("total_steps"),
        )
    checkpoint_at = progress.get("checkpoint_at")
    ssh_command = None
    if job.kind == "interactive" and instance is not None and instance.ssh_host:
        if instance.destroy_requested_at is None:
            ssh_command = f"ssh -p {instance.ssh_port} root@{instance.ssh_host}"
    return JobView(
        job_id=job.id,
        template=job.template,
        kind=job.kind,
        state=job.state,
        requester=job.requester,
        params=dict(job.params or {}),
        phase_detail=job.phase_detail or "",
        reason=job.reason or "",
        step=progress.get("step"),
        total_steps=progress.get("total_steps"),
        metrics={k: float(v) for k, v in (progress.get("metrics") or {}).items()},
        eta_seconds=eta,
        spent_usd=spent_usd(session, job.id),
        price_per_hour_usd=charged_per_hour_usd(instance) if instance else None,
        budget_usd=job.budget_usd,
        gpu_name=instance.gpu_name if instance else "",
        provider_id=instance.provider_id if instance else None,
        rental_type=job.rental_type,
        attempts=job.attempts,
        ssh_command=ssh_command,
        results=list((job.results or {}).get("files", [])),
        updated_at=job.updated_at,
        plan_lines=[str(line) for line in (job.plan or {}).get("summary_lines") or []],
        last_checkpoint_key=job.checkpoint_key,
        last_checkpoint_at=datetime.fromisoformat(checkpoint_at) if checkpoint_at else None,
        in_group=job.group_id is not None,
    )


def refresh_card(session: Session, job: JobRow, *, state_changed: bool = True) -> None:
    """Create or bring up to date the job's live card (no-op when nothing visible changed).

    A job of its own: the card is its top-level message, the root of its thread (a job from
    before, with a static parent and a card in the thread, keeps that card). A run of a
    group: the card is a message in the group's thread (``thread_key`` = the job id, which
    the outbox resolves to the group's root). A state the requester's App Home has not shown
    yet queues its republish (:func:`gpubot.notify.outbox.request_home_refresh`);
    ``state_changed`` False (a step that kept the job's state, which the Home was told of when
    the job entered it) skips that lookup."""
    view = job_view(session, job)
    outbox.upsert_card(
        session,
        job_id=job.id,
        channel=job.channel,
        thread_key=job.id if job.group_id else None,
        text="\n".join(card_lines(view)),
        blocks=card_blocks(view),
        group_id=job.group_id,
    )
    # A new state also republishes the requester's App Home (coalesced per user).
    if state_changed:
        outbox.request_home_refresh(session, user=job.requester, job_id=job.id, state=job.state)


def note(session: Session, job: JobRow, text: str) -> None:
    """A reply in the job's thread. ``text`` is mrkdwn: callers escape the values they put in
    (:func:`gpubot.render.mrkdwn.escape`)."""
    outbox.reply(session, channel=job.channel, thread_key=job.id, text=text, job_id=job.id)


def rented(session: Session, job: JobRow, choice: RentalChoice, provider_id: str) -> None:
    """``provider_id`` was rented for the job: no reply. The card shows the instance, GPU,
    rental type, $/h and attempt from the instance row (the caller refreshes the card)."""


def started(session: Session, job: JobRow) -> None:
    """The job's run command started: no reply; the card's state says "running"."""


def interactive_ready(session: Session, job: JobRow, instance: InstanceRow) -> None:
    """Reply with the ssh command of an interactive box."""
    note(
        session,
        job,
        render.interactive_ready(
            ssh_port=instance.ssh_port,
            ssh_host=instance.ssh_host,
            gpu_name=instance.gpu_name,
            price_per_hour_usd=charged_per_hour_usd(instance),
        ),
    )


def checkpoint_saved(session: Session, job: JobRow, key: str) -> None:
    """The checkpoint at ``key`` was backed up: no reply. Records when (``job.updated_at``,
    the step's time) in ``job.progress["checkpoint_at"]`` for the card's "last checkpoint"
    field; ``job.checkpoint_key`` names it. Must run in the transaction that applies the
    step (it changes ``job``)."""
    at = job.updated_at.isoformat() if job.updated_at else None
    job.progress = dict(job.progress or {}, checkpoint_at=at, checkpoint_saved_key=key)


def interrupted(session: Session, job: JobRow) -> None:
    """Reply that the instance was lost (``job.reason``) and is being replaced."""
    text = render.interrupted(job.reason or "", has_checkpoint=bool(job.checkpoint_key))
    note(session, job, text)


def restored(session: Session, job: JobRow, key: str) -> None:
    """Reply that the job resumed from the checkpoint at ``key``."""
    note(session, job, render.restored(key))


def idle_warning(session: Session, job: JobRow, text: str) -> None:
    """The idle/stuck warning (mrkdwn ``text``) with Keep alive / Destroy buttons."""
    outbox.reply(
        session,
        channel=job.channel,
        thread_key=job.id,
        text=text,
        blocks=idle_warning_blocks(job.id, text),
        job_id=job.id,
    )


def price_prompt(session: Session, job: JobRow, text: str, price_per_hour_usd: Decimal) -> None:
    """The "no offer within the approved price" prompt (mrkdwn ``text``) with a button that
    raises the job's price ceiling to ``price_per_hour_usd`` and a Cancel button."""
    outbox.reply(
        session,
        channel=job.channel,
        thread_key=job.id,
        text=text,
        blocks=ceiling_prompt_blocks(job.id, text, str(price_per_hour_usd)),
        job_id=job.id,
    )


def destroy_escalation(session: Session, job: JobRow, instance: InstanceRow) -> None:
    """A destroy not confirmed in time: tell the job's thread and the ops channel."""
    text = render.destroy_escalation(job_id=job.id, provider_id=instance.provider_id)
    note(session, job, text)
    ops.escalate(session, text)


def finished(session: Session, job: JobRow, *, charts_dir: Path | None = None) -> None:
    """The closing replies: the loss chart if any, then the outcome (mentioning the
    requester), results links and final cost. The card (the top-level message) shows the
    outcome and cost too, so the channel sees it without opening the thread.

    A run of a group writes no reply when it succeeded or was cancelled (its card shows it;
    the group's end reports the runs), and a failure's reply mentions nobody.

    A failure's log lines are quoted as a code block of at most one section (newest lines
    kept); when lines had to be dropped and ``charts_dir`` is given, the whole quoted log
    also goes to the thread as a text file (redacted)."""
    in_group = job.group_id is not None
    if in_group and job.state != "failed":
        return
    points = [(int(p[0]), float(p[1])) for p in (job.metrics_history or {}).get("points", [])]
    if charts_dir is not None and len(points) >= 2 and not in_group:
        from gpubot.render.charts import loss_chart_png

        path = loss_chart_png(points, charts_dir / f"{job.id}-loss.png")
        outbox.upload(
            session,
            channel=job.channel,
            thread_key=job.id,
            path=str(path),
            title=f"{job.id} loss curve",
            job_id=job.id,
        )
    reply = render.finished(
        render.Outcome(
            job_id=job.id,
            state=job.state,
            spent_usd=spent_usd(session, job.id),
            reason=job.reason or "",
            files=list((job.results or {}).get("files", [])),
            metrics=dict((job.progress or {}).get("metrics") or {}),
            requester=None if in_group else job.requester,
        )
    )
    note(session, job, reply.text)
    if reply.dropped_log is not None and charts_dir is not None:
        _upload_log(session, job, charts_dir, reply.dropped_log)


def _upload_log(session: Session, job: JobRow, folder: Path, log: str) -> None:
    """The full log lines of a failure reason as a text file in the thread (a snippet), for
    when the reply's code block had to drop older lines."""
    path = folder / f"{job.id}-log-tail.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(redact_for_chat(log), encoding="utf-8")
    outbox.upload(
        session,
        channel=job.channel,
        thread_key=job.id,
        path=str(path),
        title=f"{job.id} log tail",
        job_id=job.id,
    )
