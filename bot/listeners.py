"""Thin Bolt listeners: take ids out of the payload, ack at once, answer afterwards.

Slack wants an HTTP 200 within 3 s of a slash command or click, or the user sees an error
(https://docs.slack.dev/interactivity/implementing-slash-commands/, "Responding to commands").
A vast search alone can take longer (a 429 retry), so every listener acks first and answers
afterwards (:mod:`bot.answers`), in one of two places (``register(..., answers=...)``):

* ``"queue"`` (``gpubot serve``): the ack function hands the request to a
  :class:`bot.answers.Publisher` and acks; the publisher enqueues it as a Celery task by name
  (``send_task``, given by the composition root) on the ``answers`` queue once the requests
  in flight are acked. The answer runs in a worker process, so its Python work never holds
  this process's GIL while later requests wait to be acked. If the broker refuses the
  message, the answer runs in this process instead (``fallback_executor``), as in inline mode.
* ``"inline"``: the Bolt way (https://docs.slack.dev/tools/bolt-python/concepts/lazy-listeners/):
  a lazy function that Bolt runs afterwards in its executor. An answer first waits (at most
  1 s) until no request is being acked (:mod:`bot.ack_gate`). Used by tests and
  processes without a worker.

The app runs with ``process_before_response=True`` (``bot.app``) so the ack function runs in
the request's own thread and never queues behind lazy work.

``/gpu`` acks "Working on it…" (ephemeral); the answer then replaces it (``replace_original``),
or, for an answer shown to the channel, the placeholder is deleted (``delete_original``) and
the answer posted (:class:`bot.answers.Answerer`).

Redeliveries carry the same ``trigger_id`` (commands), ``action_ts`` (clicks) or ``event_id``
(events), so their request key is the same and the dispatcher answers them without acting
twice, whether they arrive with ``X-Slack-Retry-Num`` or not, and even while the first
delivery is still being answered.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Literal

from slack_bolt import Ack, App
from slack_sdk import WebClient

from bot import home
from bot.ack_gate import GATE
from bot.answers import (
    ANSWER_ACTION_TASK,
    ANSWER_COMMAND_TASK,
    Answerer,
    Publisher,
    SendTask,
    action_request,
    command_request,
    command_request_key,
    request_key_for,
    upload_chart,
)
from bot.channel_access import ChannelAccess
from gpubot.chat.dispatch import handle_command
from gpubot.deps import EngineDeps
from gpubot.redact import redact

logger = logging.getLogger(__name__)

__all__ = ["ACTION_RE", "WORKING", "AnswerMode", "command_request_key", "register"]

ACTION_RE = re.compile(
    r"^job\.(cancel|keep|destroy|approve|reject|extend_budget|raise_ceiling)$"
)
MENTION_RE = re.compile(r"^\s*<@[A-Z0-9]+>\s*")
WORKING = "Working on it…"
"""The ack of every ``/gpu``: replaced or deleted once the answer is sent."""
AnswerMode = Literal["inline", "queue"]


def register(
    app: App,
    deps: EngineDeps,
    *,
    channel_access: ChannelAccess | None = None,
    answers: AnswerMode = "inline",
    send_task: SendTask | None = None,
    fallback_executor: Executor | None = None,
) -> None:
    """Register every listener on ``app``; ``deps`` is closed over (Bolt injects only its own).

    Every listener's ack function only acknowledges (and, with ``answers="queue"``, enqueues
    the answer through ``send_task``); the work runs afterwards (module docstring).
    ``channel_access`` (default: a fresh per-app cache) answers "may the bot post here" for
    answers run in this process. ``fallback_executor`` runs an answer the broker refused
    (queue mode; default: a lazy listener would not run, so it is required then).

    Raises:
        ValueError: ``answers="queue"`` without ``send_task`` or ``fallback_executor``.
    """
    answerer = Answerer(deps, app.client, channel_access=channel_access)
    if answers == "queue":
        if send_task is None or fallback_executor is None:
            raise ValueError("answers='queue' needs send_task and fallback_executor")
        _register_queued(app, answerer, send_task, fallback_executor)
    else:
        _register_inline(app, answerer)
    _register_events(app, deps)


def _register_inline(app: App, answerer: Answerer) -> None:
    """``/gpu`` and clicks answered by Bolt lazy listeners in this process."""

    def ack_command(ack: Ack) -> None:
        ack(text=WORKING, response_type="ephemeral")

    def answer_command(command: dict[str, Any]) -> None:
        GATE.wait_idle()
        answerer.answer_command(**command_request(command))

    app.command("/gpu")(ack=ack_command, lazy=[answer_command])

    def ack_action(ack: Ack) -> None:
        ack()

    def answer_action(body: dict[str, Any], action: dict[str, Any]) -> None:
        GATE.wait_idle()
        answerer.answer_action(**action_request(body, action))

    app.action(ACTION_RE)(ack=ack_action, lazy=[answer_action])


def _register_queued(
    app: App, answerer: Answerer, send_task: SendTask, fallback: Executor
) -> None:
    """``/gpu`` and clicks: the ack hands the answer to the publisher, then acknowledges."""
    run_here: dict[str, Callable[..., object]] = {
        ANSWER_COMMAND_TASK: answerer.answer_command,
        ANSWER_ACTION_TASK: answerer.answer_action,
    }

    def answer_here(task: str, request: dict[str, str]) -> None:
        fallback.submit(run_here[task], **request)

    publisher = Publisher(send_task, answer_here)

    def ack_command(ack: Ack, command: dict[str, Any]) -> None:
        publisher.submit(ANSWER_COMMAND_TASK, command_request(command))
        ack(text=WORKING, response_type="ephemeral")

    app.command("/gpu")(ack_command)

    def ack_action(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        publisher.submit(ANSWER_ACTION_TASK, action_request(body, action))
        ack()

    app.action(ACTION_RE)(ack_action)


def _register_events(app: App, deps: EngineDeps) -> None:
    """App Home and mentions: acknowledged by Bolt, answered by lazy listeners here."""

    def ack_event() -> None:
        """Events are acknowledged by Bolt itself (auto-acknowledgement)."""

    def home_opened(event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab", "home") != "home":
            return
        home.publish(client, deps, event["user"])

    app.event("app_home_opened")(ack=ack_event, lazy=[home_opened])

    def mentioned(event: dict[str, Any], body: dict[str, Any], client: WebClient,
                  say: Callable[..., Any]) -> None:
        # No channel check: Slack sends app_mention only from conversations the bot is in.
        text = MENTION_RE.sub("", event.get("text") or "", count=1)
        key = request_key_for("event", body.get("event_id") or event.get("ts"))
        reply = handle_command(
            deps, text, user=event["user"], channel=event["channel"], request_key=key
        )
        if reply.duplicate:
            return
        thread_ts = event.get("thread_ts") or event.get("ts")
        if reply.ephemeral:
            client.chat_postEphemeral(
                channel=event["channel"], user=event["user"], text=redact(reply.text),
                thread_ts=thread_ts,
            )
        else:
            say(text=redact(reply.text), thread_ts=thread_ts)
        upload_chart(client, event["channel"], reply)

    app.event("app_mention")(ack=ack_event, lazy=[mentioned])
