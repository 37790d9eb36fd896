"""Permission bypass attempts through buttons and the App Home.

Buttons sit on messages anyone in the channel can see, and a click payload names the job in
its ``value``; the bot must re-check who clicks on every click. Each attack here is a signed,
well-formed Slack request by an allowed user (Bob) who is neither the job's requester (Alice)
nor an admin, so only the ownership check can stop it.
"""

from __future__ import annotations

import json

import pytest
from werkzeug.test import Client

from gpubot.chat.dispatch import handle_action
from gpubot.deps import EngineDeps
from gpubot.models import JobState
from tests.bot.conftest import ADMIN, ALICE, CHANNEL, action_body, sign
from tests.fixtures.slack_fake import SlackFake
from tests.security.conftest import (
    BOB,
    all_jobs,
    audit_actions,
    event_body,
    job_snapshot,
    launch,
    message_count,
    post,
    wait_until,
)

BUTTONS = (
    "job.cancel",
    "job.keep",
    "job.destroy",
    "job.approve",
    "job.reject",
    "job.extend_budget",
    "job.raise_ceiling",
)


@pytest.fixture
def alice_jobs(deps: EngineDeps) -> dict[str, str]:
    """Alice's queued job and her job waiting for approval ($3.50/h is above $2/h)."""
    return {
        "queued": launch(deps, "train lr=2e-5", user=ALICE, key="alice-1"),
        "awaiting": launch(deps, "train gpu=h100", user=ALICE, key="alice-2"),
    }


def _value(action_id: str, job_id: str) -> str:
    if action_id == "job.raise_ceiling":
        return f"{job_id}:0.5"
    return f"{job_id}:500" if action_id in ("job.keep", "job.extend_budget") else job_id


@pytest.mark.parametrize("action_id", BUTTONS)
@pytest.mark.parametrize("which", ["queued", "awaiting"])
def test_other_users_click_on_alices_job_is_refused_and_changes_nothing(
    http: Client,
    deps: EngineDeps,
    slack: SlackFake,
    alice_jobs: dict[str, str],
    action_id: str,
    which: str,
) -> None:
    # given
    job_id = alice_jobs[which]
    before, messages = all_jobs(deps), message_count(deps)
    audit_before = audit_actions(deps)
    body = action_body(
        action_id, _value(action_id, job_id), user=BOB, response_url=slack.webhook_url
    )
    # when
    assert post(http, body, sign(body))[0] == 200
    wait_until(lambda: slack.webhooks, what="the ephemeral answer")
    # then: refused, said why, and nothing but one 'denied' audit event was written
    [answer] = slack.webhooks
    assert answer["response_type"] == "ephemeral"
    assert "Only" in answer["text"]
    assert all_jobs(deps) == before
    assert message_count(deps) == messages
    assert audit_actions(deps) == [*audit_before, (BOB, "denied", job_id)]


@pytest.mark.parametrize("action_id", ["job.approve"])
def test_requester_cannot_approve_own_launch_even_by_button(
    deps: EngineDeps, alice_jobs: dict[str, str], action_id: str
) -> None:
    job_id = alice_jobs["awaiting"]
    before = job_snapshot(deps, job_id)
    reply = handle_action(deps, action_id, job_id, user=ALICE, channel=CHANNEL)
    assert not reply.ok and "Only an admin" in reply.text
    assert job_snapshot(deps, job_id) == before
    assert before["state"] == JobState.AWAITING_APPROVAL.value


MALFORMED_VALUES = [
    "j-xxxx:999999",
    "{job};rm -rf /",
    "{job}:999999;rm -rf /",
    "{job} ",
    " {job}",
    "{JOB}",
    "{job}\x00",
    "{job}\n",
    "j-" + "a" * 5000,
    "{job}:" + "9" * 5000,
    "ｊ-{job_tail}",  # fullwidth j
    "j‐{job_tail}",  # U+2010 hyphen instead of '-'
    "{job}\u200b",
    "../{job}",
    "%",
    "_",
    "' OR '1'='1",
    "{job}' OR '1'='1",
    "",
    ":",
    ":::",
]


