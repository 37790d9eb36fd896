"""Pacing shared by every deliverer: two SlackDeliverer instances (threads, each with its own
WebClient and Redis client, as two worker processes) drain one channel on PostgreSQL against
the Slack fake with its rate limits on (one post per channel per interval, HTTP 429 with
Retry-After otherwise: Slack's "Rate limits" page, special limit of chat.postMessage)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from slack_sdk import WebClient
from sqlalchemy import func, select

from bot.delivery import SlackDeliverer
from gpubot.config import BotConfig
from gpubot.db.engine import session_scope
from gpubot.db.tables import MessageRow
from gpubot.deps import EngineDeps
from gpubot.notify import outbox
from gpubot.pace import LocalSlots, RedisSlots, Slots, make_slots
from gpubot.settings import Settings
from tests.bot.conftest import BOT_TOKEN, SIGNING_SECRET, FixedOffersProvider, Kicks, MemoryStore
from tests.fixtures.postgres import fresh_database
from tests.fixtures.slack_fake import SlackFake
from tests.services_available import require_redis

CHANNEL = "CPACE0001"
INTERVAL_S = 0.1
JOBS = 12
REPLIES = 2


@pytest.fixture
def pg_url() -> Iterator[str]:
    """``postgresql+psycopg2://…/<fresh db>``; dropped afterwards."""
    with fresh_database("gpubot_pacing") as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    return require_redis()


@pytest.fixture
def pg_deps(
    tmp_path: Path, pg_url: str, config: BotConfig, provider: FixedOffersProvider
) -> Iterator[EngineDeps]:
    from gpubot.wiring import build_engine_deps

    settings = Settings(
        GPUBOT_HOME=tmp_path / "home",
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        GPUBOT_DATABASE_URL=pg_url,
    )
    deps = build_engine_deps(
        settings, config=config, provider=provider, store=MemoryStore(), enqueuer=Kicks()
    )
    yield deps
    deps.sessions.kw["bind"].dispose()


def _queue(deps: EngineDeps) -> None:
    """JOBS threads in one channel: a parent, a card and REPLIES replies each."""
    with session_scope(deps.sessions) as session:
        for i in range(JOBS):
            job_id = f"jp{i:04d}"
            outbox.post_parent(session, channel=CHANNEL, text=f"plan {job_id}", job_id=job_id)
            outbox.upsert_card(
                session, job_id=job_id, channel=CHANNEL, thread_key=job_id,
                text=f"card {job_id}",
            )
            for r in range(REPLIES):
                outbox.reply(session, channel=CHANNEL, thread_key=job_id, job_id=job_id,
                             text=f"reply {job_id} {r}")


def _dirty(deps: EngineDeps) -> int:
    with session_scope(deps.sessions) as session:
        return int(
            session.scalar(
                select(func.count()).select_from(MessageRow).where(MessageRow.dirty.is_(True))
            )
            or 0
        )


def _run_two(deps: EngineDeps, slack: SlackFake, make_slots_for: list[Slots]) -> None:
    """Both deliverers call deliver_once in a loop at once until the outbox is empty."""
    deliverers = [
        SlackDeliverer(
            WebClient(token=BOT_TOKEN, base_url=slack.url, timeout=5), deps,
            post_interval_seconds=INTERVAL_S, slots=slots,
        )
        for slots in make_slots_for
    ]
    errors: list[BaseException] = []
    deadline = time.monotonic() + 60

    def loop(deliverer: SlackDeliverer) -> None:
        try:
            while _dirty(deps) and time.monotonic() < deadline:
                deliverer.deliver_once()
                time.sleep(INTERVAL_S / 20)  # the next round (a beat tick), bounded above
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(d,)) for d in deliverers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not errors, errors
    assert _dirty(deps) == 0, "everything was delivered before the deadline"


def _assert_delivered_once_in_order(slack: SlackFake) -> None:
    top = slack.top_level(CHANNEL)
    assert sorted(m.text for m in top) == sorted(f"plan jp{i:04d}" for i in range(JOBS))
    for parent in top:
        job_id = parent.text.split()[1]
        thread = sorted(slack.thread(CHANNEL, parent.ts), key=lambda m: float(m.ts))
        expected = [f"card {job_id}"] + [f"reply {job_id} {r}" for r in range(REPLIES)]
        assert [m.text for m in thread] == expected, "each once, in the order queued"


