"""Signed Slack requests through the WSGI app (the inbound side), against a fake Web API."""

from __future__ import annotations

import json
import time

from sqlalchemy import func, select
from werkzeug.test import Client

from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.models import JobState
from tests.bot.conftest import (
    ADMIN,
    ADMIN2,
    ALICE,
    BOT_TOKEN,
    FORM,
    MALLORY,
    SIGNING_SECRET,
    FixedOffersProvider,
    action_body,
    command_body,
    sign,
)
from tests.fixtures.slack_fake import SlackFake


def _jobs(deps: EngineDeps) -> list[JobRow]:
    with session_scope(deps.sessions) as session:
        return list(session.scalars(select(JobRow)))


def _post(http: Client, body: str, headers: dict[str, str]) -> tuple[int, str]:
    response = http.post("/slack/events", data=body, headers={**FORM, **headers})
    return response.status_code, response.get_data(as_text=True)


def test_unsigned_wrongly_signed_and_stale_requests_get_401_and_launch_nothing(
    http: Client, deps: EngineDeps, provider: FixedOffersProvider
) -> None:
    body = command_body("train lr=2e-5")
    assert _post(http, body, {})[0] == 401
    assert _post(http, body, sign(body, secret="not-the-secret"))[0] == 401
    six_minutes_ago = int(time.time()) - 360
    assert _post(http, body, sign(body, timestamp=six_minutes_ago))[0] == 401
    tampered = sign(body)
    assert _post(http, body.replace("lr%3D2e-5", "lr%3D1e-3"), tampered)[0] == 401
    assert _jobs(deps) == []
    assert provider.searches == 0


def test_train_acks_within_3s_with_the_plan_and_queues_a_job(
    http: Client, deps: EngineDeps
) -> None:
    body = command_body("train lr=2e-5")
    started = time.monotonic()
    status, text = _post(http, body, sign(body))
    elapsed = time.monotonic() - started
    assert status == 200
    assert elapsed < 3.0
    ack = json.loads(text)
    assert ack["response_type"] == "ephemeral"
    assert "Plan for train lr=2e-05" in ack["text"] or "Plan for train" in ack["text"]
    assert "RTX 3090" in ack["text"]  # the cheapest matching offer
    assert "/h" in ack["text"] and "interruptible" in ack["text"]
    [job] = _jobs(deps)
    assert job.state == JobState.QUEUED.value
    assert job.requester == ALICE
    assert job.id in ack["text"]
    with session_scope(deps.sessions) as session:
        kinds = sorted(m.kind for m in session.scalars(select(MessageRow)))
    assert kinds == ["card", "parent"]


def test_one_command_delivered_three_times_launches_once(
    http: Client, deps: EngineDeps
) -> None:
    body = command_body("train lr=2e-5", trigger="555.666.retry")
    answers = []
    for retry in (None, "1", "2"):
        headers = sign(body)
        if retry:
            headers |= {"X-Slack-Retry-Num": retry, "X-Slack-Retry-Reason": "http_timeout"}
        status, text = _post(http, body, headers)
        assert status == 200
        answers.append(text)
    jobs = _jobs(deps)
    assert len(jobs) == 1
    assert all(jobs[0].id in a for a in answers)
    with session_scope(deps.sessions) as session:
        launches = session.scalar(
            select(func.count()).select_from(AuditEventRow).where(AuditEventRow.action == "launch")
        )
    assert launches == 1


def test_bad_input_gets_usage_and_creates_nothing(
    http: Client, deps: EngineDeps, provider: FixedOffersProvider
) -> None:
    for text in ("train lr=banana", "train colour=red", "frobnicate now"):
        body = command_body(text, trigger=f"t-{text}")
        status, answer = _post(http, body, sign(body))
        assert status == 200
        assert "Usage" in answer or "unknown command" in answer
    assert _jobs(deps) == []
    assert provider.searches == 0


def test_user_outside_the_allow_list_is_refused(http: Client, deps: EngineDeps) -> None:
    body = command_body("train lr=2e-5", user=MALLORY)
    status, answer = _post(http, body, sign(body))
    assert status == 200
    assert "not on the list" in answer
    assert json.loads(answer)["response_type"] == "ephemeral"
    assert _jobs(deps) == []
    with session_scope(deps.sessions) as session:
        denied = session.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "denied")
        ).all()
    assert [d.actor for d in denied] == [MALLORY]


