"""Job events as outbox messages: the status card and the replies that matter.

Called inside the engine's applying transaction, so a message exists exactly when the state
change it reports was committed. Texts are mrkdwn: every job, user or provider value goes
through :mod:`gpubot.render.mrkdwn` (escaped) before it is put into a message.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpubot.db.tables import InstanceRow, JobRow, LedgerEntryRow
from gpubot.lifecycle import ProgressPoint, estimate_eta_seconds
from gpubot.models import RentalChoice
from gpubot.notify import outbox
from gpubot.redact import redact_for_chat
from gpubot.render import mrkdwn as md
from gpubot.render.text import card_blocks, card_lines, usd
from gpubot.render.views import JobView


def spent_usd(session: Session, job_id: str) -> Decimal:
    """Money the ledger holds for the job (all its rentals)."""
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
            LedgerEntryRow.job_id == job_id
        )
    )
    return Decimal(str(total or 0))


def job_view(session: Session, job: JobRow) -> JobView:
    instance = session.scalars(
        select(InstanceRow)
        .where(InstanceRow.job_id == job.id, InstanceRow.provider_id.is_not(None))
        .order_by(InstanceRow.id.desc())
    ).first()
    progress = job.progress or {}
    first = progress.get("first")
    latest = progress.get("latest")
    eta = None
    if first and latest:
        from datetime import datetime

        eta = estimate_eta_seconds(
            ProgressPoint(int(first[0]), datetime.fromisoformat(first[1])),
            ProgressPoint(int(latest[0]), datetime.fromisoformat(latest[1])),
            progress.get("total_steps"),
        )
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
        price_per_hour_usd=instance.price_per_hour_usd if instance else None,
        budget_usd=job.budget_usd,
        gpu_name=instance.gpu_name if instance else "",
        provider_id=instance.provider_id if instance else None,
        rental_type=job.rental_type,
        attempts=job.attempts,
        ssh_command=ssh_command,
        results=list((job.results or {}).get("files", [])),
        updated_at=job.updated_at,
    )


def refresh_card(session: Session, job: JobRow) -> None:
    """Bring the job's status card up to date (no-op when nothing visible changed)."""
    view = job_view(session, job)
    outbox.upsert_card(
        session,
        job_id=job.id,
        channel=job.channel,
        thread_key=job.id,
        text="\n".join(card_lines(view)),
        blocks=card_blocks(view),
        group_id=job.group_id,
    )


def note(session: Session, job: JobRow, text: str) -> None:
    """A reply in the job's thread. ``text`` is mrkdwn: callers escape the values they put in
    (:func:`gpubot.render.mrkdwn.escape`)."""
    outbox.reply(session, channel=job.channel, thread_key=job.id, text=text, job_id=job.id)


def rented(session: Session, job: JobRow, choice: RentalChoice, provider_id: str) -> None:
    kind = "interruptible" if choice.bid_per_hour_usd is not None else "on-demand"
    note(
        session,
        job,
        f"Rented instance {md.inline(provider_id, 40)}: {choice.offer.num_gpus}x "
        f"{md.inline(choice.offer.gpu_name, 60)}, "
        f"{kind} at {usd(choice.price_per_hour_usd)}/h (attempt {job.attempts}).",
    )


def started(session: Session, job: JobRow) -> None:
    note(session, job, f":rocket: {md.inline(job.id, 60)} is running.")


def interactive_ready(session: Session, job: JobRow, instance: InstanceRow) -> None:
    note(
        session,
        job,
        f":computer: Your box is ready: "
        f"`{md.inline(f'ssh -p {instance.ssh_port} root@{instance.ssh_host}', 200)}` "
        f"({md.inline(instance.gpu_name, 60)}, {usd(instance.price_per_hour_usd)}/h). "
        "It is destroyed when idle; `/gpu keep &lt;job&gt; &lt;hours&gt;` keeps it.",
    )


def checkpoint_saved(session: Session, job: JobRow, key: str) -> None:
    name = key.rstrip("/").rsplit("/", 1)[-1]
    note(session, job, f":floppy_disk: Checkpoint saved: {md.inline(name, 200)}")


def interrupted(session: Session, job: JobRow) -> None:
    reason = md.inline(job.reason, 500)
    note(
        session,
        job,
        f":warning: Instance lost ({reason}). Renting a replacement and resuming from the "
        "newest checkpoint." if job.checkpoint_key else
        f":warning: Instance lost ({reason}). Renting a replacement.",
    )


def restored(session: Session, job: JobRow, key: str) -> None:
    name = key.rstrip("/").rsplit("/", 1)[-1]
    note(session, job, f":arrows_counterclockwise: Resumed from checkpoint {md.inline(name)}.")


def destroy_escalation(session: Session, job: JobRow, instance: InstanceRow) -> None:
    pid = md.inline(instance.provider_id, 40)
    text = (
        f":rotating_light: Could not confirm destruction of instance {pid} "
        f"(job {md.inline(job.id, 60)}). Destroy it by hand: `vastai destroy instance {pid}`."
    )
    note(session, job, text)
    from gpubot.notify import ops
    ops.escalate(session, text)


def finished(session: Session, job: JobRow, *, charts_dir: Path | None = None) -> None:
    """The closing replies: outcome, results links and final cost; the loss chart if any.

    A failure's log lines are quoted as a code block of at most one section (newest lines
    kept); when lines had to be dropped and ``charts_dir`` is given, the whole quoted log
    also goes to the thread as a text file (redacted)."""
    spent = spent_usd(session, job.id)
    points = [(int(p[0]), float(p[1])) for p in (job.metrics_history or {}).get("points", [])]
    if charts_dir is not None and len(points) >= 2:
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
    jid = md.inline(job.id, 60)
    if job.state == "succeeded":
        files = (job.results or {}).get("files", [])
        lines = [f":white_check_mark: {jid} succeeded. Final cost {usd(spent)}."]
        for item in files[:20]:
            url = item.get("url")
            lines.append(
                f"• {md.link(str(url) if url else None, item.get('name'))} "
                f"({md.inline(item.get('size_bytes'), 20)} B, "
                f"sha256 {md.inline(str(item.get('sha256', ''))[:12], 12)}…)"
            )
        if len(files) > 20:
            lines.append(f"… and {len(files) - 20} more files.")
        metrics = (job.progress or {}).get("metrics") or {}
        if metrics:
            lines.append(
                "Final metrics: "
                + ", ".join(f"{md.inline(k, 80)}={_metric(v)}" for k, v in metrics.items())
            )
        note(session, job, md.clamp("\n".join(lines), md.SECTION_TEXT_MAX))
    else:
        verb = "was cancelled" if job.state == "cancelled" else "failed"
        reason = md.strip_control(job.reason or "no reason recorded").strip()
        first, _, log = reason.partition("\n")
        text = f":x: {jid} {verb}: {md.inline(first.rstrip(':. '), 500)}. "
        text += f"Instance destroyed. Final cost {usd(spent)}."
        clamped = False
        if log.strip():
            room = md.SECTION_TEXT_MAX - len(text) - 1
            text += "\n" + md.code_block(log.split("\n"), room)
            clamped = len(md.code_block(log.split("\n"), 10**9)) > room
        note(session, job, text)
        if clamped and charts_dir is not None:
            _upload_log(session, job, charts_dir, log)


def _metric(value: object) -> str:
    """A metric value as ``4g`` when numeric, else escaped text."""
    try:
        return f"{float(value):.4g}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return md.inline(value, 40)


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
