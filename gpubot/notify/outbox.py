"""The notification port, implemented as a durable outbox in the database.

The engine never talks to Slack or a terminal. It writes messages here, in the same
transaction as the state change they describe; a delivery loop (Slack: ``bot.delivery``;
console: ``bot.console``) sends them, paced and retried. A chat outage therefore delays
messages but loses none, and the card of a job is one row edited in place, so bursts of
progress collapse into one ``chat.update``.

Threads: a thread's root is the top-level message of its owner (a job, or a group of runs),
named by ``thread_key`` = the owner's id on every message of the thread. For a job or a
group the root is its live card (``kind = "card"``, no ``thread_key``: posted top level,
then edited in place); :func:`post_parent` writes a static root (rows from before, tests).
A run of a group has no root of its own: its card and replies (``thread_key`` = the run's
job id) go to its group's thread (:func:`_parent_of`).

Row states (the ``messages`` table): ``dirty`` = to be sent. Delivered rows have ``sent_at``
set (a posted parent also has its ``ts``). A row that failed for good (:func:`fail`) is not
dirty and has no ``sent_at``; when that row is a thread's parent, every queued and future
message of its thread fails too (:func:`fail_orphans`), so nothing waits forever for a thread
that will never exist.

Selection (:func:`pending`) is fair per channel and keeps thread order: a thread's messages
are selected only once its parent is posted and every earlier message of the thread is out.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from gpubot.db.tables import JobGroupRow, JobRow, MessageRow, utcnow
from gpubot.redact import redact_for_chat as redact
from gpubot.render import mrkdwn as md

CONSOLE_CHANNEL = "console"
"""Rows for the terminal front: no Slack destination, never wait for a thread."""
DM_KIND = "dm"
"""A direct message to ``user`` (Slack: ``conversations.open``, then ``chat.postMessage``);
``channel`` holds the user id, so pacing and fairness count it as its own conversation."""
DM_REPEAT_AFTER = timedelta(hours=1)
"""At most one "invite me" DM per user and channel in this time."""
PER_CHANNEL_MAX = 20
"""Rows one channel may take of a :func:`pending` batch."""
HOME_KIND = "home"
"""A request to republish a user's App Home (Slack: ``views.publish``, the view built from
the database when it is delivered). One row per user (``user`` and ``channel`` = the user
id), marked dirty again by :func:`request_home_refresh`, so many changes before a delivery
give one publish. Its ``blocks`` column holds ``{"job_states": {job id: state}}`` (the
states the Home was last asked to show), not Block Kit; ``text`` is empty."""
_SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{1,30}$")
"""A Slack user id (the ids :func:`gpubot.render.mrkdwn.mention` makes mentions of)."""
HOME_STATES_MAX = 200
"""Job states a ``home`` row remembers; finished jobs are forgotten first beyond this."""
BROADCAST_KIND = "broadcast"
"""A reply in a thread that is also shown in the channel (Slack: ``chat.postMessage`` with
``thread_ts`` and ``reply_broadcast``); otherwise delivered and ordered like a ``reply``."""


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


ROOT_KINDS = ("parent", "card")
"""Kinds a thread's root may have (with no ``thread_key``): a static parent, or a live card."""


def is_root(kind: str, thread_key: str | None) -> bool:
    """Whether a row of ``kind`` and ``thread_key`` is a thread's top-level root."""
    return kind in ROOT_KINDS and thread_key is None


def post_parent(
    session: Session,
    *,
    channel: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
    job_id: str | None = None,
    group_id: str | None = None,
) -> None:
    """A static thread root (never edited), or a top-level message of its own when neither
    id is given. Jobs and groups use their live card as the root instead
    (:func:`upsert_card` with no ``thread_key``); the thread's replies name their owner
    (``thread_key`` = the job or group id), not this row."""
    _add(session, channel=channel, kind="parent", text=text, blocks=blocks,
         job_id=job_id, group_id=group_id)
    session.flush()


_CARD_OF_JOB = select(MessageRow).where(
    MessageRow.job_id == bindparam("job_id"), MessageRow.kind == "card"
)
"""Built once: every step refreshes its job's card."""


def upsert_card(
    session: Session,
    *,
    job_id: str,
    channel: str,
    thread_key: str | None,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
    group_id: str | None = None,
) -> None:
    """Create or replace the live card of ``job_id`` (a job id, or a group id for a group's
    summary). Unchanged content is not marked dirty.

    ``thread_key`` None: the card is the top-level root of the owner's thread (posted once,
    then edited in place); else it is a message in that thread. Only a new card takes
    ``thread_key``: an existing card stays where it was posted. A card that failed for good
    (:func:`fail`) takes the new content but stays failed: its channel refused it."""
    card = session.scalars(_CARD_OF_JOB, {"job_id": job_id}).first()
    text = redact(text)
    if card is None:
        _add(session, channel=channel, kind="card", text=text, blocks=blocks,
             job_id=job_id, group_id=group_id, thread_key=thread_key)
        return
    new_blocks = {"blocks": blocks} if blocks else {}
    if card.text == text and card.blocks == new_blocks:
        return
    failed = not card.dirty and card.sent_at is None
    card.text = text
    card.blocks = new_blocks
    card.dirty = not failed
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
    broadcast: bool = False,
) -> None:
    """A reply in the thread of ``thread_key`` (a job or group id), for events that matter.

    ``broadcast``: the reply is also shown in the channel (a :data:`BROADCAST_KIND` row,
    posted with ``reply_broadcast``), for the few that close a thread (a group's end)."""
    _add(session, channel=channel, kind=BROADCAST_KIND if broadcast else "reply", text=text,
         blocks=blocks, job_id=job_id, group_id=group_id, thread_key=thread_key)


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


