"""Queue mode (``gpubot serve``): the HTTP app acks and enqueues; a real Celery worker answers.

Signed requests go through the real WSGI front and Bolt app built as ``app.serve`` builds it
(``answers="queue"``, ``app.serve.answer_sender``); the answer tasks go through the Redis
server to a real worker (``celery.contrib.testing.worker.start_worker``, consuming only the
``answers`` queue) wired by ``app.worker``'s answerer factory, and the answers arrive at the
Slack fake's response_url. The market is gated, so "acked before the search" is checked
without timing anything.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import func, select
from werkzeug.test import Client

from bot.answers import ANSWER_ACTION_TASK, ANSWER_COMMAND_TASK
from bot.listeners import WORKING
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow
from gpubot.deps import EngineDeps
from gpubot.settings import Settings
from tests.bot.conftest import (
    ALICE,
    CHANNEL,
    OFFERS,
    GatedOffersProvider,
    action_body,
    all_jobs,
    command_body,
    post_signed,
    shown_to_user,
    wait_until,
    webhook_posts,
)
from tests.fixtures.slack_fake import SlackFake
from tests.services_available import require_redis


@pytest.fixture
def provider() -> GatedOffersProvider:  # type: ignore[override]
    return GatedOffersProvider(OFFERS, timeout_s=20.0)


class SpyAnswerer:
    """The composition root's answerer, recording the thread each answer ran on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.threads: list[str] = []

    def answer_command(self, **request: str) -> str:
        self.threads.append(threading.current_thread().name)
        return str(self.inner.answer_command(**request))

    def answer_action(self, **request: str) -> str:
        self.threads.append(threading.current_thread().name)
        return str(self.inner.answer_action(**request))


@pytest.fixture
def worker(deps: EngineDeps) -> Iterator[list[SpyAnswerer]]:
    """A real Celery worker (threads pool, 3) on the Redis server consuming ``answers``."""
    url = require_redis()
    import redis

    import app.worker as composition
    from workers import runtime
    from workers.celery_app import app, celery_config

    redis.Redis.from_url(url).flushdb()
    previous = dict(app.conf)
    app.conf.update(
        celery_config(Settings(GPUBOT_BROKER_URL=url, GPUBOT_HOME=str(deps.settings.home)))
    )
    spies: list[SpyAnswerer] = []

    def factory(engine_deps: EngineDeps) -> SpyAnswerer:
        spies.append(SpyAnswerer(composition.slack_answerer(engine_deps)))
        return spies[-1]

    runtime.install(deps)
    runtime.install_answerer_factory(factory)
    try:
        with start_worker(app, pool="threads", concurrency=3, queues=["answers"],
                          perform_ping_check=False, shutdown_timeout=30):
            yield spies
    finally:
        runtime.install_answerer_factory(composition.slack_answerer)
        app.conf.update(previous)
        # ``queues=["answers"]`` selected them on the app itself: a later worker in this
        # process would consume answers only. Select every declared queue again.
        app.amqp.queues.select(list(composition.WORKER_QUEUES))


@pytest.fixture
def queued_http(deps: EngineDeps) -> Client:
    from app.serve import answer_sender
    from bot.app import build_app
    from bot.http import make_wsgi_app
    from workers.celery_app import app as celery

    app = build_app(deps, settings=deps.settings, answers="queue", send_task=answer_sender(celery))
    return Client(make_wsgi_app(app, deps))





def test_train_and_offers_are_acked_at_once_and_answered_by_the_worker(
    worker: list[SpyAnswerer], queued_http: Client, deps: EngineDeps, slack: SlackFake,
    provider: GatedOffersProvider,
) -> None:
    base = slack.webhook_url.split("/webhook/")[0]
    train = command_body("train lr=2e-5", trigger="1.1.train", response_url=base + "/webhook/q/t")
    offers = command_body("offers gpu=4090", trigger="1.1.offers",
                          response_url=base + "/webhook/q/o")

    # searches still blocked
    acks = [post_signed(queued_http, train), post_signed(queued_http, offers)]

    for status, ack in acks:
        assert status == 200
        assert json.loads(ack) == {"text": WORKING, "response_type": "ephemeral"}
    assert webhook_posts(slack, "/webhook/q/t") == [] and all_jobs(deps) == []
    provider.gate.set()
    wait_until(
        lambda: webhook_posts(slack, "/webhook/q/t") and webhook_posts(slack, "/webhook/q/o"),
        what="both answers", timeout_s=30,
    )
    [job] = all_jobs(deps)
    [shown_train] = shown_to_user(WORKING, webhook_posts(slack, "/webhook/q/t"))
    [shown_offers] = shown_to_user(WORKING, webhook_posts(slack, "/webhook/q/o"))
    assert job.id in shown_train and "RTX 3090" in shown_train
    assert "RTX 4090" in shown_offers and WORKING not in shown_offers
    [spy] = worker
    assert len(spy.threads) == 2
    assert not any(name.startswith("gpubot-answer") for name in spy.threads)  # not the HTTP app