def test_expensive_launch_waits_for_another_admins_approval(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    body = command_body("train gpu=h100", user=ADMIN, response_url=slack.webhook_url)
    status, answer = _post(http, body, sign(body))
    assert status == 200 and "approval" in answer
    [job] = _jobs(deps)
    assert job.state == JobState.AWAITING_APPROVAL.value
    with session_scope(deps.sessions) as session:
        approval = session.scalars(
            select(MessageRow).where(MessageRow.kind == "reply", MessageRow.job_id == job.id)
        ).one()
        ids = [e["action_id"] for b in approval.blocks["blocks"] for e in b.get("elements", [])
               if b["type"] == "actions"]
    assert ids == ["job.approve", "job.reject"]

    def click(user: str) -> None:
        payload = action_body("job.approve", job.id, user=user, response_url=slack.webhook_url)
        assert _post(http, payload, sign(payload))[0] == 200

    click(ADMIN)  # the requester
    click(ALICE)  # not an admin
    assert _jobs(deps)[0].state == JobState.AWAITING_APPROVAL.value
    click(ADMIN2)
    deadline = time.monotonic() + 5
    while len(slack.webhooks) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    texts = [w.get("text", "") for w in slack.webhooks]
    assert any("can't approve your own" in t for t in texts)
    assert any("Only an admin" in t for t in texts)
    assert any("approved" in t for t in texts)
    assert _jobs(deps)[0].state == JobState.QUEUED.value
    with session_scope(deps.sessions) as session:
        actions = [e.action for e in session.scalars(select(AuditEventRow))]
    assert actions.count("approve") == 1 and actions.count("denied") == 2
    _assert_no_secrets(slack)


def test_app_home_is_published(http: Client, slack: SlackFake) -> None:
    event = {
        "token": "deprecated",
        "team_id": "T0FAKE",
        "api_app_id": "A0GPUBOT",
        "type": "event_callback",
        "event_id": "Ev01",
        "event_time": int(time.time()),
        "event": {"type": "app_home_opened", "user": ALICE, "channel": "D01", "tab": "home"},
    }
    body = json.dumps(event)
    response = http.post(
        "/slack/events", data=body, headers={"Content-Type": "application/json", **sign(body)}
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while ALICE not in slack.views and time.monotonic() < deadline:
        time.sleep(0.02)
    view = slack.views[ALICE]
    assert view["type"] == "home"
    assert "Your live jobs" in json.dumps(view)
    _assert_no_secrets(slack)


def test_healthz_and_metrics(http: Client, deps: EngineDeps) -> None:
    body = command_body("train lr=2e-5")
    _post(http, body, sign(body))
    assert http.get("/healthz").status_code == 200
    metrics = http.get("/metrics").get_data(as_text=True)
    assert 'gpubot_jobs{state="queued"} 1' in metrics
    assert "gpubot_outbox_backlog 2" in metrics
    assert "gpubot_live_instances 0" in metrics
    assert http.get("/nope").status_code == 404


def test_socket_mode_request_dispatches(deps: EngineDeps) -> None:
    from slack_bolt import BoltRequest

    from bot.app import build_app

    app = build_app(deps, settings=deps.settings)
    fields = dict(
        team_id="T0FAKE", user_id=ALICE, channel_id="C1", command="/gpu", text="help",
        trigger_id="1.2.3", response_url="http://127.0.0.1:9/webhook",
    )
    response = app.dispatch(BoltRequest(mode="socket_mode", body=fields))
    assert response.status == 200
    assert "gpubot rents GPUs" in response.body


def _assert_no_secrets(slack: SlackFake) -> None:
    for call in slack.calls:
        dumped = call.body + json.dumps(call.params, default=str)
        assert BOT_TOKEN not in dumped
        assert SIGNING_SECRET not in dumped


def test_slow_commands_ack_first_and_answer_through_response_url(
    http: Client, slack: SlackFake
) -> None:
    body = command_body("logs j-0000abcd", response_url=slack.webhook_url, trigger="9.9.9")
    status, answer = _post(http, body, sign(body))
    assert status == 200 and "Working on it" in answer
    deadline = time.monotonic() + 5
    while not slack.webhooks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "There is no job" in slack.webhooks[0]["text"]
