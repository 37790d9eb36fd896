"""Answers to acknowledged ``/gpu`` commands and button clicks, wherever they run.

The ack of a slash command or click (``bot.listeners``) carries only "Working on it…"; the
answer is computed afterwards by :class:`Answerer`, either in the HTTP process (a Bolt lazy
listener, ``answers="inline"``) or in a Celery worker (``answers="queue"``: the ack enqueues
``ANSWER_COMMAND_TASK`` / ``ANSWER_ACTION_TASK`` by name and ``workers.tasks`` calls the
answerer the composition root installed). Both paths run the same code on the same plain
request (:func:`command_request`, :func:`action_request`): ids and strings only, so it
serialises as Celery JSON.

An answer goes back through the request's ``response_url`` (slack_sdk's ``WebhookClient``;
https://docs.slack.dev/interactivity/handling-user-interaction/#message_responses: up to 5
posts within 30 minutes, ``replace_original`` / ``delete_original``). When Slack rejects the
post (an expired or used URL answers 404 ``expired_url`` / ``used_url``, e.g. a queued answer
that ran late) the answer is not dropped: it is posted with ``chat.postEphemeral`` to the user
in the channel, else in a DM with the user (``conversations.open`` + ``chat.postMessage``).

Redeliveries carry the same ``trigger_id`` (commands) or ``action_ts`` (clicks), so their
request key is the same and the dispatcher answers them without acting twice, in whichever
process each copy is answered.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from bot import home
from bot.ack_gate import GATE, AckGate
from bot.channel_access import ChannelAccess
from gpubot.chat import permissions
from gpubot.chat.dispatch import Reply, handle_action, handle_command
from gpubot.commands import LaunchCommand, RentCommand, SweepCommand, parse_command
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobGroupRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.errors import GpubotError
from gpubot.notify import audit

logger = logging.getLogger(__name__)

ANSWER_COMMAND_TASK = "workers.tasks.answer_command_task"
"""Celery task name (``workers.tasks``) answering one :func:`command_request`."""
ANSWER_ACTION_TASK = "workers.tasks.answer_action_task"
"""Celery task name (``workers.tasks``) answering one :func:`action_request`."""
DECISIONS = frozenset({"job.approve", "job.reject", "job.raise_ceiling"})
"""Clicks whose answer (blocks) replaces the clicked message: an approval request, a "Pay up
to" price prompt."""
LAUNCH_COMMANDS = (LaunchCommand, RentCommand, SweepCommand)
WEBHOOK_TIMEOUT_SECONDS = 10
FAILED = "That failed on our side; nothing more was done."

SendTask = Callable[[str, dict[str, str]], object]
"""Enqueues the task named by the first argument with the second as its keyword arguments
(the composition root wraps ``celery_app.send_task``; ``bot/`` never imports ``workers/``).
Raises when the broker cannot take the message."""

Delivered = Literal["response_url", "ephemeral", "dm", "home", "lost"]
"""Where an answer ended up: the response_url, the fallbacks in order, the republished App Home
(a Home click that succeeded), or nowhere."""