def test_a_redelivered_command_creates_one_job(
    worker: list[SpyAnswerer], queued_http: Client, deps: EngineDeps, slack: SlackFake,
    provider: GatedOffersProvider,
) -> None:
    path = "/webhook/q/retry"
    body = command_body("train lr=2e-5", trigger="777.888.retry",
                        response_url=slack.webhook_url.split("/webhook/")[0] + path)
    first = post_signed(queued_http, body)
    retry = post_signed(queued_http, body,
                  {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    again = post_signed(queued_http, body)
    assert [first[0], retry[0], again[0]] == [200, 200, 200]
    assert all(json.loads(a[1])["text"] == WORKING for a in (first, retry, again))
    provider.gate.set()
    wait_until(lambda: len(webhook_posts(slack, path)) >= 3, what="three answers", timeout_s=30)
    [job] = all_jobs(deps)
    with session_scope(deps.sessions) as session:
        launches = session.scalar(
            select(func.count()).select_from(AuditEventRow).where(AuditEventRow.action == "launch")
        )
    assert launches == 1
    texts = [str(p.get("text", "")) for p in webhook_posts(slack, path)]
    assert all(job.id in t for t in texts)
    assert sum("Already handled" in t for t in texts) == 2


def test_an_unreachable_broker_still_gets_the_command_answered_in_process(
    deps: EngineDeps, slack: SlackFake, provider: GatedOffersProvider
) -> None:
    from bot.app import build_app
    from bot.http import make_wsgi_app

    sent: list[str] = []

    def broken(name: str, kwargs: dict[str, str]) -> None:
        sent.append(name)
        raise ConnectionError("broker down")

    http = Client(make_wsgi_app(
        build_app(deps, settings=deps.settings, answers="queue", send_task=broken), deps
    ))
    path = "/webhook/q/nobroker"
    body = command_body("help", response_url=slack.webhook_url.split("/webhook/")[0] + path)
    status, ack = post_signed(http, body)
    assert status == 200 and json.loads(ack)["text"] == WORKING
    wait_until(lambda: bool(webhook_posts(slack, path)), what="the in-process answer")
    assert sent == [ANSWER_COMMAND_TASK]
    [shown] = shown_to_user(WORKING, webhook_posts(slack, path))
    assert shown and WORKING not in shown


def test_task_names_the_bot_sends_are_the_worker_tasks_on_the_answers_queue() -> None:
    from app.serve import answer_sender  # noqa: F401 - the composition root imports cleanly
    from app.worker import WORKER_QUEUES
    from workers.tasks import ANSWERS_QUEUE, answer_action_task, answer_command_task

    assert answer_command_task.name == ANSWER_COMMAND_TASK
    assert answer_action_task.name == ANSWER_ACTION_TASK
    assert ANSWERS_QUEUE == "answers"
    assert ANSWERS_QUEUE in WORKER_QUEUES and "celery" in WORKER_QUEUES


def test_the_worker_tasks_take_every_field_the_bot_enqueues() -> None:
    """A request the ack enqueues must bind to the task's signature, or the worker drops it
    with a TypeError: message clicks, App Home clicks and commands alike."""
    import inspect
    import json as _json
    from urllib.parse import unquote

    from bot.answers import action_request, command_request
    from workers.tasks import answer_action_task, answer_command_task

    for body in (action_body("job.cancel", "j-1", user=ALICE),
                 action_body("job.cancel", "j-1", user=ALICE, from_home=True)):
        payload = _json.loads(unquote(body.removeprefix("payload=")))
        request = action_request(payload, payload["actions"][0])
        inspect.signature(answer_action_task.run).bind(**request)
    command = {"text": "help", "user_id": ALICE, "channel_id": CHANNEL, "team_id": "T0FAKE",
               "trigger_id": "1.2.3", "response_url": "http://127.0.0.1:9/hook"}
    inspect.signature(answer_command_task.run).bind(**command_request(command))


def test_the_publisher_waits_for_the_acks_in_flight_then_publishes_everything_pending() -> None:
    from bot.ack_gate import AckGate
    from bot.answers import Publisher

    gate = AckGate()
    sent: list[tuple[str, dict[str, str]]] = []
    failed: list[str] = []
    publisher = Publisher(lambda name, kwargs: sent.append((name, kwargs)),
                          lambda name, kwargs: failed.append(name), gate=gate)
    gate.enter()  # a request is being acked
    publisher.submit(ANSWER_COMMAND_TASK, {"text": "a"})
    publisher.submit(ANSWER_ACTION_TASK, {"value": "b"})
    assert not gate.wait_idle(0.2) and sent == []
    gate.leave()
    wait_until(lambda: len(sent) == 2, what="both published")
    assert [name for name, _ in sent] == [ANSWER_COMMAND_TASK, ANSWER_ACTION_TASK]
    publisher.close()
    assert failed == []


def test_wait_quiet_waits_out_the_gaps_between_a_bursts_requests() -> None:
    import time

    from bot.ack_gate import AckGate

    gate = AckGate()
    gate.enter()
    gate.leave()  # idle now, but a request left just now
    began = time.monotonic()
    assert gate.wait_quiet(quiet_s=0.2, max_wait_s=2.0)
    assert time.monotonic() - began >= 0.19
    gate.enter()
    assert not gate.wait_quiet(quiet_s=0.01, max_wait_s=0.1)  # in flight the whole time
    gate.leave()
