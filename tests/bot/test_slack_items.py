"""Slack issue item 6 and App Home: the help's ``jobs`` line, the manifest's scopes, confirm
dialogs on destructive buttons, the status chart in the job's thread (never a server path),
decisions replacing the approval buttons, the health server in Socket Mode, and App Home
(buttons, thread links, readable activity, republished on a state change)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from slack_sdk import WebClient
from sqlalchemy import select, update
from werkzeug.test import Client

from bot.delivery import SlackDeliverer
from gpubot.commands.usage import help_text, usage
from gpubot.config import BotConfig
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.models import JobState
from gpubot.render import slack as slack_render
from gpubot.render.blocks import button, confirm_dialog, idle_warning_blocks
from gpubot.render.budgets import job_alert_blocks
from gpubot.testing.fakes import seed_job
from tests.bot.conftest import (
    ADMIN,
    ADMIN2,
    ALICE,
    BOT_TOKEN,
    CHANNEL,
    FORM,
    action_body,
    command_body,
    sign,
    wait_until,
)
from tests.fixtures.slack_fake import SlackFake, block_kit_errors

ROOT = Path(__file__).resolve().parents[2]


def test_help_says_jobs_lists_the_callers_own_jobs(config: BotConfig) -> None:
    for text in (usage("jobs", config), help_text(config)):
        line = next(t for t in text.split("\n") if "jobs" in t and "all" in t.lower())
        assert "this channel" not in text
        assert "your" in line.lower() or "your" in text.lower().split("jobs [all]")[1][:120]


def test_manifest_grants_the_scopes_the_deliverer_uses() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "slack-manifest.yml").read_text())
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"im:write", "files:write", "chat:write", "commands"} <= scopes


# -- confirm dialogs on destructive buttons ----------------------------------------------------

EVIL_JOB = "j-<!channel>&" + "x" * 300


def _buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for b in blocks if b.get("type") == "actions" for e in b["elements"]]


def test_the_fake_refuses_a_malformed_or_oversized_confirm_dialog() -> None:
    def with_confirm(confirm: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "actions", "elements": [button("job.cancel", "Cancel", "j-1",
                                                        "danger") | {"confirm": confirm}]}]

    good = confirm_dialog("Cancel j-1?", "It is destroyed.", "Cancel it")
    assert block_kit_errors(with_confirm(good)) == []
    assert block_kit_errors(with_confirm({"title": {"type": "plain_text", "text": "x"}}))
    assert block_kit_errors(with_confirm({**good, "title": {"type": "plain_text",
                                                              "text": "t" * 101}}))
    assert block_kit_errors(with_confirm({**good, "confirm": {"type": "mrkdwn", "text": "ok"}}))


@pytest.mark.parametrize("job_id", ["j-0a1b2c3d", EVIL_JOB])
def test_cancel_destroy_stop_and_reject_ask_for_confirmation(job_id: str) -> None:
    messages = {
        "approval": slack_render.approval_blocks(job_id, ALICE, ["Plan", "1 x 4090"], "cost",
                                                 ["UADMIN1"]),
        "idle": idle_warning_blocks(job_id, "idle"),
        "budget": job_alert_blocks(job_id, "80 %"),
    }
    for name, blocks in messages.items():
        assert block_kit_errors(blocks) == [], name
        for element in _buttons(blocks):
            if element["action_id"] in {"job.cancel", "job.destroy", "job.reject"}:
                confirm = element.get("confirm")
                assert confirm, f"{name}: {element['action_id']} has no confirm dialog"
                assert confirm["style"] == "danger"
                assert job_id[:20] in confirm["text"]["text"] or "j-" in confirm["text"]["text"]
                assert confirm["confirm"]["text"] and confirm["deny"]["text"]


# -- /gpu status: the chart goes into the job's thread; no server path in any message ----------


def _post(http: Client, body: str) -> tuple[int, str]:
    response = http.post("/slack/events", data=body, headers={**FORM, **sign(body)})
    return response.status_code, response.get_data(as_text=True)


def _hook(slack: SlackFake, name: str) -> str:
    return slack.webhook_url.split("/webhook/")[0] + f"/webhook/{name}"


def _answer(slack: SlackFake, url: str) -> dict[str, Any]:
    path = "/webhook/" + url.split("/webhook/", 1)[1]

    def answers() -> list[dict[str, Any]]:
        return [p.params for p in list(slack.webhook_log)
                if p.path == path and not p.params.get("delete_original")]

    wait_until(lambda: bool(answers()), what=f"the answer at {url}")
    return answers()[0]


def _command(http: Client, slack: SlackFake, text: str, name: str, user: str = ALICE
             ) -> dict[str, Any]:
    url = _hook(slack, name)
    body = command_body(text, user=user, response_url=url, trigger=f"t.{name}")
    assert _post(http, body)[0] == 200
    return _answer(slack, url)


def _deliverer(deps: EngineDeps, slack: SlackFake) -> SlackDeliverer:
    client = WebClient(token=BOT_TOKEN, base_url=slack.url, timeout=5)
    return SlackDeliverer(client, deps, post_interval_seconds=0.0,
                          method_intervals_seconds={"chat.update": 0.01,
                                                    "views.publish": 0.01})


def _drain(deliverer: SlackDeliverer, deps: EngineDeps) -> None:
    def clean() -> bool:
        deliverer.deliver_once()
        with session_scope(deps.sessions) as session:
            return not session.scalars(
                select(MessageRow).where(MessageRow.dirty.is_(True),
                                         MessageRow.channel != "console")
            ).first()

    wait_until(clean, what="the outbox to drain", timeout_s=20)


def _launch(http: Client, slack: SlackFake, deps: EngineDeps, name: str) -> JobRow:
    answer = _command(http, slack, "train lr=2e-5", name)
    with session_scope(deps.sessions) as session:
        job = next(j for j in session.scalars(select(JobRow)) if j.id in answer["text"])
        session.expunge(job)
    return job


def _everything_sent(slack: SlackFake) -> str:
    parts = [json.dumps(c.params, default=str) + c.body for c in list(slack.calls)]
    parts += [json.dumps(v) for v in slack.views.values()]
    parts += [json.dumps(f) for f in slack.files]
    return "\n".join(parts)


def test_status_posts_the_chart_in_the_jobs_thread_and_no_reply_shows_a_server_path(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    job = _launch(http, slack, deps, "chart-launch")
    deliverer = _deliverer(deps, slack)
    _drain(deliverer, deps)
    with session_scope(deps.sessions) as session:
        session.execute(update(JobRow).where(JobRow.id == job.id).values(
            metrics_history={"points": [[10, 2.0], [20, 1.4], [30, 1.1]]}))
        parent_ts = session.scalars(select(JobRow.thread_ts).where(JobRow.id == job.id)).one()
    assert parent_ts

    answer = _command(http, slack, f"status {job.id}", "chart-status")
    assert "thread" in answer["text"]
    assert slack.files == []  # nothing uploaded at the top of the channel
    _drain(deliverer, deps)
    [chart] = slack.files
    assert chart["channel"] == CHANNEL and chart["thread_ts"] == parent_ts

    for i, text in enumerate(["status", "jobs all", "cost", "cost week by=user", "budget",
                              "help", f"logs {job.id}", "audit", f"status {job.id}"]):
        _command(http, slack, text, f"scan-{i}", user=ADMIN if text == "audit" else ALICE)
    _drain(deliverer, deps)
    sent = _everything_sent(slack)
    home = str(deps.settings.home)
    assert home not in sent and home.replace("/", "\\/") not in sent
    assert ".png" not in "".join(json.dumps(w.params) for w in slack.webhook_log)


# -- Socket Mode: /healthz and /metrics on $PORT -----------------------------------------------


def test_socket_mode_serves_healthz_and_metrics_on_its_own_port(deps: EngineDeps) -> None:
    """The health server app/serve.py starts next to the Socket Mode client (the client itself
    cannot connect here: apps.connections.open needs Slack)."""
    import urllib.error
    import urllib.request

    from app.serve import start_health_server

    server = start_health_server(deps, host="127.0.0.1", port=0)
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:  # noqa: S310
            assert r.status == 200 and r.read() == b"ok\n"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:  # noqa: S310
            assert b"gpubot_outbox_backlog" in r.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/slack/events", timeout=5)  # noqa: S310
        assert refused.value.code == 404  # Socket Mode takes no events over HTTP
    finally:
        server.shutdown()
        server.server_close()


# -- a decision replaces the Approve / Reject buttons ------------------------------------------


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_decision_replaces_the_approval_buttons_with_who_and_when(
    http: Client, deps: EngineDeps, slack: SlackFake, verb: str
) -> None:
    answer = _command(http, slack, "train gpu=h100", f"needs-approval-{verb}", user=ADMIN)
    assert "approval" in answer["text"]
    with session_scope(deps.sessions) as session:
        job_id = session.scalars(select(JobRow.id)).one()
    clicks = _hook(slack, f"decision-{verb}")
    payload = action_body(f"job.{verb}", job_id, user=ADMIN2, response_url=clicks)
    assert _post(http, payload) == (200, "")
    decision = _answer(slack, clicks)
    assert decision["replace_original"] is True
    assert block_kit_errors(decision["blocks"]) == []
    assert not _buttons(decision["blocks"])  # the buttons are gone
    shown = json.dumps(decision["blocks"])
    assert f"<@{ADMIN2}>" in shown and verb.rstrip("e") + "ed" in shown and "UTC" in shown


@pytest.mark.parametrize(("price", "raised"), [("0.0792", True), ("0.05", False)])
def test_a_price_click_replaces_the_pay_up_to_prompt_with_who_and_what(
    http: Client, deps: EngineDeps, slack: SlackFake, price: str, raised: bool
) -> None:
    # given a job waiting for a price approval, its prompt in the thread
    with session_scope(deps.sessions) as session:
        job = seed_job(session, "j-0price01", requester=ALICE, channel=CHANNEL,
                       state=JobState.RENTING, created_at=deps.clock())
        job.price_ceiling_per_hour_usd = Decimal("0.066")
        job.phase_detail = "waiting for a price approval: no offer at or below $0.0660/h"
    # when its requester clicks "Pay up to" (or a stale prompt at a price already allowed)
    clicks = _hook(slack, f"price-{price}")
    payload = action_body("job.raise_ceiling", f"j-0price01:{price}", user=ALICE,
                          response_url=clicks)
    assert _post(http, payload) == (200, "")
    # then the prompt becomes who raised it to what, without buttons
    decision = _answer(slack, clicks)
    assert decision["replace_original"] is True
    assert block_kit_errors(decision["blocks"]) == []
    assert not _buttons(decision["blocks"])
    shown = json.dumps(decision["blocks"])
    if raised:
        assert f"<@{ALICE}>" in shown and "$0.0792/h" in shown and "UTC" in shown
    else:
        assert "already pay up to $0.0660/h" in shown and "<@" not in shown