class Publisher:
    """Hands answers to the broker from one thread, once the requests in flight are acked.

    Publishing a Celery message costs ~0.6 ms of Python per answer (building it, kombu,
    redis-py) and a producer from Celery's pool (10 connections); done in the ack function,
    a burst of 50 requests queues its later acks behind the earlier ones' publishing, for the
    GIL and for producers. :meth:`submit` only puts the request in memory; the publishing
    thread waits until no request has been acknowledged for 50 ms, i.e. the burst is acked
    (:meth:`bot.ack_gate.AckGate.wait_quiet`, at most 1 s), then publishes everything pending
    through ``send_task``; a worker answering on the same machine then does not compete for
    the CPU with the burst's acks either. A message the
    broker refuses goes to ``on_failure`` (the caller answers it in-process).

    The cost: an answer starts at most ~1 s later, and a request acked but not yet published
    (that second) is lost if the process dies; the inline mode loses every answer in flight
    then. :meth:`close` (also run at interpreter exit) publishes what is pending.
    """

    def __init__(
        self,
        send_task: SendTask,
        on_failure: Callable[[str, dict[str, str]], object],
        *,
        gate: AckGate = GATE,
    ) -> None:
        self._send = send_task
        self._on_failure = on_failure
        self._gate = gate
        self._pending: queue.SimpleQueue[tuple[str, dict[str, str]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, task: str, request: dict[str, str]) -> None:
        """Queue ``task`` with keyword arguments ``request`` for publishing (never blocks)."""
        self._pending.put((task, request))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="gpubot-publisher", daemon=True
                    )
                    self._thread.start()
                    atexit.register(self.close)

    def close(self, timeout_s: float = 5.0) -> None:
        """Publish what is pending and stop the thread (waits at most ``timeout_s``)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._pending.put(None)
        thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._pending.get()
            self._gate.wait_quiet()
            batch = [item]
            while True:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            for entry in batch:
                if entry is None:
                    return
                self._publish(*entry)

    def _publish(self, task: str, request: dict[str, str]) -> None:
        try:
            self._send(task, request)
        except Exception:  # noqa: BLE001 - broker down: answer here rather than not at all
            logger.exception("could not enqueue %s; answering in this process", task)
            self._on_failure(task, request)


def request_key_for(*parts: object) -> str:
    """A stable idempotency key from the parts that identify one user request."""
    raw = "\x1f".join("" if p is None else str(p) for p in parts)
    return "slack:" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def command_request_key(command: Mapping[str, Any]) -> str:
    """Same for every delivery of one slash command: team/user/channel/trigger_id."""
    trigger = command.get("trigger_id") or command.get("text", "")
    return request_key_for(
        command.get("team_id"), command.get("user_id"), command.get("channel_id"), trigger
    )


def command_request(command: Mapping[str, Any]) -> dict[str, str]:
    """The plain request :meth:`Answerer.answer_command` takes, from a slash-command payload:
    text, user, channel, team, the trigger_id-based request key and the response_url."""
    return {
        "text": str(command.get("text") or ""),
        "user": str(command["user_id"]),
        "channel": str(command.get("channel_id") or ""),
        "team": str(command.get("team_id") or ""),
        "request_key": command_request_key(command),
        "response_url": str(command.get("response_url") or ""),
    }


def action_request(body: Mapping[str, Any], action: Mapping[str, Any]) -> dict[str, str]:
    """The plain request :meth:`Answerer.answer_action` takes, from a block_actions payload.

    Slack stamps each click with its own ``action_ts``: a replayed request is the same click,
    has the same request key and is answered once.
    """
    user = str(body["user"]["id"])
    value = str(action.get("value") or "")
    action_ts = str(action.get("action_ts") or "")
    # A click on the App Home comes from a view, not a message: no channel, no response_url
    # (https://api.slack.com/reference/interaction-payloads/block-actions: ``container.type``
    # is "view" and ``view.type`` "home").
    container = body.get("container") or {}
    from_home = container.get("type") == "view" and (body.get("view") or {}).get("type") == "home"
    return {
        "action_id": str(action["action_id"]),
        "value": value,
        "user": user,
        "channel": str((body.get("channel") or {}).get("id", "")),
        "action_ts": action_ts,
        "response_url": str(body.get("response_url") or ""),
        "request_key": request_key_for("action", user, action_ts, action["action_id"], value),
        "source": "home" if from_home else "message",
    }


def job_channel(deps: EngineDeps, target: str) -> str:
    """The channel a job (``j-…``) or group (``g-…``) was launched from; "" when unknown."""
    table = JobGroupRow if target.startswith("g-") else JobRow
    with session_scope(deps.sessions) as session:
        row = session.get(table, target)
        return row.channel if row is not None else ""


def reply_args(reply: Reply) -> dict[str, Any]:
    """A reply as response_url message arguments (text, response_type, blocks if any)."""
    args: dict[str, Any] = {
        "text": reply.text,
        "response_type": "ephemeral" if reply.ephemeral else "in_channel",
    }
    if reply.blocks:
        args["blocks"] = reply.blocks
    return args


def is_launch(deps: EngineDeps, text: str) -> bool:
    """True when ``text`` parses as a verb that rents (launch, ``rent``, ``sweep``)."""
    try:
        return isinstance(parse_command(text, deps.config), LAUNCH_COMMANDS)
    except GpubotError:
        return False  # the dispatcher answers with the usage text


def upload_chart(client: WebClient, channel: str, reply: Reply) -> None:
    """Upload ``reply``'s chart (if any) to ``channel``; a failure is logged, not raised."""
    if not reply.file_path:
        return
    try:
        title = reply.job_id or "chart"
        client.files_upload_v2(channel=channel, file=reply.file_path, title=title)
    except SlackApiError as e:
        logger.warning("chart upload failed: %s", e.response.get("error"))


