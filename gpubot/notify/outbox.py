"""The notification port, implemented as a durable outbox in the database.

The engine never talks to Slack or a terminal. It writes messages here, in the same
transaction as the state change they describe; a delivery loop (Slack: ``bot.delivery``;
console: ``bot.console``) sends them, paced and retried. A chat outage therefore delays
messages but loses none, and the card of a job is one row edited in place, so bursts of
progress collapse into one ``chat.update``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpubot.db.tables import MessageRow, utcnow
from gpubot.redact import redact_for_chat as redact


def _add(
    session: Session,
    *,
    channel: str,
    kind: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
    job_id: str | None = None,
    group_id: str | None = None,
    thread_key: str | None = None,
    user: str | None = None,
    file_path: str | None = None,
) -> MessageRow:
    """Queue one new message (redacted, dirty: to be delivered)."""
    row = MessageRow(
        job_id=job_id,
        group_id=group_id,
        channel=channel,
        thread_key=thread_key,
        kind=kind,
        user=user,
        text=redact(text),
        blocks={"blocks": blocks} if blocks else {},
        file_path=file_path,
        dirty=True,
    )
    session.add(row)
    return row


def post_parent(
    session: Session,
    *,
    channel: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
    job_id: str | None = None,
    group_id: str | None = None,
) -> None:
    """The thread's root message (the plan). One per job or group; the thread's replies and
    card name their owner (``thread_key`` = the job or group id), not this row."""
    _add(session, channel=channel, kind="parent", text=text, blocks=blocks,
         job_id=job_id, group_id=group_id)
    session.flush()


def upsert_card(
    session: Session,
    *,
    job_id: str,
    channel: str,
    thread_key: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
    group_id: str | None = None,
) -> None:
    """Create or replace the job's status card. Unchanged content is not marked dirty."""
    card = session.scalars(
        select(MessageRow).where(MessageRow.job_id == job_id, MessageRow.kind == "card")
    ).first()
    text = redact(text)
    if card is None:
        _add(session, channel=channel, kind="card", text=text, blocks=blocks,
             job_id=job_id, group_id=group_id, thread_key=thread_key)
        return
    new_blocks = {"blocks": blocks} if blocks else {}
    if card.text == text and card.blocks == new_blocks:
        return
    card.text = text
    card.blocks = new_blocks
    card.dirty = True
    card.version += 1
    card.updated_at = utcnow()


def reply(
    session: Session,
    *,
    channel: str,
    thread_key: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
    job_id: str | None = None,
    group_id: str | None = None,
) -> None:
    """A reply in the thread of ``thread_key`` (a job or group id), for events that matter."""
    _add(session, channel=channel, kind="reply", text=text, blocks=blocks,
         job_id=job_id, group_id=group_id, thread_key=thread_key)


def upload(
    session: Session,
    *,
    channel: str,
    thread_key: str,
    path: str,
    title: str,
    job_id: str | None = None,
) -> None:
    """A file (e.g. the loss chart PNG) for the thread."""
    _add(session, channel=channel, kind="file", text=title, job_id=job_id,
         thread_key=thread_key, file_path=path)


def to_channel(
    session: Session, *, channel: str, text: str, blocks: list[dict[str, Any]] | None = None
) -> None:
    """A top-level message (ops escalations, budget alerts for a channel)."""
    _add(session, channel=channel, kind="reply", text=text, blocks=blocks)


def pending(session: Session, *, now: datetime, limit: int = 200) -> list[MessageRow]:
    """Rows to deliver now, oldest first (parents before their cards and replies)."""
    return list(
        session.scalars(
            select(MessageRow)
            .where(MessageRow.dirty.is_(True), MessageRow.not_before <= now)
            .order_by(MessageRow.id)
            .limit(limit)
        )
    )
