"""A launch is refused (nothing rented, no job row) where the bot cannot post its thread.

Signed requests through the real WSGI front and Bolt app, the Slack fake in strict mode
(``conversations.info``, ``x-oauth-scopes``), and the vast.ai simulator over HTTP behind the
real ``VastAIProvider``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from werkzeug.test import Client

from bot.app import build_app
from bot.channel_access import ChannelAccess, manifest_bot_scopes
from bot.http import make_wsgi_app
from gpubot.config import BotConfig
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow
from gpubot.deps import EngineDeps
from gpubot.providers.vastai.provider import VastAIProvider
from gpubot.sim.control import SimControl
from gpubot.sim.server import SimServer
from gpubot.wiring import build_engine_deps
from tests.bot.conftest import (
    CHANNEL,
    FORM,
    Kicks,
    MemoryStore,
    all_jobs,
    command_body,
    make_settings,
    shown_to_user,
    sign,
    wait_until,
)
from tests.fixtures.slack_fake import SlackFake

PUBLIC = "CPUBLIC01"
PRIVATE = "GPRIVATE1"
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "slack-manifest.yml"


@pytest.fixture
def kicks() -> Kicks:
    return Kicks()


@pytest.fixture
def sim_deps(
    sim: SimServer, slack: SlackFake, config: BotConfig, tmp_path: Path, kicks: Kicks
) -> EngineDeps:
    return build_engine_deps(
        make_settings(tmp_path / "home", slack.url),
        config=config,
        provider=VastAIProvider(api_key=sim.api_key, server_url=sim.url),
        store=MemoryStore(),
        enqueuer=kicks,
    )


@pytest.fixture
def front(sim_deps: EngineDeps) -> Client:
    return Client(make_wsgi_app(build_app(sim_deps, settings=sim_deps.settings), sim_deps))


def _launch(front: Client, slack: SlackFake, channel: str, trigger: str) -> list[str]:
    """``/gpu train`` in ``channel``; what the user sees once the answer has come."""
    path = f"/webhook/access/{trigger}"
    body = command_body(
        "train lr=2e-5 max_price=$1.50", channel=channel, trigger=trigger,
        response_url=slack.webhook_url.split("/webhook/")[0] + path,
    )
    response = front.post("/slack/events", data=body, headers={**FORM, **sign(body)})
    assert response.status_code == 200
    posts = lambda: [p.params for p in list(slack.webhook_log) if p.path == path]  # noqa: E731
    wait_until(lambda: len(posts()) >= 1, what="the answer")
    return shown_to_user("Working on it…", posts())



def _live_instances(sim: SimServer) -> list[object]:
    return list(SimControl(sim.url, sim.api_key).state().get("instances") or [])


def test_launch_where_the_bot_is_not_a_member_rents_nothing_and_asks_for_an_invite(
    front: Client, sim_deps: EngineDeps, slack: SlackFake, sim: SimServer, kicks: Kicks
) -> None:
    slack.strict(channels={CHANNEL, PUBLIC}, member_of={PUBLIC})
    slack.scopes = "commands,chat:write,channels:read,groups:read"  # no chat:write.public

    [shown] = _launch(front, slack, CHANNEL, "1.1.1")

    assert "/invite @gpubot" in shown and "nothing was launched" in shown
    assert all_jobs(sim_deps) == []
    assert kicks.count == 0
    assert _live_instances(sim) == []
    assert slack.calls_to("chat.postMessage") == []
    with session_scope(sim_deps.sessions) as session:
        denied = session.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "denied")
        ).all()
    assert [d.reason for d in denied] == ["bot cannot post in the channel"]


def test_private_channel_hidden_from_the_bot_is_refused(
    front: Client, sim_deps: EngineDeps, slack: SlackFake
) -> None:
    slack.strict(channels={PRIVATE}, member_of=set())
    slack.private_channels = {PRIVATE}
    slack.scopes = "commands,chat:write,chat:write.public,channels:read,groups:read"
    [shown] = _launch(front, slack, PRIVATE, "2.2.2")
    assert "/invite @gpubot" in shown
    assert all_jobs(sim_deps) == []


def test_public_channel_with_chat_write_public_launches_and_the_answer_is_cached(
    front: Client, sim_deps: EngineDeps, slack: SlackFake, kicks: Kicks
) -> None:
    slack.strict(channels={PUBLIC}, member_of=set())
    slack.scopes = "commands,chat:write,chat:write.public,channels:read,groups:read"
    [first] = _launch(front, slack, PUBLIC, "3.3.3")
    [second] = _launch(front, slack, PUBLIC, "3.3.4")
    jobs = all_jobs(sim_deps)
    assert len(jobs) == 2 and {j.channel for j in jobs} == {PUBLIC}
    assert jobs[0].id in first + second and jobs[1].id in first + second
    assert kicks.count == 2
    assert len(slack.calls_to("conversations.info")) == 1  # the second launch used the cache
    assert len(slack.calls_to("auth.test")) >= 1


def test_member_channel_launches_and_read_only_verbs_are_never_checked(
    front: Client, sim_deps: EngineDeps, slack: SlackFake
) -> None:
    slack.strict(channels={CHANNEL})
    [shown] = _launch(front, slack, CHANNEL, "4.4.4")
    [job] = all_jobs(sim_deps)
    assert job.id in shown
    body = command_body(
        "jobs", channel="CNOTKNOWN", trigger="4.4.5", response_url=slack.webhook_url
    )
    assert front.post("/slack/events", data=body, headers={**FORM, **sign(body)}).status_code \
        == 200
    wait_until(lambda: len(slack.webhook_log) >= 2, what="the jobs answer")
    assert [c.params.get("channel") for c in slack.calls_to("conversations.info")] == [CHANNEL]


def test_without_the_scopes_header_the_manifest_scopes_are_assumed(slack: SlackFake) -> None:
    from slack_sdk import WebClient

    from tests.bot.conftest import BOT_TOKEN

    slack.strict(channels={PUBLIC}, member_of=set())
    client = WebClient(token=BOT_TOKEN, base_url=slack.url)
    assert ChannelAccess(manifest_scopes=frozenset({"chat:write"})).check(client, PUBLIC).ok \
        is False
    assert ChannelAccess(manifest_scopes=frozenset({"chat:write.public"})).check(
        client, PUBLIC
    ).ok
    slack.scopes = "chat:write"  # the header wins over the manifest
    assert not ChannelAccess(manifest_scopes=frozenset({"chat:write.public"})).check(
        client, PUBLIC
    ).ok


def test_manifest_reader_matches_yaml_and_has_the_scopes_the_check_needs() -> None:
    declared = set(yaml.safe_load(MANIFEST.read_text())["oauth_config"]["scopes"]["bot"])
    assert manifest_bot_scopes(MANIFEST) == declared
    assert {"chat:write.public", "channels:read", "groups:read"} <= declared


def test_refusals_expire_quickly_so_an_invite_takes_effect(slack: SlackFake) -> None:
    from slack_sdk import WebClient

    from bot.channel_access import REFUSED_TTL_SECONDS
    from tests.bot.conftest import BOT_TOKEN

    now = [0.0]
    access = ChannelAccess(manifest_scopes=frozenset(), clock=lambda: now[0])
    client = WebClient(token=BOT_TOKEN, base_url=slack.url)
    slack.strict(channels={CHANNEL}, member_of=set())
    assert not access.check(client, CHANNEL).ok
    slack.member_of = {CHANNEL}  # /invite @gpubot
    assert not access.check(client, CHANNEL).ok  # cached
    now[0] += REFUSED_TTL_SECONDS + 0.1
    assert access.check(client, CHANNEL).ok