def _audit_refusal(deps: EngineDeps, user: str, channel: str, text: str) -> None:
    try:
        with session_scope(deps.sessions) as session:
            audit.record(
                session, user, "denied", "launch", "bot cannot post in the channel",
                {"text": text, "channel": channel},
            )
    except Exception:  # noqa: BLE001 - the refusal is answered even if the audit write fails
        logger.exception("could not audit a refused launch")


class Answerer:
    """Computes and sends the answer of one acknowledged command or click.

    Thread-safe: the inline path calls it from Bolt's executor threads, a worker from its pool.
    ``client`` is the bot's WebClient (channel checks, chart uploads, the fallbacks);
    ``channel_access`` caches "may the bot post here" per channel for this answerer.
    """

    def __init__(
        self,
        deps: EngineDeps,
        client: WebClient,
        *,
        channel_access: ChannelAccess | None = None,
        webhook_timeout_s: int = WEBHOOK_TIMEOUT_SECONDS,
    ) -> None:
        self.deps = deps
        self.client = client
        self.access = channel_access or ChannelAccess()
        self.webhook_timeout_s = webhook_timeout_s

    @classmethod
    def from_deps(cls, deps: EngineDeps) -> Answerer:
        """An answerer on ``deps`` with a WebClient from its settings (SLACK_BOT_TOKEN,
        SLACK_API_URL). Raises ``ConfigError`` when SLACK_BOT_TOKEN is not set."""
        from bot.app import make_web_client

        return cls(deps, make_web_client(deps.settings))

    # -- commands ----------------------------------------------------------------------

    def command_reply(
        self, *, text: str, user: str, channel: str, request_key: str
    ) -> Reply:
        """The reply to one ``/gpu`` (never raises: a failure becomes :data:`FAILED`).

        A launch verb is first checked against the channel: the job's thread must be
        postable there (``bot.channel_access``), else nothing is rented and the refusal is
        audited.
        """
        deps = self.deps
        try:
            if is_launch(deps, text):
                try:
                    permissions.check_may_use(deps.config, user, channel)
                    may_post = self.access.check(self.client, channel)
                except GpubotError:
                    may_post = None  # not allowed at all: the dispatcher refuses and audits
                if may_post is not None and not may_post.ok:
                    _audit_refusal(deps, user, channel, text)
                    return Reply(text=may_post.message, ok=False)
            return handle_command(deps, text, user=user, channel=channel, request_key=request_key)
        except Exception:
            logger.exception("/gpu failed after the ack")
            return Reply(text=FAILED, ok=False)

    def answer_command(
        self, *, text: str, user: str, channel: str, team: str = "", request_key: str,
        response_url: str,
    ) -> Delivered:
        """Answer one ``/gpu`` (a :func:`command_request`) so that no "Working on it…" is
        left: ephemeral answers replace the placeholder; an answer for the channel first
        deletes it (an ephemeral message cannot become a channel message), then posts; at most
        2 of the response_url's 5 posts. Then the chart, if any (not for a duplicate).
        Returns where the answer went. ``team`` is part of the request key already."""
        reply = self.command_reply(text=text, user=user, channel=channel, request_key=request_key)
        args = reply_args(reply)
        if reply.ephemeral:
            sent = self._post(response_url, **args, replace_original=True)
        else:
            self._post(response_url, delete_original=True)  # the next post tells if the URL works
            sent = self._post(response_url, **args, replace_original=False)
        where: Delivered = "response_url" if sent else self._fallback(reply, user, channel)
        if not reply.duplicate:
            upload_chart(self.client, channel, reply)
        return where

    # -- clicks ------------------------------------------------------------------------

    def answer_action(
        self, *, action_id: str, value: str, user: str, channel: str, action_ts: str = "",
        response_url: str, request_key: str, source: str = "message",
    ) -> Delivered:
        """Answer one button click (an :func:`action_request`). An approve/reject decision
        replaces the clicked approval request for everyone; anything else is a new ephemeral
        message. Returns where the answer went.

        A click on the App Home (``source="home"``) is checked against the job's own channel
        (the Home has none; the channel allow-list applies as in the thread), answered by
        republishing the clicker's Home (which shows the job's new state), and a refusal or
        failure is sent to the clicker as a DM (there is no response_url to answer)."""
        if source == "home":
            return self._answer_home_click(
                action_id=action_id, value=value, user=user, request_key=request_key
            )
        try:
            reply = handle_action(
                self.deps, action_id, value, user=user, channel=channel, request_key=request_key
            )
        except Exception:
            logger.exception("click %s failed after the ack", action_id)
            reply = Reply(text=FAILED, ok=False)
        if action_id in DECISIONS and reply.ok and reply.blocks:
            sent = self._post(
                response_url, text=reply.text, blocks=reply.blocks, replace_original=True
            )
        else:
            sent = self._post(
                response_url, text=reply.text, response_type="ephemeral", replace_original=False
            )
        return "response_url" if sent else self._fallback(reply, user, channel)

    def _answer_home_click(
        self, *, action_id: str, value: str, user: str, request_key: str
    ) -> Delivered:
        channel = job_channel(self.deps, value.partition(":")[0])
        try:
            reply = handle_action(
                self.deps, action_id, value, user=user, channel=channel, request_key=request_key
            )
        except Exception:
            logger.exception("Home click %s failed after the ack", action_id)
            reply = Reply(text=FAILED, ok=False)
        home.publish(self.client, self.deps, user)
        if reply.ok:
            return "home"
        return self._dm(reply, user)

    # -- sending -----------------------------------------------------------------------

    def _post(self, response_url: str, **message: Any) -> bool:
        """One response_url post; True when Slack took it (HTTP 200)."""
        if not response_url:
            return False
        try:
            response = WebhookClient(response_url, timeout=self.webhook_timeout_s).send(**message)
        except OSError as e:  # connection refused, timeout (urllib's URLError is an OSError)
            logger.warning("response_url post failed: %s", e)
            return False
        if response.status_code != 200:
            logger.warning(
                "response_url post rejected: HTTP %s %s", response.status_code,
                (response.body or "")[:100],
            )
            return False
        return True

    def _fallback(self, reply: Reply, user: str, channel: str) -> Delivered:
        """The response_url was rejected: show the answer to the user another way.

        ``chat.postEphemeral`` in the channel (only the user sees it, like the placeholder),
        else a DM (``conversations.open`` then ``chat.postMessage``). An answer meant for the
        channel is shown to the user only: they can repeat it.
        """
        blocks = reply.blocks or None
        if channel:
            try:
                self.client.chat_postEphemeral(
                    channel=channel, user=user, text=reply.text, blocks=blocks
                )
                return "ephemeral"
            except (SlackApiError, OSError) as e:
                logger.warning("answer fallback chat.postEphemeral failed: %s", _error(e))
        return self._dm(reply, user)

    def _dm(self, reply: Reply, user: str) -> Delivered:
        """``reply`` in a DM with ``user`` (``conversations.open`` + ``chat.postMessage``)."""
        try:
            opened = self.client.conversations_open(users=user)
            dm = str((opened.get("channel") or {}).get("id", ""))
            self.client.chat_postMessage(channel=dm, text=reply.text, blocks=reply.blocks or None)
            return "dm"
        except (SlackApiError, OSError) as e:
            logger.error("answer to %s lost: the DM failed: %s", user, _error(e))
            return "lost"


def _error(e: Exception) -> str:
    if isinstance(e, SlackApiError):
        return str(e.response.get("error"))
    return str(e)
