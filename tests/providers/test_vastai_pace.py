"""Client-side pacing of vast.ai endpoints: in-process and through a real Redis server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
import redis

from gpubot.errors import ConfigError, RateLimitedError, TransientProviderError
from gpubot.providers.vastai.pace import LocalPace, Pace, RedisPace, make_pace
from tests.services_available import require_redis

INTERVAL_S = 0.15
CALLERS = 6


def _stamps_of_concurrent_turns(make: Callable[[], Pace], endpoint: str) -> list[float]:
    """Each of CALLERS threads (own pace object, as separate workers) takes one turn.

    Returns when each turn was granted, relative to the moment all callers were released.
    """
    stamps: list[float] = []
    lock = threading.Lock()
    released: list[float] = []
    barrier = threading.Barrier(CALLERS, action=lambda: released.append(time.monotonic()))
    errors: list[BaseException] = []

    def caller() -> None:
        pace = make()
        barrier.wait()
        try:
            pace.turn(endpoint)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            return
        with lock:
            stamps.append(time.monotonic())

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return sorted(t - released[0] for t in stamps)


def _assert_paced(stamps: list[float]) -> None:
    """The k-th turn comes no earlier than k intervals after the release. (A sleep never
    returns early; a late wake-up only delays a turn, so this holds under any load.)"""
    assert len(stamps) == CALLERS
    for k, stamp in enumerate(stamps):
        assert stamp >= k * INTERVAL_S - 0.005, (k, stamps)


def test_local_pace_spaces_concurrent_callers() -> None:
    shared = LocalPace({"create": INTERVAL_S})
    _assert_paced(_stamps_of_concurrent_turns(lambda: shared, "create"))


def test_endpoints_have_their_own_pace() -> None:
    pace = LocalPace({"create": 5.0, "search": 5.0}, max_wait_seconds=1.0)
    pace.turn("create")
    pace.turn("search")  # not delayed by create's 5 s
    with pytest.raises(RateLimitedError) as info:
        pace.turn("create")
    assert isinstance(info.value, TransientProviderError)
    assert info.value.retry_after_seconds == pytest.approx(5.0, abs=0.2)


def test_unknown_endpoint_paces_as_other_and_defer_pushes_out() -> None:
    pace = LocalPace({"other": 0.0}, max_wait_seconds=1.0)
    pace.turn("show instance")
    pace.turn("show instance")
    pace.defer("attach", 30.0)
    with pytest.raises(RateLimitedError) as info:
        pace.turn("whatever")
    assert info.value.retry_after_seconds == pytest.approx(30.0, abs=0.5)


def test_bad_intervals_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        LocalPace({"nope": 1.0})
    with pytest.raises(ConfigError):
        LocalPace({"create": -1.0})


@pytest.fixture
def redis_url() -> str:
    return require_redis()


def test_redis_pace_spaces_callers_of_separate_clients(redis_url: str) -> None:
    """Each caller has its own Redis client and pace object, as separate worker processes."""
    prefix = f"test-pace:{uuid.uuid4().hex}"

    def make() -> Pace:
        return RedisPace(redis.Redis.from_url(redis_url), {"list": INTERVAL_S}, key_prefix=prefix)

    _assert_paced(_stamps_of_concurrent_turns(make, "list"))


def test_redis_pace_refuses_a_far_slot_without_reserving(redis_url: str) -> None:
    prefix = f"test-pace:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)
    pace = RedisPace(client, {"create": 3.0}, key_prefix=prefix, max_wait_seconds=1.0)
    pace.turn("create")
    before = client.get(f"{prefix}:create")
    with pytest.raises(RateLimitedError) as info:
        pace.turn("create")
    assert 2.0 <= (info.value.retry_after_seconds or 0) <= 3.0
    assert client.get(f"{prefix}:create") == before, "a refused turn reserves nothing"
    assert client.pttl(f"{prefix}:create") > 0, "keys expire"
    pace.defer("destroy", 20.0)
    with pytest.raises(RateLimitedError):
        pace.turn("destroy")


def test_make_pace_picks_redis_for_a_redis_broker(redis_url: str) -> None:
    assert isinstance(make_pace(redis_url), RedisPace)
    assert isinstance(make_pace(None), LocalPace)
    assert isinstance(make_pace("filesystem://"), LocalPace)
