"""Every ``/gpu`` verb is acknowledged before any work, then answered through response_url.

Signed requests go through the real WSGI front and Bolt app; answers go to the Slack fake's
``/webhook/...``. The market is gated: a search blocks until the test opens it, so "acked
while the vast search is still running" is checked without timing anything.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from werkzeug.test import Client

from bot.listeners import WORKING
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow
from gpubot.deps import EngineDeps
from tests.bot.conftest import (
    FORM,
    OFFERS,
    GatedOffersProvider,
    all_jobs,
    command_body,
    post_signed,
    shown_to_user,
    wait_until,
    webhook_posts,
)
from tests.fixtures.slack_fake import SlackFake


@pytest.fixture
def provider() -> GatedOffersProvider:  # type: ignore[override]
    return GatedOffersProvider(OFFERS, timeout_s=10.0)





@pytest.mark.parametrize(
    ("text", "expected"),
    [("train lr=2e-5", "RTX 3090"), ("offers gpu=4090", "RTX 4090")],
    ids=["launch", "offers"],
)
def test_verbs_that_search_vast_ack_before_the_search_and_answer_through_response_url(
    http: Client, deps: EngineDeps, slack: SlackFake, provider: GatedOffersProvider,
    text: str, expected: str,
) -> None:
    path = f"/webhook/ack-first/{text.split()[0]}"
    body = command_body(text, response_url=slack.webhook_url.split("/webhook/")[0] + path)

    status, ack = post_signed(http, body)  # the search is still blocked at this point

    assert status == 200
    assert json.loads(ack) == {"text": WORKING, "response_type": "ephemeral"}
    assert webhook_posts(slack, path) == [] and all_jobs(deps) == []
    provider.gate.set()
    wait_until(lambda: len(webhook_posts(slack, path)) >= 1, what="the answer")
    shown = shown_to_user(WORKING, webhook_posts(slack, path))
    assert len(shown) == 1 and expected in shown[0]
    assert WORKING not in shown[0]
    if text.startswith("train"):
        [job] = all_jobs(deps)
        assert job.id in shown[0]
    else:
        assert all_jobs(deps) == []


@pytest.mark.parametrize("text", ["help", "jobs", "status", "logs j-0000abcd", "frobnicate"])
def test_every_other_verb_acks_with_the_placeholder_and_its_answer_replaces_it(
    http: Client, slack: SlackFake, text: str
) -> None:
    path = "/webhook/other/" + text.split()[0]
    body = command_body(text, response_url=slack.webhook_url.split("/webhook/")[0] + path)
    status, ack = post_signed(http, body)
    assert status == 200 and json.loads(ack)["text"] == WORKING
    wait_until(lambda: len(webhook_posts(slack, path)) >= 1, what="the answer")
    shown = shown_to_user(WORKING, webhook_posts(slack, path))
    assert len(shown) == 1 and shown[0] and WORKING not in shown[0]


def test_a_retried_delivery_during_the_search_creates_one_job(
    http: Client, deps: EngineDeps, slack: SlackFake, provider: GatedOffersProvider
) -> None:
    path = "/webhook/retry/train"
    body = command_body(
        "train lr=2e-5", trigger="777.888.retry",
        response_url=slack.webhook_url.split("/webhook/")[0] + path,
    )
    first = post_signed(http, body)
    # Slack's redelivery: the same signed body, X-Slack-Retry-Num set. Another copy without
    # the header (the same trigger_id) must not launch either.
    retry = post_signed(
        http, body, {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    )
    again = post_signed(http, body)
    assert [first[0], retry[0], again[0]] == [200, 200, 200]
    provider.gate.set()
    wait_until(lambda: len(webhook_posts(slack, path)) >= 3, what="three answers")
    [job] = all_jobs(deps)
    with session_scope(deps.sessions) as session:
        launches = session.scalar(
            select(func.count()).select_from(AuditEventRow).where(AuditEventRow.action == "launch")
        )
    assert launches == 1
    texts = [str(p.get("text", "")) for p in webhook_posts(slack, path)]
    assert all(job.id in t for t in texts)
    assert sum("Already handled" in t for t in texts) == 2


def test_ssl_check_is_answered_200_and_does_nothing(
    http: Client, deps: EngineDeps, slack: SlackFake, provider: GatedOffersProvider
) -> None:
    body = "token=deprecated&ssl_check=1"
    response = http.post("/slack/events", data=body, headers=FORM)  # unsigned, as Slack sends
    assert response.status_code == 200 and response.get_data() == b""
    assert all_jobs(deps) == [] and provider.searches == 0 and slack.calls == []


def test_ssl_check_field_does_not_unlock_an_unsigned_command(
    http: Client, deps: EngineDeps, provider: GatedOffersProvider
) -> None:
    body = command_body("train lr=2e-5") + "&ssl_check=1"
    response = http.post("/slack/events", data=body, headers=FORM)
    assert response.status_code == 401
    provider.gate.set()
    assert all_jobs(deps) == [] and provider.searches == 0
