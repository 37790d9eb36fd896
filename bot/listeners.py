"""Thin Bolt listeners: take ids out of the payload, call the dispatcher, answer.

Every listener acknowledges within Slack's 3 s. ``/gpu`` answers in the ack itself (a launch
plan needs one provider search and database writes only); slow verbs (``logs``, ``cost``,
``status <job>``) ack first and answer through ``respond`` afterwards. Redeliveries carry the
same ``trigger_id`` (commands) or ``event_id`` (events), so their request key is the same and
the dispatcher answers them without acting twice.
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
from gpubot.chat.dispatch import Reply, handle_action, handle_command, is_slow
from gpubot.deps import EngineDeps
from gpubot.redact import redact

logger = logging.getLogger(__name__)

ACTION_RE = re.compile(r"^job\.(cancel|keep|destroy|approve|reject|extend_budget)$")
MENTION_RE = re.compile(r"^\s*<@[A-Z0-9]+>\s*")


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


def register(app: App, deps: EngineDeps) -> None:
    """Register every listener on ``app``; ``deps`` is closed over (Bolt injects only its own)."""

    @app.command("/gpu")
    def gpu_command(
        ack: Ack, command: dict[str, Any], respond: Respond, client: WebClient
    ) -> None:
        text = command.get("text") or ""
        user = command["user_id"]
        channel = command["channel_id"]
        key = command_request_key(command)

        def run() -> Reply:
            return handle_command(deps, text, user=user, channel=channel, request_key=key)

        if is_slow(text):
            ack(text="Working on it…", response_type="ephemeral")
            reply = run()
            respond(**_ack_args(reply))
        else:
            reply = run()
            ack(**_ack_args(reply))
        if not reply.duplicate:
            _upload(client, channel, reply)

    @app.action(ACTION_RE)
    def job_action(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        ack()
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
        respond(text=reply.text, response_type="ephemeral", replace_original=False)

    @app.event("app_home_opened")
    def home_opened(event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab", "home") != "home":
            return
        home.publish(client, deps, event["user"])

    @app.event("app_mention")
    def mentioned(event: dict[str, Any], body: dict[str, Any], client: WebClient,
                  say: Callable[..., Any]) -> None:
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
