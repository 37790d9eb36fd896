"""A slash command against the vast.ai simulator over real HTTP (through the real adapter)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import select
from werkzeug.test import Client

from bot.app import build_app
from bot.delivery import SlackDeliverer
from bot.http import make_wsgi_app
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
    sign,
)
from tests.fixtures.slack_fake import SlackFake


def test_train_on_the_simulator_market_acks_in_time_and_posts_its_thread(
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
    body = command_body("train lr=2e-5 max_price=$1.50")
    started = time.monotonic()
    response = http.post("/slack/events", data=body, headers={**FORM, **sign(body)})
    assert time.monotonic() - started < 3.0
    assert response.status_code == 200
    ack = json.loads(response.get_data(as_text=True))
    with session_scope(deps.sessions) as session:
        [job] = session.scalars(select(JobRow)).all()
    assert job.state == "queued" and job.id in ack["text"]
    assert job.plan["offer"]["gpu_name"] in ack["text"]
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
    [parent] = slack.top_level(job.channel)
    assert job.id in parent.text
    [card] = slack.thread(job.channel, parent.ts)
    assert "queued" in card.text