def _fill(template: str, job_id: str) -> str:
    return (
        template.replace("{job}", job_id)
        .replace("{JOB}", job_id.upper())
        .replace("{job_tail}", job_id[2:])
    )


@pytest.mark.parametrize("action_id", BUTTONS)
def test_malformed_values_are_refused_and_change_nothing(
    deps: EngineDeps, alice_jobs: dict[str, str], action_id: str
) -> None:
    before = all_jobs(deps)
    messages = message_count(deps)
    for template in MALFORMED_VALUES:
        for clicker in (BOB, ALICE, ADMIN):
            value = _fill(template, alice_jobs["awaiting"])
            if clicker != BOB and value.split(":", 1)[0] == alice_jobs["awaiting"]:
                continue  # a well-formed click on the right job by someone entitled to it
            reply = handle_action(deps, action_id, value, user=clicker, channel=CHANNEL)
            assert not reply.ok, (action_id, value, clicker, reply.text)
            assert len(reply.text) < 400
    assert all_jobs(deps) == before
    assert message_count(deps) == messages


def test_unknown_action_ids_are_refused(deps: EngineDeps, alice_jobs: dict[str, str]) -> None:
    before = all_jobs(deps)
    for action_id in ("job.delete", "job.cancel ", "JOB.CANCEL", "job.approve\x00", "x" * 300):
        reply = handle_action(deps, action_id, alice_jobs["awaiting"], user=ADMIN, channel=CHANNEL)
        assert not reply.ok
        assert len(reply.text) < 100
    assert all_jobs(deps) == before



# -- App Home ---------------------------------------------------------------------------------


def test_app_home_shows_only_the_viewers_own_jobs(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    # given: Alice's job with distinctive values, and Bob's own job
    alice_job = launch(
        deps, "train lr=0.000123 seed=424242", user=ALICE, key="home-a"
    )
    bob_job = launch(deps, "train lr=2e-5 seed=31337", user=BOB, key="home-b")
    # when Bob opens his App Home
    body = event_body(
        {"type": "app_home_opened", "user": BOB, "channel": "D0BOB", "tab": "home"}, "EvHome1"
    )
    status, _ = post(http, body, sign(body), content_type="application/json")
    assert status == 200
    view = wait_until(lambda: slack.views.get(BOB), what="Bob's home view")
    # then: Bob's job is there, nothing of Alice's is (id, parameters, user id)
    published = json.dumps(view)
    assert bob_job in published
    for secret_of_alice in (alice_job, "424242", "0.000123", "1.23e-04", ALICE):
        assert secret_of_alice not in published, secret_of_alice
    assert set(slack.views) == {BOB}


def test_home_of_a_user_with_no_jobs_leaks_nothing(
    http: Client, deps: EngineDeps, slack: SlackFake, alice_jobs: dict[str, str]
) -> None:
    body = event_body(
        {"type": "app_home_opened", "user": BOB, "channel": "D0BOB", "tab": "home"}, "EvHome2"
    )
    assert post(http, body, sign(body), content_type="application/json")[0] == 200
    published = json.dumps(wait_until(lambda: slack.views.get(BOB), what="Bob's home view"))
    assert "No live jobs" in published
    for job_id in alice_jobs.values():
        assert job_id not in published
    assert ALICE not in published


@pytest.mark.parametrize("amount", ["NaN", "sNaN", "Infinity", "1e999999"])
def test_extend_budget_with_a_non_finite_amount_is_refused(
    deps: EngineDeps, alice_jobs: dict[str, str], amount: str
) -> None:
    job_id = alice_jobs["queued"]
    before = job_snapshot(deps, job_id)
    reply = handle_action(
        deps, "job.extend_budget", f"{job_id}:{amount}", user=ALICE, channel=CHANNEL
    )
    assert not reply.ok
    assert job_snapshot(deps, job_id) == before
