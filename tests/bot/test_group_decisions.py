"""A group's (sweep's) approval request becomes the decision (who, when, no buttons) once an
admin answers it, like a single job's: the Slack front replaces the clicked message."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from werkzeug.test import Client

from gpubot.chat.dispatch import handle_action, handle_command
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow
from gpubot.deps import EngineDeps
from tests.bot.conftest import (
    ADMIN,
    ADMIN2,
    CHANNEL,
    FORM,
    action_body,
    sign,
    wait_until,
)
from tests.fixtures.slack_fake import SlackFake, block_kit_errors


def _waiting_sweep(deps: EngineDeps) -> str:
    """A sweep by ADMIN on H100s: above the approval thresholds, so it waits for another
    admin."""
    reply = handle_command(deps, "sweep train lr=1e-5,2e-5 gpu=h100", user=ADMIN,
                           channel=CHANNEL, request_key=None)
    assert reply.job_id and reply.job_id.startswith("g-"), reply.text
    with session_scope(deps.sessions) as session:
        states = set(session.scalars(select(JobRow.state).where(JobRow.group_id == reply.job_id)))
    assert states == {"awaiting_approval"}
    return reply.job_id


def _no_buttons(blocks: list[dict[str, Any]]) -> None:
    assert block_kit_errors(blocks) == []
    assert not [b for b in blocks if b["type"] == "actions"]


def test_approving_a_group_answers_with_the_decision_blocks(deps: EngineDeps) -> None:
    group_id = _waiting_sweep(deps)
    reply = handle_action(deps, "job.approve", group_id, user=ADMIN2, channel=CHANNEL)
    assert reply.ok and reply.blocks
    _no_buttons(reply.blocks)
    text = json.dumps(reply.blocks)
    assert f"approved by <@{ADMIN2}>" in text and group_id in text and "UTC" in text
    # a second click finds nothing to decide: the request still loses its buttons
    again = handle_action(deps, "job.approve", group_id, user=ADMIN2, channel=CHANNEL)
    assert again.blocks and "no longer waits for approval" in json.dumps(again.blocks)
    _no_buttons(again.blocks)


def test_rejecting_a_group_answers_with_the_decision_blocks(deps: EngineDeps) -> None:
    group_id = _waiting_sweep(deps)
    reply = handle_action(deps, "job.reject", group_id, user=ADMIN2, channel=CHANNEL)
    assert reply.ok and reply.blocks
    _no_buttons(reply.blocks)
    assert f"rejected by <@{ADMIN2}>" in json.dumps(reply.blocks)


def test_the_clicked_group_request_is_replaced_in_slack(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    group_id = _waiting_sweep(deps)
    hook = slack.webhook_url.split("/webhook/")[0] + "/webhook/group-approval"
    payload = action_body("job.approve", group_id, user=ADMIN2, response_url=hook)
    response = http.post("/slack/events", data=payload, headers={**FORM, **sign(payload)})
    assert response.status_code == 200

    def answers() -> list[dict[str, Any]]:
        return [p.params for p in list(slack.webhook_log) if p.path == "/webhook/group-approval"]

    wait_until(lambda: answers(), what="the click's answer")
    [answer] = answers()
    assert answer.get("replace_original") is True
    _no_buttons(answer["blocks"])
    assert f"approved by <@{ADMIN2}>" in json.dumps(answer["blocks"])
