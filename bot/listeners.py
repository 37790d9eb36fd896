"""Thin Bolt listeners: take ids out of the payload, ack at once, answer afterwards.

Slack wants an HTTP 200 within 3 s of a slash command or click, or the user sees an error
(https://docs.slack.dev/interactivity/implementing-slash-commands/, "Responding to commands").
A vast search alone can take longer (a 429 retry), so every listener is split the Bolt way
(https://docs.slack.dev/tools/bolt-python/concepts/lazy-listeners/): an ``ack`` function that
only acknowledges, and a lazy function that Bolt runs afterwards in its executor and that
answers through ``respond`` (the request's response_url, good for 5 posts within 30 minutes)
or in the thread. An answer first waits (at most 1 s) until no request is being acked
(:mod:`bot.ack_gate`), so a burst's acks never queue behind answers for the GIL. The app
runs with ``process_before_response=True`` (``bot.app``) so the ack
function runs in the request's own thread and never queues behind lazy work.

``/gpu`` acks "Working on it…" (ephemeral); the answer then replaces it
(``replace_original``), or, for an answer shown to the channel, the placeholder is deleted
(``delete_original``) and the answer posted. Before a launch verb rents anything the channel is
checked (:mod:`bot.channel_access`): the job's thread must be postable there.

Redeliveries carry the same ``trigger_id`` (commands), ``action_ts`` (clicks) or ``event_id``
(events), so their request key is the same and the dispatcher answers them without acting
twice, whether they arrive with ``X-Slack-Retry-Num`` or not, and even while the first
delivery is still being answered.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import home
from bot.ack_gate import GATE
from bot.channel_access import ChannelAccess
from gpubot.chat import permissions
from gpubot.chat.dispatch import Reply, handle_action, handle_command
from gpubot.commands import LaunchCommand, RentCommand, SweepCommand, parse_command
from gpubot.db.engine import session_scope
from gpubot.deps import EngineDeps
from gpubot.errors import GpubotError
from gpubot.notify import audit
from gpubot.redact import redact

logger = logging.getLogger(__name__)

ACTION_RE = re.compile(r"^job\.(cancel|keep|destroy|approve|reject|extend_budget)$")
DECISIONS = frozenset({"job.approve", "job.reject"})
"""Clicks whose answer (blocks) replaces the clicked approval request."""
MENTION_RE = re.compile(r"^\s*<@[A-Z0-9]+>\s*")
WORKING = "Working on it…"
"""The ack of every ``/gpu``: replaced or deleted once the answer is sent."""
LAUNCH_COMMANDS = (LaunchCommand, RentCommand, SweepCommand)


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


def _ack_args(reply: Reply) -> dict[str, Any]:
    args: dict[str, Any] = {
        "text": reply.text,
        "response_type": "ephemeral" if reply.ephemeral else "in_channel",
    }
    if reply.blocks:
        args["blocks"] = reply.blocks
    return args


def _upload(client: WebClient, channel: str, reply: Reply) -> None:
    if not reply.file_path:
        return
    try:
        title = reply.job_id or "chart"
        client.files_upload_v2(channel=channel, file=reply.file_path, title=title)
    except SlackApiError as e:
        logger.warning("chart upload failed: %s", e.response.get("error"))


def is_launch(deps: EngineDeps, text: str) -> bool:
    """True when ``text`` parses as a verb that rents (launch, ``rent``, ``sweep``)."""
    try:
        return isinstance(parse_command(text, deps.config), LAUNCH_COMMANDS)
    except GpubotError:
        return False  # the dispatcher answers with the usage text


def answer(respond: Respond, reply: Reply) -> None:
    """Send ``reply`` through the response_url so that no "Working on it…" is left.

    Ephemeral answers replace the placeholder; an answer for the channel first deletes it
    (an ephemeral message cannot become a channel message), then posts. Uses at most 2 of the
    response_url's 5 posts.
    """
    args = _ack_args(reply)
    if reply.ephemeral:
        respond(**args, replace_original=True)
        return
    respond(delete_original=True)
    respond(**args, replace_original=False)


def _audit_refusal(deps: EngineDeps, user: str, channel: str, text: str) -> None:
    try:
        with session_scope(deps.sessions) as session:
            audit.record(
                session, user, "denied", "launch", "bot cannot post in the channel",
                {"text": text, "channel": channel},
            )
    except Exception:  # noqa: BLE001 - the refusal is answered even if the audit write fails
        logger.exception("could not audit a refused launch")


def register(
    app: App, deps: EngineDeps, *, channel_access: ChannelAccess | None = None
) -> None:
    """Register every listener on ``app``; ``deps`` is closed over (Bolt injects only its own).

    Every listener's ack function only acknowledges; the work runs in a lazy function.
    ``channel_access`` (default: a fresh per-app cache) answers "may the bot post here".
    """
    access = channel_access or ChannelAccess()

    def ack_command(ack: Ack) -> None:
        ack(text=WORKING, response_type="ephemeral")

    def answer_command(command: dict[str, Any], respond: Respond, client: WebClient) -> None:
        GATE.wait_idle()
        text = command.get("text") or ""
        user = command["user_id"]
        channel = command["channel_id"]
        key = command_request_key(command)
        try:
            if is_launch(deps, text):
                try:
                    permissions.check_may_use(deps.config, user, channel)
                    may_post = access.check(client, channel)
                except GpubotError:
                    may_post = None  # not allowed at all: the dispatcher refuses and audits
                if may_post is not None and not may_post.ok:
                    _audit_refusal(deps, user, channel, text)
                    answer(respond, Reply(text=may_post.message, ok=False))
                    return
            reply = handle_command(deps, text, user=user, channel=channel, request_key=key)
        except Exception:
            logger.exception("/gpu failed after the ack")
            reply = Reply(text="That failed on our side; nothing more was done.", ok=False)
        answer(respond, reply)
        if not reply.duplicate:
            _upload(client, channel, reply)

    app.command("/gpu")(ack=ack_command, lazy=[answer_command])

    def ack_action(ack: Ack) -> None:
        ack()

    def answer_action(body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        GATE.wait_idle()
        user = body["user"]["id"]
        value = str(action.get("value") or "")
        reply = handle_action(
            deps,
            action["action_id"],
            value,
            user=user,
            channel=(body.get("channel") or {}).get("id", ""),
            # Slack stamps each click with its own action_ts: a replayed request is the same
            # click and is answered once.
            request_key=request_key_for(
                "action", user, action.get("action_ts"), action["action_id"], value
            ),
        )
        if action["action_id"] in DECISIONS and reply.ok and reply.blocks:
            # The approval request becomes the decision (who, when, no buttons) for everyone.
            respond(text=reply.text, blocks=reply.blocks, replace_original=True)
            return
        respond(text=reply.text, response_type="ephemeral", replace_original=False)

    app.action(ACTION_RE)(ack=ack_action, lazy=[answer_action])

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
        _upload(client, event["channel"], reply)

    app.event("app_mention")(ack=ack_event, lazy=[mentioned])
