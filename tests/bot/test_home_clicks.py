"""Buttons on the App Home: a click comes from a view (no channel, no response_url).

It is checked against the job's own channel (the channel allow-list applies as in the
thread), answered by republishing the clicker's Home, and a refusal reaches the clicker as a
DM. Clicks go through the signed HTTP endpoint and the inline answer path, to the Slack fake.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from werkzeug.test import Client

from gpubot.config import BotConfig, load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow
from gpubot.deps import EngineDeps
from gpubot.render.blocks import ACTION_CANCEL
from gpubot.testing.fakes import seed_job
from tests.bot.conftest import (
    ADMIN,
    ALICE,
    CHANNEL,
    CONFIG_TOML,
    FORM,
    MALLORY,
    action_body,
    sign,
    wait_until,
)
from tests.fixtures.slack_fake import SlackFake

JOB = "j-home0001"


@pytest.fixture
def config() -> BotConfig:
    """The suite's roles, and GPUs allowed from CHANNEL only: a click without the job's
    channel would be refused."""
    roles = CONFIG_TOML.replace("[roles]\n", f'[roles]\nallowed_channels = ["{CHANNEL}"]\n')
    return load_config_text(roles)


def _seed(deps: EngineDeps) -> None:
    with session_scope(deps.sessions) as session:
        seed_job(session, JOB, requester=ALICE, channel=CHANNEL)


def _actions(deps: EngineDeps, action: str) -> list[tuple[str, str]]:
    with session_scope(deps.sessions) as session:
        rows = session.scalars(select(AuditEventRow).where(AuditEventRow.action == action))
        return [(r.actor, r.target) for r in rows]


def _published_for(slack: SlackFake, user: str) -> int:
    return sum(1 for c in slack.calls_to("views.publish") if c.params.get("user_id") == user)


def _click(http: Client, user: str) -> None:
    body = action_body(ACTION_CANCEL, JOB, user=user, from_home=True)
    response = http.post("/slack/events", data=body, headers={**FORM, **sign(body)})
    assert response.status_code == 200


def test_cancel_on_the_home_cancels_in_the_jobs_channel_and_republishes_the_home(
    deps: EngineDeps, http: Client, slack: SlackFake
) -> None:
    _seed(deps)
    _click(http, ALICE)
    wait_until(lambda: _published_for(slack, ALICE) >= 1, what="ALICE's Home republished")
    assert (ALICE, JOB) in _actions(deps, "cancel")
    assert not _actions(deps, "denied")
    assert not slack.calls_to("conversations.open")  # nothing to say beyond the Home


def test_a_refused_home_click_changes_nothing_and_reaches_the_clicker_by_dm(
    deps: EngineDeps, http: Client, slack: SlackFake
) -> None:
    _seed(deps)
    _click(http, MALLORY)
    wait_until(lambda: bool(slack.calls_to("chat.postMessage")), what="the refusal by DM")
    assert not _actions(deps, "cancel")
    [opened] = slack.calls_to("conversations.open")
    assert opened.params.get("users") == MALLORY
    assert _published_for(slack, MALLORY) == 1
    assert _published_for(slack, ADMIN) == 0
