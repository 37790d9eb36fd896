"""Slack delivery of the outbox (:mod:`gpubot.notify.outbox`).

:meth:`SlackDeliverer.deliver_once` sends what is due now and returns; it never sleeps and is
safe to run from several processes at once (each row is leased with a conditional UPDATE
before it is sent). Rules:

* ``parent`` rows are posted top level; their ``ts`` is stored (and copied to the job's or
  group's ``thread_ts``), and everything with that thread key waits for it.
* ``card`` rows are posted once as a thread reply, then edited in place with ``chat.update``:
  at most one update per card every ``card_update_interval_seconds`` (3 s), always the newest
  version (a row is marked clean only if its ``version`` did not change while it was sent).
* ``reply`` rows go into the job's thread (or top level without a thread key), ``file`` rows
  are uploaded with ``files_upload_v2`` into the thread, ``ephemeral`` rows go to one user.
* Posts are paced to one per ``post_interval_seconds`` per channel (Slack's 1 message/s).
* HTTP 429: the row's ``not_before`` is set to now + ``Retry-After`` and the channel (posts)
  or the method (``chat.update`` is Tier 3, workspace-wide) is paused in this process; other
  channels go on. Nothing sleeps.
* Connection failures (Slack outage): the row stays dirty with a back-off and the round
  ends; nothing is lost. Permanent Slack errors (``channel_not_found`` ...) are retried with
  back-off and dropped (logged) after :data:`MAX_ATTEMPTS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from sqlalchemy import and_, or_, select, update

from gpubot.db.engine import session_scope
from gpubot.db.tables import JobGroupRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.notify import outbox
from gpubot.redact import redact
from gpubot.settings import Settings

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
LEASE_SECONDS = 60.0
CONSOLE_CHANNEL = "console"
"""Rows for the terminal front; they have no Slack destination and are not sent."""


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
    """Slack could not be reached: stop this round."""


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


class SlackDeliverer:
    """Drains the outbox to Slack; see the module docstring for the rules."""

    def __init__(
        self,
        client: WebClient,
        deps: EngineDeps,
        *,
        post_interval_seconds: float = 1.0,
        card_update_interval_seconds: float = 3.0,
        batch: int = 200,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.deps = deps
        self.post_interval = post_interval_seconds
        self.card_update_interval = card_update_interval_seconds
        self.batch = batch
        self._monotonic = monotonic
        self._last_post: dict[str, float] = {}
        self._channel_paused_until: dict[str, float] = {}
        self._method_paused_until: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: Settings, deps: EngineDeps) -> SlackDeliverer:
        """A deliverer with a WebClient on SLACK_BOT_TOKEN and SLACK_API_URL.

        The client has no rate-limit retry handler on purpose: 429s are honoured by
        rescheduling the row, not by sleeping in the worker.
        """
        if settings.slack_bot_token is None:
            raise ValueError("SLACK_BOT_TOKEN is not set")
        client = WebClient(
            token=settings.slack_bot_token.get_secret_value(),
            base_url=settings.slack_api_url,
            timeout=15,
        )
        return cls(client, deps)

    # -- the round ------------------------------------------------------------------------

    def deliver_once(self) -> int:
        """Send every row that is due now (within pacing); return how many were sent."""
        now = _utcnow()
        with session_scope(self.deps.sessions) as session:
            rows = [self._snapshot(r) for r in outbox.pending(session, now=now, limit=self.batch)]
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
        mono = self._monotonic()
        if msg.channel == CONSOLE_CHANNEL:
            self._finish(msg, ts=msg.ts, next_after=0.0)
            return False
        if self._channel_paused_until.get(msg.channel, 0.0) > mono:
            return False
        method = self._method_for(msg)
        if self._method_paused_until.get(method, 0.0) > mono:
            return False
        is_post = method == "chat.postMessage"
        if is_post and mono - self._last_post.get(msg.channel, -1e9) < self.post_interval:
            return False
        thread_ts: str | None = None
        if msg.kind != "parent" and msg.thread_key is not None and method != "chat.update":
            thread_ts = self._parent_ts(msg.thread_key)
            if thread_ts is None:
                return False  # the parent is not posted yet
        if not self._lease(msg):
            return False
        if is_post:
            self._last_post[msg.channel] = mono
        try:
            ts = self._send(msg, method, thread_ts)
        except SlackApiError as e:
            self._failed_api(msg, method, e)
            return False
        except (SlackRequestError, OSError) as e:
            logger.warning("slack unreachable (%s): %s", method, redact(str(e)))
            self._reschedule(msg, self._backoff(msg))
            raise _Outage from e
        next_after = self.card_update_interval if msg.kind == "card" else 0.0
        self._finish(msg, ts=ts or msg.ts, next_after=next_after)
        return True

    @staticmethod
    def _method_for(msg: _Msg) -> str:
        if msg.kind == "card" and msg.ts:
            return "chat.update"
        if msg.kind == "ephemeral":
            return "chat.postEphemeral"
        if msg.kind == "file":
            return "files.upload"
        if msg.kind == "parent" and msg.ts:
            return "none"
        return "chat.postMessage"

    def _send(self, msg: _Msg, method: str, thread_ts: str | None) -> str | None:
        text = msg.text or " "
        match method:
            case "none":
                return msg.ts
            case "chat.update":
                self.client.chat_update(
                    channel=msg.channel, ts=msg.ts or "", text=text, blocks=msg.blocks or []
                )
                return msg.ts
            case "chat.postEphemeral":
                self.client.chat_postEphemeral(
                    channel=msg.channel,
                    user=msg.user or "",
                    text=text,
                    blocks=msg.blocks,
                    thread_ts=thread_ts,
                )
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
        response = self.client.chat_postMessage(
            channel=msg.channel,
            text=text,
            blocks=msg.blocks,
            thread_ts=thread_ts,
            unfurl_links=False,
        )
        ts = response.get("ts")
        return str(ts) if ts else None

    # -- database -------------------------------------------------------------------------

    def _parent_ts(self, thread_key: str) -> str | None:
        with session_scope(self.deps.sessions) as session:
            return session.scalars(
                select(MessageRow.ts)
                .where(MessageRow.kind == "parent", MessageRow.ts.is_not(None))
                .where(
                    or_(
                        MessageRow.job_id == thread_key,
                        and_(MessageRow.job_id.is_(None), MessageRow.group_id == thread_key),
                    )
                )
                .order_by(MessageRow.id)
            ).first()

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
            if msg.kind == "parent" and ts and msg.ts is None:
                if msg.job_id:
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

    def _drop(self, msg: _Msg, error: str) -> None:
        logger.error("outbox row %s (%s) dropped after %s attempts: %s",
                     msg.id, msg.kind, msg.attempts + 1, error)
        with session_scope(self.deps.sessions) as session:
            session.execute(
                update(MessageRow)
                .where(MessageRow.id == msg.id)
                .values(dirty=False, attempts=msg.attempts + 1)
                .execution_options(synchronize_session=False)
            )

    @staticmethod
    def _backoff(msg: _Msg) -> float:
        return float(min(300, 2 ** min(msg.attempts + 1, 9)))

    def _failed_api(self, msg: _Msg, method: str, error: SlackApiError) -> None:
        status = _status(error)
        code = str(getattr(error.response, "data", {}).get("error", "")) if error.response else ""
        if status == 429 or code == "ratelimited":
            wait = _retry_after_seconds(error)
            until = self._monotonic() + wait
            if method == "chat.postMessage":
                self._channel_paused_until[msg.channel] = until
            else:
                self._method_paused_until[method] = until
            logger.info("slack 429 on %s in %s: retry after %.0fs", method, msg.channel, wait)
            self._reschedule(msg, wait, count_attempt=False)
            return
        if status >= 500:
            self._reschedule(msg, self._backoff(msg))
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
            return
        if msg.attempts + 1 >= MAX_ATTEMPTS:
            self._drop(msg, code or str(status))
            return
        logger.warning("slack %s failed for row %s: %s", method, msg.id, code or status)
        self._reschedule(msg, self._backoff(msg))