def test_two_deliverers_on_redis_get_no_429s_and_lose_nothing(
    pg_deps: EngineDeps, redis_url: str
) -> None:
    slack = SlackFake(
        token=BOT_TOKEN, post_interval_seconds=INTERVAL_S, retry_after=0.5, rate_limiting=True
    ).start()
    try:
        _queue(pg_deps)
        prefix = f"test-slack-pace:{uuid.uuid4().hex}"
        _run_two(
            pg_deps, slack,
            [RedisSlots(redis.Redis.from_url(redis_url), key_prefix=prefix) for _ in range(2)],
        )
    finally:
        slack.stop()
    assert slack.rate_limited == [], "no 429s"
    _assert_delivered_once_in_order(slack)
    posts = [c.at for c in slack.calls_to("chat.postMessage")]
    assert len(posts) == JOBS * (2 + REPLIES)
    gaps = [b - a for a, b in zip(posts, posts[1:], strict=False)]
    assert min(gaps) >= INTERVAL_S


def test_a_429_closes_the_channel_for_every_deliverer(
    pg_deps: EngineDeps, redis_url: str
) -> None:
    """Slack answered 429 (Retry-After) to one deliverer: neither posts in that channel
    before Retry-After has passed."""
    slack = SlackFake(
        token=BOT_TOKEN, post_interval_seconds=INTERVAL_S, retry_after=0.6, rate_limiting=True
    ).start()
    try:
        _queue(pg_deps)
        slack.force_429("chat.postMessage", 2)
        prefix = f"test-slack-pace:{uuid.uuid4().hex}"
        _run_two(
            pg_deps, slack,
            [RedisSlots(redis.Redis.from_url(redis_url), key_prefix=prefix) for _ in range(2)],
        )
    finally:
        slack.stop()
    assert slack.rate_limited == ["chat.postMessage"] * 2, "only the forced ones"
    posts = slack.calls_to("chat.postMessage")
    for i, call in enumerate(posts):
        if call.status == 429 and i + 1 < len(posts):
            assert posts[i + 1].at - call.at >= slack.retry_after
    _assert_delivered_once_in_order(slack)


def test_deliverers_of_one_process_share_the_in_process_pace(pg_deps: EngineDeps) -> None:
    slack = SlackFake(
        token=BOT_TOKEN, post_interval_seconds=INTERVAL_S, rate_limiting=True
    ).start()
    try:
        _queue(pg_deps)
        shared = LocalSlots()
        _run_two(pg_deps, slack, [shared, shared])
    finally:
        slack.stop()
    assert slack.rate_limited == []
    _assert_delivered_once_in_order(slack)


def test_from_settings_paces_on_the_brokers_redis_without_naming_the_token(
    tmp_path: Path, deps: EngineDeps, redis_url: str
) -> None:
    settings = deps.settings.model_copy(update={"broker_url": redis_url})
    deliverer = SlackDeliverer.from_settings(settings, deps)
    assert isinstance(deliverer.slots, RedisSlots)
    assert BOT_TOKEN not in deliverer.slots.key_prefix
    local = SlackDeliverer.from_settings(deps.settings, deps)
    assert not isinstance(local.slots, RedisSlots)


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_settle_frees_a_held_key_after_the_call_and_keeps_a_later_defer(
    kind: str, redis_url: str
) -> None:
    slots: Slots = (
        LocalSlots()
        if kind == "local"
        else make_slots(redis_url, key_prefix=f"test-slots:{uuid.uuid4().hex}")
    )
    held = slots.reserve("post:C1", 30.0)
    assert held.reserved
    assert not slots.reserve("post:C1", 30.0).reserved, "held while the call is in flight"
    slots.settle("post:C1", held, 0.0)
    again = slots.reserve("post:C1", 5.0)
    assert again.reserved, "free right after settle(0)"
    slots.defer("post:C1", 20.0)  # a 429 seen meanwhile by another deliverer
    slots.settle("post:C1", again, 0.5)
    refused = slots.reserve("post:C1", 1.0)
    assert not refused.reserved and refused.wait_seconds > 19, "the later defer is kept"
