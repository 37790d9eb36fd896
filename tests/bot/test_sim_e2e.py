"""A slash command against the vast.ai simulator over real HTTP (through the real adapter):
acked at once with "Working on it…", answered with the plan through the response_url."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import select
from werkzeug.test import Client

from bot.app import build_app
from bot.delivery import SlackDeliverer
from bot.http import make_wsgi_app
from bot.listeners import WORKING
from gpubot.config import BotConfig
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow, MessageRow
from gpubot.providers.vastai.provider import VastAIProvider
from gpubot.sim.server import SimServer
from gpubot.wiring import build_engine_deps
from tests.bot.conftest import (
    BOT_TOKEN,
    FORM,
    Kicks,
    MemoryStore,
    command_body,
    make_settings,
    shown_to_user,
    sign,
    wait_until,
)
from tests.fixtures.slack_fake import SlackFake


def test_train_on_the_simulator_market_acks_in_time_answers_and_posts_its_thread(
    sim: SimServer, slack: SlackFake, config: BotConfig, tmp_path: Path
) -> None:
    provider = VastAIProvider(api_key=sim.api_key, server_url=sim.url)
    kicks = Kicks()
    deps = build_engine_deps(
        make_settings(tmp_path / "home", slack.url),
        config=config,
        provider=provider,
        store=MemoryStore(),
        enqueuer=kicks,
    )
    http = Client(make_wsgi_app(build_app(deps, settings=deps.settings), deps))
    path = "/webhook/sim-train"
    body = command_body(
        "train lr=2e-5 max_price=$1.50",
        response_url=slack.webhook_url.split("/webhook/")[0] + path,
    )
    started = time.monotonic()
    response = http.post("/slack/events", data=body, headers={**FORM, **sign(body)})
    assert time.monotonic() - started < 3.0
    assert response.status_code == 200
    ack = json.loads(response.get_data(as_text=True))
    assert ack == {"text": WORKING, "response_type": "ephemeral"}

    def posts() -> list[dict[str, object]]:
        return [p.params for p in list(slack.webhook_log) if p.path == path]

    # the answer (the plan) replaces the placeholder once the simulator's market was searched
    wait_until(lambda: any(not p.get("delete_original") for p in posts()), what="the answer")
    [answer] = shown_to_user(WORKING, posts())
    with session_scope(deps.sessions) as session:
        [job] = session.scalars(select(JobRow)).all()
    assert job.state == "queued" and job.id in answer
    assert job.plan["offer"]["gpu_name"] in answer
    assert kicks.count == 1

    from slack_sdk import WebClient

    deliverer = SlackDeliverer(
        WebClient(token=BOT_TOKEN, base_url=slack.url), deps, post_interval_seconds=0.06
    )
    deadline = time.monotonic() + 10
    while True:
        deliverer.deliver_once()
        with session_scope(deps.sessions) as session:
            dirty = session.scalars(select(MessageRow).where(MessageRow.dirty.is_(True))).all()
        if not dirty:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    [card] = slack.top_level(job.channel)  # the job's live card is its top-level message
    assert job.id in card.text and "queued" in card.text
    assert job.plan["offer"]["gpu_name"] in card.text  # showing the plan until it rents
    assert not slack.thread(job.channel, card.ts)
