"""``/gpu train`` from a signed Slack request to a finished thread: the bot's HTTP app, a real
Celery worker on Redis, the simulator with real SSH, moto's S3 and the Slack Web API fake.
The command is acked at once with "Working on it…"; the plan comes through its response_url."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from werkzeug.test import Client

from bot.app import build_app
from bot.delivery import SlackDeliverer
from bot.http import make_wsgi_app
from bot.listeners import WORKING
from gpubot.deps import EngineDeps
from gpubot.settings import Settings
from gpubot.sim.server import SimServer
from tests.bot.conftest import (
    BOT_TOKEN,
    FORM,
    SIGNING_SECRET,
    command_body,
    shown_to_user,
    sign,
    wait_until,
)
from tests.fixtures.slack_fake import SlackFake
from tests.scenarios.conftest import drive


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackFake]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    fake = SlackFake(token=BOT_TOKEN, post_interval_seconds=0.05).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def slack_engine(engine: EngineDeps, slack: SlackFake) -> EngineDeps:
    engine.settings = Settings(
        **{
            **{k: v for k, v in engine.settings.model_dump().items() if v is not None},
            "slack_bot_token": BOT_TOKEN,
            "slack_signing_secret": SIGNING_SECRET,
            "slack_api_url": slack.url,
        }
    )
    return engine


def test_train_from_slack_answers_with_the_plan_and_its_thread_ends_with_results_and_cost(
    slack_engine: EngineDeps, sim: SimServer, slack: SlackFake, redis_worker: None
) -> None:
    from gpubot.db.engine import session_scope
    from gpubot.db.tables import JobRow
    from workers.tasks import reconcile_tick_task

    deps = slack_engine
    http = Client(make_wsgi_app(build_app(deps, settings=deps.settings), deps))
    path = "/webhook/slack-flow"
    body = command_body(
        "trainx steps=60 step_seconds=0.02",
        response_url=slack.webhook_url.split("/webhook/")[0] + path,
    )
    # when: the slash command arrives
    started = time.monotonic()
    response = http.post("/slack/events", data=body, headers={**FORM, **sign(body)})
    ack_seconds = time.monotonic() - started
    # then: acked within 3 s with the placeholder...
    assert response.status_code == 200 and ack_seconds < 3.0
    ack = json.loads(response.get_data(as_text=True))
    assert ack == {"text": WORKING, "response_type": "ephemeral"}

    def posts() -> list[dict[str, object]]:
        return [p.params for p in list(slack.webhook_log) if p.path == path]

    # ...which the plan then replaces, through the response_url
    wait_until(lambda: any(not p.get("delete_original") for p in posts()), what="the plan")
    [answer] = shown_to_user(WORKING, posts())
    assert "$" in answer and "/h" in answer
    with session_scope(deps.sessions) as session:
        [job] = session.query(JobRow).all()
        job_id = job.id
    assert job_id in answer
    # and: the worker runs it while the deliverer keeps the thread up to date
    deliverer = SlackDeliverer(
        WebClient(token=BOT_TOKEN, base_url=slack.url), deps, post_interval_seconds=0.05,
        card_update_interval_seconds=0.2,
    )

    def tick() -> None:
        reconcile_tick_task.delay()
        deliverer.deliver_once()

    final = drive(
        deps,
        job_id,
        until=lambda j: j.state in {"succeeded", "failed", "cancelled"},
        tick=tick,
        timeout_s=120,
    )
    assert final.state == "succeeded", final.reason
    deadline = time.monotonic() + 20
    while True:
        deliverer.deliver_once()
        [parent] = slack.top_level(job.channel)
        thread = slack.thread(job.channel, parent.ts)
        texts = [m.text for m in thread]
        if any("Final cost" in t for t in texts) and (
            "succeeded" in parent.text and len(parent.history) > 1
        ):
            break
        assert time.monotonic() < deadline, texts
        time.sleep(0.05)  # delivery pacing, bounded by the deadline
    assert job_id in parent.text
    card = parent  # the job's live card is its top-level message
    # posted at launch (the plan), then edited in place up to its final state
    assert "succeeded" in card.text and "succeeded" not in card.history[0]
    assert len(slack.calls_to("chat.update")) >= 2
    final_reply = next(t for t in texts if "Final cost" in t)
    assert "metrics.json" in final_reply and "X-Amz-Signature=" in final_reply
    assert not any(BOT_TOKEN in c.body for c in slack.calls)
