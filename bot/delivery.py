"""Slack delivery of the outbox (:mod:`gpubot.notify.outbox`).

:meth:`SlackDeliverer.deliver_once` sends what is due now and returns; it never sleeps and is
safe to run from several processes at once (each row is leased with a conditional UPDATE
before it is sent; :func:`gpubot.notify.outbox.pending` keeps thread order and is fair per
channel). Rules:

* A thread's root (a job's or group's live card, or a static ``parent``; rows without a
  ``thread_key``) is posted top level; its ``ts`` is stored (and copied to the job's or
  group's ``thread_ts``), and the thread's messages are selected only once it is posted. A
  run of a group posts into its group's thread (:func:`gpubot.notify.outbox.thread_root_ts`).
* ``card`` rows (a root card, or a run's card in its group's thread) are posted once, then
  edited in place with ``chat.update``: at most one update per card every
  ``card_update_interval_seconds`` (3 s), always the newest version (a row is marked clean
  only if its ``version`` did not change while it was sent).
* ``reply`` rows go into the job's thread (or top level without a thread key); ``broadcast``
  rows too, with ``reply_broadcast`` so the channel sees them (in the thread only when Slack
  answers ``cant_broadcast``); ``file`` rows are uploaded with ``files_upload_v2`` into the
  thread, ``ephemeral`` rows go to one user, ``dm`` rows are direct messages
  (``conversations.open``, then ``chat.postMessage``).
* ``home`` rows (one per user, :func:`gpubot.notify.outbox.request_home_refresh`) publish the
  user's App Home with ``views.publish``, the view built from the database when sent: at most
  once per ``card_update_interval_seconds`` per user, paced per method like chat.update.

Pacing, shared by every deliverer (:mod:`gpubot.pace`: Redis when the broker is ``redis://``,
this process otherwise). Slack's "Rate limits" page (https://api.slack.com/apis/rate-limits):
``chat.postMessage`` "generally allows posting one message per second per channel" (short
bursts tolerated, without a guarantee); ``chat.update`` is Tier 3 (50+ per minute, per
workspace); a refused call is answered HTTP 429 with ``Retry-After`` seconds.

* Posts (``chat.postMessage``, file uploads) take the channel's slot for the time of the call
  and free it ``post_interval_seconds`` after the call *returned*, so two posts never reach
  Slack closer than that, whatever the number of deliverers or the network jitter.
* ``chat.update`` (and ``chat.postEphemeral``, ``conversations.open``) are paced per method for
  the workspace, with a small burst allowance.
* HTTP 429: the channel (posts) or the method is closed for ``Retry-After`` seconds for every
  deliverer, and the row's ``not_before`` moves as far. Nothing sleeps; other channels go on.

Failures:

* Connection failures and 5xx (a Slack outage): the row stays dirty with a back-off and the
  round ends; nothing is lost. So do errors of the bot token itself (``invalid_auth``,
  ``token_revoked`` ...): they heal when the token is fixed, not by dropping messages.
* ``invalid_blocks`` / ``msg_too_long``: sent again at once as text only (the row's text,
  clamped), so a card never stays stale with live buttons; the failing block kinds are logged.
* Errors that retrying does not heal fail the row at once (chat.postMessage's Errors table):
  channel errors (:data:`CHANNEL_ERRORS`: ``not_in_channel``, ``channel_not_found``,
  ``is_archived`` ...) and message errors (:data:`MESSAGE_ERRORS`). A failed parent fails its
  thread's queued and future messages. After a channel error, every queued message of that
  channel fails without a call, and the requesters of the failed threads get a DM (once per
  user and channel per hour) asking to ``/invite @gpubot``. Unknown errors are retried with
  back-off and fail after :data:`MAX_ATTEMPTS`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from sqlalchemy import update

from bot import home
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobGroupRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.notify import outbox
from gpubot.pace import LocalSlots, Slot, Slots, make_slots
from gpubot.redact import redact
from gpubot.render import mrkdwn as md
from gpubot.settings import Settings

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
LEASE_SECONDS = 60.0
CONSOLE_CHANNEL = outbox.CONSOLE_CHANNEL
"""Rows for the terminal front; they have no Slack destination and are not sent."""

CHANNEL_ERRORS = frozenset(
    {
        "not_in_channel",
        "channel_not_found",
        "is_archived",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "ekm_access_denied",
        "team_access_not_granted",
        "cannot_reply_to_message",
    }
)
"""The conversation cannot take the bot's messages until a person changes something (invites
the bot, unarchives the channel): retrying does not heal these."""
MESSAGE_ERRORS = frozenset(
    {
        "invalid_blocks",
        "msg_too_long",
        "no_text",
        "too_many_attachments",
        "invalid_attachments",
        "invalid_arguments",
        "invalid_metadata_format",
        "metadata_too_large",
        "cant_update_message",
        "edit_window_closed",
        "cant_broadcast",
        "message_not_found",
        "thread_not_found",
        "duplicate_message_not_found",
    }
)
"""This message will never be accepted as it is."""
TOKEN_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "not_allowed_token_type",
        "org_login_required",
        "team_access_not_granted_to_app",
    }
)
"""The bot token itself is refused: every message would fail alike, so delivery pauses (the
rows wait, with back-off) until the token is fixed."""
FALLBACK_ERRORS = frozenset({"invalid_blocks", "msg_too_long"})
"""Answered by sending the message again at once as clamped text only."""

METHOD_INTERVALS_SECONDS = {
    "chat.update": 60 / 50,
    "chat.postEphemeral": 60 / 100,
    "conversations.open": 60 / 50,
    "views.publish": 60 / 100,
}
"""Workspace-wide pace per method (Slack tiers: chat.update and conversations.open Tier 3,
50+/min; chat.postEphemeral and views.publish Tier 4, 100+/min: the methods' pages,
e.g. https://api.slack.com/methods/views.publish)."""
METHOD_BURST = 10
"""Calls of a method that may go out at once before its pace applies."""
TOKEN_PAUSE_SECONDS = 30.0

_POINTER = re.compile(r"blocks(?:\[|/)(\d+)")


@dataclass(frozen=True)
class _Msg:
    """A detached snapshot of one outbox row."""

    id: int
    kind: str
    channel: str
    thread_key: str | None
    job_id: str | None
    group_id: str | None
    user: str | None
    text: str
    blocks: list[dict[str, Any]] | None
    file_path: str | None
    ts: str | None
    version: int
    attempts: int


class _Outage(Exception):
    """Slack could not be reached (or refuses the token): stop this round."""


class _Busy(Exception):
    """The pace has no slot now for this row's channel or method: try a later round."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _retry_after_seconds(error: SlackApiError) -> float:
    headers = getattr(error.response, "headers", {}) or {}
    value = headers.get("Retry-After") or headers.get("retry-after") or 1
    if isinstance(value, list):
        value = value[0]
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 1.0


def _status(error: SlackApiError) -> int:
    return int(getattr(error.response, "status_code", 0) or 0)


def _code(error: SlackApiError) -> str:
    data = getattr(error.response, "data", None) if error.response is not None else None
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def _failed_block_kinds(error: SlackApiError, blocks: list[dict[str, Any]] | None) -> str:
    """``section@3, actions@5``: the blocks Slack's ``response_metadata.messages`` point at
    (JSON pointers ``/blocks/3/...``), by type and index only (never their text)."""
    data = getattr(error.response, "data", None) if error.response is not None else None
    messages = (data or {}).get("response_metadata", {}).get("messages", []) if isinstance(
        data, dict
    ) else []
    indices = sorted({int(m) for text in messages for m in _POINTER.findall(str(text))})
    kinds = []
    for index in indices:
        block = (blocks or [])[index] if index < len(blocks or []) else None
        kind = block.get("type") if isinstance(block, dict) else None
        kinds.append(f"{kind if isinstance(kind, str) else '?'}@{index}")
    return ", ".join(kinds) if kinds else f"unknown ({len(blocks or [])} blocks)"


class SlackDeliverer:
    """Drains the outbox to Slack; see the module docstring for the rules."""

    def __init__(
        self,
        client: WebClient,
        deps: EngineDeps,
        *,
        post_interval_seconds: float = 1.0,
        card_update_interval_seconds: float = 3.0,
        method_intervals_seconds: dict[str, float] | None = None,
        batch: int = 200,
        slots: Slots | None = None,
    ) -> None:
        """``slots``: the shared pace (:func:`gpubot.pace.make_slots`; :meth:`from_settings`
        picks it from the broker); None: a pace of this deliverer's own (tests, one process).
        ``method_intervals_seconds`` overrides :data:`METHOD_INTERVALS_SECONDS`."""
        self.client = client
        self.deps = deps
        self.post_interval = post_interval_seconds
        self.card_update_interval = card_update_interval_seconds
        self.method_intervals = {**METHOD_INTERVALS_SECONDS, **(method_intervals_seconds or {})}
        self.batch = batch
        self.slots: Slots = slots if slots is not None else LocalSlots()
        timeout = getattr(client, "timeout", 30)
        self.hold_seconds = float(timeout if isinstance(timeout, int | float) else 30) + max(
            1.0, post_interval_seconds
        )
        """How long a channel stays taken by a post in flight (a crashed deliverer's hold
        ends by itself): the client's timeout plus one interval."""
        self._busy: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings, deps: EngineDeps) -> SlackDeliverer:
        """A deliverer with a WebClient on SLACK_BOT_TOKEN and SLACK_API_URL, paced with every
        other deliverer of the same bot token: on the broker's Redis when GPUBOT_BROKER_URL is
        ``redis://``, else in this process.

        The client has no rate-limit retry handler on purpose: 429s are honoured by
        rescheduling the row, not by sleeping in the worker.
        """
        if settings.slack_bot_token is None:
            raise ValueError("SLACK_BOT_TOKEN is not set")
        token = settings.slack_bot_token.get_secret_value()
        client = WebClient(token=token, base_url=settings.slack_api_url, timeout=15)
        # The pace is per bot (one Slack app install); keys name a hash, never the token.
        bot = hashlib.sha256(token.encode()).hexdigest()[:16]
        slots = make_slots(settings.broker_url, key_prefix=f"gpubot:slack-pace:{bot}")
        return cls(client, deps, slots=slots)

    # -- the round ------------------------------------------------------------------------

    def deliver_once(self) -> int:
        """Send every row that is due now (within pacing); return how many were sent.

        Also fails the queued messages of threads whose parent failed
        (:func:`gpubot.notify.outbox.fail_orphans`).
        """
        now = _utcnow()
        with session_scope(self.deps.sessions) as session:
            orphans = outbox.fail_orphans(session)
            rows = [self._snapshot(r) for r in outbox.pending(session, now=now, limit=self.batch)]
        if orphans:
            logger.warning("outbox: %s messages of threads that could not be posted failed",
                           orphans)
        self._busy = set()
        sent = 0
        for msg in rows:
            try:
                if self._deliver(msg):
                    sent += 1
            except _Outage:
                break
        return sent

    def _snapshot(self, row: MessageRow) -> _Msg:
        blocks = (row.blocks or {}).get("blocks") or None
        return _Msg(
            id=row.id,
            kind=row.kind,
            channel=row.channel,
            thread_key=row.thread_key,
            job_id=row.job_id,
            group_id=row.group_id,
            user=row.user,
            text=row.text or "",
            blocks=blocks,
            file_path=row.file_path,
            ts=row.ts,
            version=row.version,
            attempts=row.attempts,
        )

    def _deliver(self, msg: _Msg) -> bool:
        if msg.channel == CONSOLE_CHANNEL:
            self._finish(msg, ts=msg.ts, next_after=0.0)
            return False
        method = self._method_for(msg)
        if method == "none":
            self._finish(msg, ts=msg.ts, next_after=0.0)
            return False
        thread_ts: str | None = None
        if msg.kind not in ("parent", outbox.DM_KIND) and msg.thread_key is not None:
            if method != "chat.update":
                thread_ts = self._parent_ts(msg.thread_key)
                if thread_ts is None:
                    return False  # the parent is not posted yet (pending() filters these)
        pace_key = self._pace_key(msg, method)
        if pace_key in self._busy:
            return False
        slot = self._take(pace_key, method)
        if slot is None:
            self._busy.add(pace_key)
            return False
        if not self._lease(msg):
            self._release(pace_key, method, slot, 0.0)
            return False
        after = self.post_interval
        try:
            ts = self._send(msg, method, thread_ts)
        except SlackApiError as e:
            after = self._failed_api(msg, method, pace_key, e)
            return False
        except (SlackRequestError, OSError) as e:
            logger.warning("slack unreachable (%s): %s", method, redact(str(e)))
            self._reschedule(msg, self._backoff(msg))
            raise _Outage from e
        finally:
            self._release(pace_key, method, slot, after)
        # A card, or a user's Home, is sent again at most once per interval: the changes
        # meanwhile collapse into the next call.
        next_after = (
            self.card_update_interval if msg.kind in ("card", outbox.HOME_KIND) else 0.0
        )
        self._finish(msg, ts=ts or msg.ts, next_after=next_after)
        return True

    @staticmethod
    def _method_for(msg: _Msg) -> str:
        if msg.kind == "card" and msg.ts:
            return "chat.update"
        if msg.kind == outbox.HOME_KIND:
            return "views.publish"
        if msg.kind == "ephemeral":
            return "chat.postEphemeral"
        if msg.kind == "file":
            return "files.upload"
        if msg.kind == "parent" and msg.ts:
            return "none"
        return "chat.postMessage"

    # -- pacing ---------------------------------------------------------------------------

    @staticmethod
    def _pace_key(msg: _Msg, method: str) -> str:
        if method in METHOD_INTERVALS_SECONDS:
            return f"method:{method}"
        return f"post:{msg.channel}"

    def _take(self, pace_key: str, method: str) -> Slot | None:
        """A slot to call now, or None. Posts hold their channel for the call; methods are
        paced with a burst allowance (a reserved slot up to METHOD_BURST intervals ahead)."""
        if pace_key.startswith("method:"):
            interval = self.method_intervals[method]
            slot = self.slots.reserve(
                pace_key, interval, max_wait_seconds=interval * (METHOD_BURST - 1)
            )
        else:
            slot = self.slots.reserve(pace_key, self.hold_seconds)
        return slot if slot.reserved else None

    def _release(self, pace_key: str, method: str, slot: Slot, after_seconds: float) -> None:
        """Free a post's channel ``after_seconds`` from now (methods need nothing: their pace
        moved when the slot was taken; a 429 defers them in :meth:`_failed_api`)."""
        if pace_key.startswith("post:"):
            self.slots.settle(pace_key, slot, after_seconds)

    # -- sending --------------------------------------------------------------------------

    def _send(self, msg: _Msg, method: str, thread_ts: str | None) -> str | None:
        try:
            return self._call(msg, method, thread_ts, msg.blocks, msg.text or " ")
        except SlackApiError as e:
            code = _code(e)
            if code == "cant_broadcast" and msg.kind == outbox.BROADCAST_KIND:
                # The reply still belongs in the thread: post it there without the broadcast.
                logger.warning("slack refused to broadcast row %s; posting it in the thread "
                               "only", msg.id)
                return self._call(msg, method, thread_ts, msg.blocks, msg.text or " ",
                                  broadcast=False)
            if code not in FALLBACK_ERRORS or method in ("files.upload", "views.publish"):
                raise
            logger.warning(
                "slack %s refused row %s (%s, %s) with %s; failing blocks: %s; sending it "
                "again as text only",
                method, msg.id, msg.kind, msg.channel, code, _failed_block_kinds(e, msg.blocks),
            )
            text = md.clamp(msg.text or " ", md.TEXT_SOFT_MAX)
            return self._call(msg, method, thread_ts, [] if method == "chat.update" else None,
                              text)

    def _call(
        self,
        msg: _Msg,
        method: str,
        thread_ts: str | None,
        blocks: list[dict[str, Any]] | None,
        text: str,
        *,
        broadcast: bool = True,
    ) -> str | None:
        """One Slack call for ``msg``; ``broadcast`` False posts a broadcast row as a plain
        thread reply (after ``cant_broadcast``)."""
        match method:
            case "chat.update":
                self.client.chat_update(
                    channel=msg.channel, ts=msg.ts or "", text=text, blocks=blocks or []
                )
                return msg.ts
            case "chat.postEphemeral":
                self.client.chat_postEphemeral(
                    channel=msg.channel,
                    user=msg.user or "",
                    text=text,
                    blocks=blocks,
                    thread_ts=thread_ts,
                )
                return None
            case "views.publish":
                # The Home is drawn now from the database, so it shows every change since the
                # request (https://api.slack.com/methods/views.publish: "Publish a static
                # view for a User"; it replaces the user's Home tab).
                user = msg.user or msg.channel
                self.client.views_publish(user_id=user, view=home.build_home_view(self.deps, user))
                return None
            case "files.upload":
                path = Path(msg.file_path or "")
                if not msg.file_path or not path.is_file():
                    logger.warning("outbox file row %s: %s is missing; dropped", msg.id, path)
                    return None
                self.client.files_upload_v2(
                    channel=msg.channel,
                    file=str(path),
                    filename=path.name,
                    title=msg.text or path.name,
                    thread_ts=thread_ts,
                )
                return None
        channel = msg.channel
        if msg.kind == outbox.DM_KIND:
            channel = self._open_dm(msg.user or msg.channel)
        extra: dict[str, Any] = {}
        if msg.kind == outbox.BROADCAST_KIND and thread_ts and broadcast:
            # "reply_broadcast: Used in conjunction with thread_ts and indicates whether reply
            # should be made visible to everyone in the channel or conversation"
            # (https://api.slack.com/methods/chat.postMessage#arg_reply_broadcast).
            extra["reply_broadcast"] = True
        response = self.client.chat_postMessage(
            channel=channel,
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
            unfurl_links=False,
            **extra,
        )
        ts = response.get("ts")
        return str(ts) if ts else None

    def _open_dm(self, user: str) -> str:
        """The bot's DM channel with ``user`` (``conversations.open``, scope ``im:write``).
        Without that scope, the user id itself: chat.postMessage to a user id posts in the
        app's Messages tab (chat.postMessage page, "channel" argument)."""
        try:
            opened = self.client.conversations_open(users=user)
        except SlackApiError as e:
            if _code(e) != "missing_scope":
                raise
            return user
        return str((opened.get("channel") or {}).get("id") or user)

    # -- database -------------------------------------------------------------------------

    def _parent_ts(self, thread_key: str) -> str | None:
        with session_scope(self.deps.sessions) as session:
            return outbox.thread_root_ts(session, thread_key)

    def _lease(self, msg: _Msg) -> bool:
        """Claim the row for LEASE_SECONDS; False when another deliverer holds it."""
        now = _utcnow()
        with session_scope(self.deps.sessions) as session:
            result = session.execute(
                update(MessageRow)
                .where(
                    MessageRow.id == msg.id,
                    MessageRow.dirty.is_(True),
                    MessageRow.not_before <= now,
                )
                .values(not_before=now + timedelta(seconds=LEASE_SECONDS))
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def _finish(self, msg: _Msg, *, ts: str | None, next_after: float) -> None:
        """Store the ts; mark clean unless the row changed (a newer version) meanwhile."""
        now = _utcnow()
        with session_scope(self.deps.sessions) as session:
            session.execute(
                update(MessageRow)
                .where(MessageRow.id == msg.id)
                .values(
                    ts=ts,
                    sent_at=now,
                    attempts=0,
                    not_before=now + timedelta(seconds=next_after),
                )
                .execution_options(synchronize_session=False)
            )
            session.execute(
                update(MessageRow)
                .where(MessageRow.id == msg.id, MessageRow.version == msg.version)
                .values(dirty=False)
                .execution_options(synchronize_session=False)
            )
            if outbox.is_root(msg.kind, msg.thread_key) and ts and msg.ts is None:
                if msg.job_id and msg.job_id != msg.group_id:
                    session.execute(
                        update(JobRow)
                        .where(JobRow.id == msg.job_id, JobRow.thread_ts.is_(None))
                        .values(thread_ts=ts)
                        .execution_options(synchronize_session=False)
                    )
                elif msg.group_id:
                    session.execute(
                        update(JobGroupRow)
                        .where(JobGroupRow.id == msg.group_id, JobGroupRow.thread_ts.is_(None))
                        .values(thread_ts=ts)
                        .execution_options(synchronize_session=False)
                    )

    def _reschedule(self, msg: _Msg, delay_seconds: float, *, count_attempt: bool = True) -> None:
        now = _utcnow()
        with session_scope(self.deps.sessions) as session:
            values: dict[str, Any] = {"not_before": now + timedelta(seconds=delay_seconds)}
            if count_attempt:
                values["attempts"] = msg.attempts + 1
            session.execute(
                update(MessageRow)
                .where(MessageRow.id == msg.id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    def _fail(self, msg: _Msg, error: str) -> None:
        """Fail the row for good (a parent takes its thread along)."""
        logger.error("outbox row %s (%s in %s) failed: %s", msg.id, msg.kind, msg.channel, error)
        with session_scope(self.deps.sessions) as session:
            outbox.fail(session, msg.id)

    def _fail_channel(self, msg: _Msg, error: str) -> None:
        """The channel refuses the bot: fail the row and the channel's other queued rows, and
        tell the requesters (:func:`gpubot.notify.outbox.fail_channel`)."""
        with session_scope(self.deps.sessions) as session:
            outbox.fail(session, msg.id)
            others = outbox.fail_channel(
                session, channel=msg.channel, error=error, now=_utcnow()
            )
            if outbox.is_root(msg.kind, msg.thread_key):
                user = outbox.requester_of(session, job_id=msg.job_id, group_id=msg.group_id)
                if user:
                    outbox.direct_message(
                        session,
                        user=user,
                        about_channel=msg.channel,
                        text=outbox.unreachable_text(
                            channel=msg.channel, error=error,
                            thread_id=msg.job_id or msg.group_id,
                        ),
                        now=_utcnow(),
                    )
        logger.error(
            "slack refuses the bot in %s (%s): row %s (%s) and %s other queued messages "
            "there failed; the bot must be invited (/invite @gpubot)",
            msg.channel, error, msg.id, msg.kind, others,
        )

    @staticmethod
    def _backoff(msg: _Msg) -> float:
        return float(min(300, 2 ** min(msg.attempts + 1, 9)))

    def _failed_api(self, msg: _Msg, method: str, pace_key: str, error: SlackApiError) -> float:
        """Handle a refused call; return when (seconds from now) the post's channel is free."""
        status = _status(error)
        code = _code(error)
        if status == 429 or code == "ratelimited":
            wait = _retry_after_seconds(error)
            if pace_key.startswith("method:"):
                self.slots.defer(pace_key, wait)
            logger.info("slack 429 on %s in %s: retry after %.0fs", method, msg.channel, wait)
            self._reschedule(msg, wait, count_attempt=False)
            return max(wait, self.post_interval)
        if status >= 500:
            self._reschedule(msg, self._backoff(msg))
            raise _Outage
        if code in TOKEN_ERRORS and msg.kind != outbox.DM_KIND:
            logger.error("slack refuses the bot token (%s on %s): delivery waits until "
                         "SLACK_BOT_TOKEN is fixed", code, method)
            self._reschedule(msg, TOKEN_PAUSE_SECONDS, count_attempt=False)
            raise _Outage
        if code == "message_not_found" and method == "chat.update":
            # The card was deleted in Slack: post it again next round.
            with session_scope(self.deps.sessions) as session:
                session.execute(
                    update(MessageRow)
                    .where(MessageRow.id == msg.id)
                    .values(ts=None, not_before=_utcnow())
                    .execution_options(synchronize_session=False)
                )
            return self.post_interval
        if code in CHANNEL_ERRORS and msg.kind not in (outbox.DM_KIND, outbox.HOME_KIND):
            self._fail_channel(msg, code)
            return self.post_interval
        if (
            code in CHANNEL_ERRORS
            or code in MESSAGE_ERRORS
            or msg.kind == outbox.DM_KIND
            or msg.attempts + 1 >= MAX_ATTEMPTS
        ):
            self._fail(msg, code or str(status))
            return self.post_interval
        logger.warning("slack %s failed for row %s: %s", method, msg.id, code or status)
        self._reschedule(msg, self._backoff(msg))
        return self.post_interval
