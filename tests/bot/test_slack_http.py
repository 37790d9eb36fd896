"""Signed Slack requests through the WSGI app (the inbound side), against a fake Web API.

Every ``/gpu`` is acked at once with "Working on it…" and answered through the request's
response_url (here the fake's ``/webhook/<name>``, one per test); clicks are acked empty and
answered the same way. Each test asserts the ack, waits (with a deadline) for the answer and
asserts on it what it would have asserted on an answer in the ack.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import func, select
from werkzeug.test import Client

from bot.listeners import WORKING
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
    shown_to_user,
    sign,
    wait_until,
)
from tests.fixtures.slack_fake import SlackFake

WORKING_ACK = {"text": WORKING, "response_type": "ephemeral"}
"""The body of every ``/gpu`` ack."""


def _jobs(deps: EngineDeps) -> list[JobRow]:
    with session_scope(deps.sessions) as session:
        return list(session.scalars(select(JobRow)))


def _post(http: Client, body: str, headers: dict[str, str]) -> tuple[int, str]:
    response = http.post("/slack/events", data=body, headers={**FORM, **headers})
    return response.status_code, response.get_data(as_text=True)


def _hook(slack: SlackFake, name: str) -> str:
    """A response_url on the fake for one request: ``/webhook/<name>``."""
    return slack.webhook_url.split("/webhook/")[0] + f"/webhook/{name}"


def _posts(slack: SlackFake, url: str) -> list[dict[str, Any]]:
    path = "/webhook/" + url.split("/webhook/", 1)[1]
    return [p.params for p in list(slack.webhook_log) if p.path == path]


def _answers(slack: SlackFake, url: str, count: int = 1) -> list[dict[str, Any]]:
    """The first ``count`` answers posted to ``url`` (placeholder deletions left out), once
    they have all arrived (10 s deadline)."""

    def answers() -> list[dict[str, Any]]:
        return [p for p in _posts(slack, url) if not p.get("delete_original")]

    wait_until(lambda: len(answers()) >= count, what=f"{count} answer(s) at {url}")
    return answers()[:count]


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


def test_train_acks_within_3s_then_answers_with_the_plan_and_queues_a_job(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    url = _hook(slack, "train")
    body = command_body("train lr=2e-5", response_url=url)
    started = time.monotonic()
    status, text = _post(http, body, sign(body))
    elapsed = time.monotonic() - started
    assert status == 200
    assert elapsed < 3.0
    assert json.loads(text) == WORKING_ACK
    [answer] = _answers(slack, url)
    assert answer["response_type"] == "ephemeral"
    assert shown_to_user(WORKING, _posts(slack, url)) == [answer["text"]]
    assert "Plan for train lr=2e-05" in answer["text"] or "Plan for train" in answer["text"]
    assert "RTX 3090" in answer["text"]  # the cheapest matching offer
    assert "/h" in answer["text"] and "interruptible" in answer["text"]
    [job] = _jobs(deps)
    assert job.state == JobState.QUEUED.value
    assert job.requester == ALICE
    assert job.id in answer["text"]
    with session_scope(deps.sessions) as session:
        kinds = sorted(m.kind for m in session.scalars(select(MessageRow)))
    # the job's live card is its top-level message (the plan first); the requester's App Home
    # is to be republished
    assert kinds == ["card", "home"]


def test_one_command_delivered_three_times_launches_once(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    # A redelivery is the same body, so it has the same response_url: three answers land there.
    url = _hook(slack, "three-deliveries")
    body = command_body("train lr=2e-5", trigger="555.666.retry", response_url=url)
    for retry in (None, "1", "2"):
        headers = sign(body)
        if retry:
            headers |= {"X-Slack-Retry-Num": retry, "X-Slack-Retry-Reason": "http_timeout"}
        status, text = _post(http, body, headers)
        assert status == 200
        assert json.loads(text) == WORKING_ACK
    answers = [str(a["text"]) for a in _answers(slack, url, 3)]
    jobs = _jobs(deps)
    assert len(jobs) == 1
    assert all(jobs[0].id in a for a in answers)
    assert sum("Already handled" in a for a in answers) == 2
    with session_scope(deps.sessions) as session:
        launches = session.scalar(
            select(func.count()).select_from(AuditEventRow).where(AuditEventRow.action == "launch")
        )
    assert launches == 1


def test_bad_input_gets_usage_and_creates_nothing(
    http: Client, deps: EngineDeps, provider: FixedOffersProvider, slack: SlackFake
) -> None:
    for n, text in enumerate(("train lr=banana", "train colour=red", "frobnicate now")):
        url = _hook(slack, f"bad-input-{n}")
        body = command_body(text, trigger=f"t-{text}", response_url=url)
        status, ack = _post(http, body, sign(body))
        assert status == 200
        assert json.loads(ack) == WORKING_ACK
        [answer] = _answers(slack, url)
        assert "Usage" in answer["text"] or "unknown command" in answer["text"]
        assert shown_to_user(WORKING, _posts(slack, url)) == [answer["text"]]
    assert _jobs(deps) == []
    assert provider.searches == 0


def test_user_outside_the_allow_list_is_refused(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    url = _hook(slack, "allow-list")
    body = command_body("train lr=2e-5", user=MALLORY, response_url=url)
    status, ack = _post(http, body, sign(body))
    assert status == 200
    assert json.loads(ack) == WORKING_ACK
    [answer] = _answers(slack, url)
    assert "not on the list" in answer["text"]
    assert answer["response_type"] == "ephemeral"
    assert shown_to_user(WORKING, _posts(slack, url)) == [answer["text"]]
    assert _jobs(deps) == []
    with session_scope(deps.sessions) as session:
        denied = session.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "denied")
        ).all()
    assert [d.actor for d in denied] == [MALLORY]


def test_expensive_launch_waits_for_another_admins_approval(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    url = _hook(slack, "approval-request")
    body = command_body("train gpu=h100", user=ADMIN, response_url=url)
    status, ack = _post(http, body, sign(body))
    assert status == 200 and json.loads(ack) == WORKING_ACK
    [answer] = _answers(slack, url)
    assert "approval" in answer["text"]
    assert shown_to_user(WORKING, _posts(slack, url)) == [answer["text"]]
    [job] = _jobs(deps)
    assert job.state == JobState.AWAITING_APPROVAL.value
    with session_scope(deps.sessions) as session:
        approval = session.scalars(
            select(MessageRow).where(MessageRow.kind == "reply", MessageRow.job_id == job.id)
        ).one()
        ids = [e["action_id"] for b in approval.blocks["blocks"] for e in b.get("elements", [])
               if b["type"] == "actions"]
    assert ids == ["job.approve", "job.reject"]
    clicks = _hook(slack, "approval-clicks")

    def click(user: str) -> None:
        payload = action_body("job.approve", job.id, user=user, response_url=clicks)
        assert _post(http, payload, sign(payload)) == (200, "")  # acked at once, empty

    click(ADMIN)  # the requester
    click(ALICE)  # not an admin
    _answers(slack, clicks, 2)  # both clicks answered: neither is still in flight
    assert _jobs(deps)[0].state == JobState.AWAITING_APPROVAL.value
    click(ADMIN2)
    texts = [str(a.get("text", "")) for a in _answers(slack, clicks, 3)]
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


def test_healthz_and_metrics(http: Client, deps: EngineDeps, slack: SlackFake) -> None:
    url = _hook(slack, "metrics-train")
    body = command_body("train lr=2e-5", response_url=url)
    status, ack = _post(http, body, sign(body))
    assert status == 200 and json.loads(ack) == WORKING_ACK
    [answer] = _answers(slack, url)  # answered only once the launch is committed
    [job] = _jobs(deps)
    assert job.id in answer["text"]
    assert http.get("/healthz").status_code == 200
    metrics = http.get("/metrics").get_data(as_text=True)
    assert 'gpubot_jobs{state="queued"} 1' in metrics
    # the job's card and the requester's App Home, not yet delivered
    assert "gpubot_outbox_backlog 2" in metrics
    assert "gpubot_live_instances 0" in metrics
    assert "gpubot_ledger_total_usd 0.000000" in metrics
    # the ledger total is what the ledger holds, entries without a job included (read from
    # its spend summaries)
    from gpubot.testing.fakes import seed_ledger

    with session_scope(deps.sessions) as session:
        seed_ledger(session, [(job.id, job.requester, job.channel, "compute", "0.125"),
                              (None, "", "", "storage", "0.000001")])
    metrics = http.get("/metrics").get_data(as_text=True)
    assert "gpubot_ledger_total_usd 0.125001" in metrics
    assert http.get("/nope").status_code == 404


def test_socket_mode_request_acks_then_answers_through_response_url(
    deps: EngineDeps, slack: SlackFake
) -> None:
    from slack_bolt import BoltRequest

    from bot.app import build_app

    app = build_app(deps, settings=deps.settings)
    url = _hook(slack, "socket-mode")
    fields = dict(
        team_id="T0FAKE", user_id=ALICE, channel_id="C1", command="/gpu", text="help",
        trigger_id="1.2.3", response_url=url,
    )
    response = app.dispatch(BoltRequest(mode="socket_mode", body=fields))
    assert response.status == 200
    assert json.loads(response.body) == WORKING_ACK
    [answer] = _answers(slack, url)
    assert "gpubot rents GPUs" in answer["text"]
    assert shown_to_user(WORKING, _posts(slack, url)) == [answer["text"]]


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