def request_home_refresh(session: Session, *, user: str, job_id: str, state: str) -> bool:
    """Ask for ``user``'s App Home to be republished because ``job_id`` is now in ``state``;
    return whether a publish was requested.

    Nothing is requested when the user's ``home`` row already knows this state (a card
    refresh without a state change), or when ``user`` is not a Slack user id (the console).
    Otherwise the user's one ``home`` row (:data:`HOME_KIND`) is created or marked dirty again
    with a new version, its retry count reset: however many jobs change before the next
    delivery, the user gets one ``views.publish`` showing them all."""
    if not _SLACK_USER_ID.match(user or ""):
        return False
    row = session.scalars(
        select(MessageRow)
        .where(MessageRow.kind == HOME_KIND, MessageRow.user == user)
        .order_by(MessageRow.id)
    ).first()
    if row is None:
        session.add(MessageRow(channel=user, kind=HOME_KIND, user=user, text="",
                               blocks={"job_states": {job_id: state}}, dirty=True))
        return True
    states = dict((row.blocks or {}).get("job_states") or {})
    if states.get(job_id) == state:
        return False
    states[job_id] = state
    if len(states) > HOME_STATES_MAX:
        finished = {"succeeded", "failed", "cancelled"}
        for key in [k for k, v in states.items() if v in finished and k != job_id]:
            if len(states) <= HOME_STATES_MAX:
                break
            del states[key]
    row.blocks = {"job_states": states}
    row.dirty = True
    row.attempts = 0
    row.version += 1
    row.updated_at = utcnow()
    return True


def _parent_of(parent: Any, thread_key: Any) -> ColumnElement[bool]:
    """``parent`` (an alias of MessageRow) is the root of the thread named ``thread_key``.

    The thread's owner is the job's group when ``thread_key`` names a run of a group (its
    messages go to the group's thread), else ``thread_key`` itself (a job or a group). The
    root is the owner's top-level card or static parent (:data:`ROOT_KINDS`, no
    ``thread_key``): ``job_id`` = the owner, or a group parent's ``group_id``."""
    owner = func.coalesce(
        select(JobRow.group_id).where(JobRow.id == thread_key).scalar_subquery(), thread_key
    )
    return and_(
        parent.kind.in_(ROOT_KINDS),
        parent.thread_key.is_(None),
        or_(
            parent.job_id == owner,
            and_(parent.job_id.is_(None), parent.group_id == owner),
        ),
    )


def thread_root_ts(session: Session, thread_key: str) -> str | None:
    """The Slack ``ts`` of the posted root of the thread named ``thread_key`` (see
    :func:`_parent_of`); None while it is not posted."""
    parent = aliased(MessageRow)
    return session.scalars(
        select(parent.ts)
        .where(_parent_of(parent, thread_key), parent.ts.is_not(None))
        .order_by(parent.id)
    ).first()


def pending(
    session: Session, *, now: datetime, limit: int = 200, per_channel: int = PER_CHANNEL_MAX
) -> list[MessageRow]:
    """Rows to deliver now, at most ``limit``, fair per channel.

    A row is due when it is dirty, its ``not_before`` has passed and, for a message in a
    thread (``thread_key`` set; not a parent, not an edit of a posted card, not the console),
    the thread's parent is posted and no earlier message of the thread is still unsent (thread
    order is kept even across deliverers and back-offs). Each channel contributes at most
    ``per_channel`` rows, handed out round-robin (every channel's oldest row first, then every
    channel's second ...), so a backlog in one channel never holds up another. Within a
    channel the order is oldest first.
    """
    msg = MessageRow
    parent = aliased(MessageRow)
    earlier = aliased(MessageRow)
    parent_posted = exists().where(_parent_of(parent, msg.thread_key), parent.ts.is_not(None))
    earlier_unsent = exists().where(
        earlier.thread_key == msg.thread_key,
        earlier.channel == msg.channel,
        earlier.id < msg.id,
        earlier.dirty.is_(True),
        earlier.ts.is_(None),
        earlier.kind != "parent",
    )
    ready = or_(
        msg.channel == CONSOLE_CHANNEL,
        msg.kind.in_(("parent", DM_KIND)),
        msg.thread_key.is_(None),
        and_(msg.kind == "card", msg.ts.is_not(None)),
        and_(parent_posted, ~earlier_unsent),
    )
    ranked = (
        select(
            msg.id.label("id"),
            func.row_number().over(partition_by=msg.channel, order_by=msg.id).label("rank"),
        )
        .where(msg.dirty.is_(True), msg.not_before <= now, ready)
        .subquery()
    )
    return list(
        session.scalars(
            select(MessageRow)
            .join(ranked, MessageRow.id == ranked.c.id)
            .where(ranked.c.rank <= per_channel)
            .order_by(ranked.c.rank, MessageRow.id)
            .limit(limit)
        )
    )


def fail(session: Session, row_id: int) -> None:
    """Give up on one row for good: not dirty, no ``sent_at`` (see the module docstring).
    A failed parent takes its thread's queued messages with it (:func:`fail_orphans`)."""
    session.execute(
        update(MessageRow)
        .where(MessageRow.id == row_id)
        .values(dirty=False, sent_at=None, attempts=MessageRow.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    fail_orphans(session)


def fail_orphans(session: Session) -> int:
    """Fail every queued message whose thread's parent failed; return how many.

    Messages written for such a thread later (a card refresh, a reply) are failed by the next
    call: the delivery loop calls this every round.
    """
    parent = aliased(MessageRow)
    parent_failed = exists().where(
        _parent_of(parent, MessageRow.thread_key),
        parent.dirty.is_(False),
        parent.ts.is_(None),
        parent.sent_at.is_(None),
    )
    result = session.execute(
        update(MessageRow)
        .where(
            MessageRow.dirty.is_(True),
            MessageRow.thread_key.is_not(None),
            MessageRow.kind != "parent",
            parent_failed,
        )
        .values(dirty=False, sent_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def fail_channel(session: Session, *, channel: str, error: str, now: datetime) -> int:
    """Fail every queued message of ``channel`` that no deliverer holds (``not_before`` has
    passed): the channel refused the bot (``error``, e.g. ``not_in_channel``) and would refuse
    each of them alike. Their threads fail with them (:func:`fail_orphans`), and the requester
    of each failed thread is told by DM how to fix it (:func:`direct_message`, once per user
    and channel per hour). Returns how many messages failed."""
    failed_parents = list(
        session.execute(
            select(MessageRow.job_id, MessageRow.group_id).where(
                MessageRow.channel == channel,
                MessageRow.kind.in_(ROOT_KINDS),
                MessageRow.thread_key.is_(None),
                MessageRow.dirty.is_(True),
                MessageRow.ts.is_(None),
                MessageRow.not_before <= now,
            )
        )
    )
    result = session.execute(
        update(MessageRow)
        .where(
            MessageRow.channel == channel,
            MessageRow.dirty.is_(True),
            MessageRow.not_before <= now,
        )
        .values(dirty=False, sent_at=None)
        .execution_options(synchronize_session=False)
    )
    count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    count += fail_orphans(session)
    for job_id, group_id in failed_parents:
        user = requester_of(session, job_id=job_id, group_id=group_id)
        if user:
            direct_message(
                session,
                user=user,
                about_channel=channel,
                text=unreachable_text(channel=channel, error=error, thread_id=job_id or group_id),
                now=now,
            )
    return count


def requester_of(
    session: Session, *, job_id: str | None, group_id: str | None
) -> str | None:
    """The Slack user who asked for the job (or else the group); None: unknown."""
    if job_id:
        job = session.get(JobRow, job_id)
        if job is not None and job.requester:
            return job.requester
    if group_id:
        group = session.get(JobGroupRow, group_id)
        if group is not None and group.requester:
            return group.requester
    return None


def direct_message(
    session: Session, *, user: str, text: str, about_channel: str, now: datetime
) -> bool:
    """Queue a DM to ``user`` about ``about_channel`` unless one was queued in the last
    :data:`DM_REPEAT_AFTER`; return whether one was queued.

    The row's ``thread_key`` records ``about_channel`` (a DM has no thread; it is only used
    to find an earlier DM about the same channel).
    """
    earlier = session.scalars(
        select(MessageRow.id).where(
            MessageRow.kind == DM_KIND,
            MessageRow.user == user,
            MessageRow.thread_key == f"dm:{about_channel}",
            MessageRow.created_at >= now - DM_REPEAT_AFTER,
        )
    ).first()
    if earlier is not None:
        return False
    session.add(
        MessageRow(
            channel=user,
            kind=DM_KIND,
            user=user,
            thread_key=f"dm:{about_channel}",
            text=redact(text),
            blocks={},
            dirty=True,
            created_at=now,
        )
    )
    return True


def unreachable_text(*, channel: str, error: str, thread_id: str | None) -> str:
    """What the requester is told when the bot cannot post in ``channel``."""
    what = f"`{md.inline(thread_id, 40)}`" if thread_id else "your request"
    return (
        f"I could not post the thread of {what} in {md.channel_ref(channel)} "
        f"(Slack said `{md.inline(error, 60)}`): I am not a member of that channel, or it is "
        "private, archived or a direct message I cannot see.\n"
        "Invite me there with `/invite @gpubot`, or launch from a channel I am in. "
        "The job itself is not affected; `/gpu status` shows its card."
    )
