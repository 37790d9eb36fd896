"""Client-side pacing of vast.ai endpoints: in-process, through a real Redis server, and over
real HTTP against the simulator's enforced minimum intervals."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from gpubot.errors import ConfigError, RateLimitedError, TransientProviderError
from gpubot.pace import waiting_at_most
from gpubot.providers.vastai import VastAIProvider
from gpubot.providers.vastai.pace import LocalPace, Pace, RedisPace, make_pace
from gpubot.sim.server import SimServer
from tests.fixtures.sim import running_sim
from tests.services_available import require_redis

INTERVAL_S = 0.15
CALLERS = 6
KEY = "sk-gpubot-pace-test"


def _calls_of_concurrent_turns(
    make: Callable[[], Pace], endpoint: str, call_s: Callable[[], float]
) -> list[tuple[float, float]]:
    """Each of CALLERS threads (own pace object, as separate workers) makes one "call" of
    ``call_s()`` seconds inside its turn. Returns every call's (start, end), by start."""
    calls: list[tuple[float, float]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CALLERS)
    errors: list[BaseException] = []

    def caller() -> None:
        pace = make()
        duration = call_s()
        barrier.wait()
        try:
            with pace.turn(endpoint):
                start = time.monotonic()
                time.sleep(duration)  # the call in flight
                end = time.monotonic()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            return
        with lock:
            calls.append((start, end))

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return sorted(calls)


def _assert_spaced_from_the_end(calls: list[tuple[float, float]]) -> None:
    """No two calls overlap, and each starts at least one interval after the previous call
    ENDED (a sleep never returns early; a late wake-up only delays a turn, so this holds under
    any load)."""
    assert len(calls) == CALLERS
    for (_, previous_end), (start, _) in zip(calls, calls[1:], strict=False):
        assert start - previous_end >= INTERVAL_S - 0.002, calls


def _uneven_calls() -> float:
    """Calls that take from nothing to most of an interval: a pace measured from the turn's
    start would let the next call in too early after a long one."""
    return random.choice([0.0, 0.01, 0.1])


def test_local_pace_spaces_concurrent_calls_from_the_end_of_the_previous_call() -> None:
    shared = LocalPace({"create": INTERVAL_S}, max_wait_seconds=10.0)
    _assert_spaced_from_the_end(
        _calls_of_concurrent_turns(lambda: shared, "create", _uneven_calls)
    )


def test_endpoints_have_their_own_pace() -> None:
    pace = LocalPace({"create": 5.0, "search": 5.0}, max_wait_seconds=1.0)
    with pace.turn("create"):
        pass
    with pace.turn("search"):  # not delayed by create's 5 s
        pass
    with pytest.raises(RateLimitedError) as info, pace.turn("create"):
        pass
    assert isinstance(info.value, TransientProviderError)
    assert info.value.retry_after_seconds == pytest.approx(5.0, abs=0.2)


def test_unknown_endpoint_paces_as_other_and_defer_pushes_out() -> None:
    pace = LocalPace({"other": 0.0}, max_wait_seconds=1.0)
    with pace.turn("show instance"):
        pass
    with pace.turn("show instance"):
        pass
    assert pace.defer("attach", 30.0) == 30.0
    with pytest.raises(RateLimitedError) as info, pace.turn("whatever"):
        pass
    assert info.value.retry_after_seconds == pytest.approx(30.0, abs=0.5)


def test_defer_without_a_wait_rests_the_endpoint_for_its_interval() -> None:
    """vast's 429 names no Retry-After: the endpoint rests its configured interval."""
    pace = LocalPace({"destroy": 3.0}, max_wait_seconds=0.5)
    assert pace.defer("destroy") == 3.0
    with pytest.raises(RateLimitedError) as info, pace.turn("destroy"):
        pass
    assert info.value.retry_after_seconds == pytest.approx(3.0, abs=0.2)


def test_a_turn_is_held_during_the_call_and_frees_one_interval_after_it() -> None:
    pace = LocalPace({"list": 0.2}, max_wait_seconds=5.0)
    in_call = threading.Event()
    release = threading.Event()

    def long_call() -> None:
        with pace.turn("list"):
            in_call.set()
            release.wait(10)

    holder = threading.Thread(target=long_call)
    holder.start()
    assert in_call.wait(10)
    # a caller that may not wait (the tick) is refused at once while the call is in flight,
    # and told to come back no sooner than one interval
    with pytest.raises(RateLimitedError) as info, waiting_at_most(0), pace.turn("list"):
        pass
    assert info.value.retry_after_seconds == pytest.approx(0.2)
    assert "in flight" in str(info.value)
    # a step (bounded wait) gets the turn one interval after the call returned
    released_at = [0.0]

    def finish() -> None:
        time.sleep(0.3)  # the call in flight lasts longer than an interval
        released_at[0] = time.monotonic()
        release.set()

    finisher = threading.Thread(target=finish)
    finisher.start()
    with pace.turn("list"):
        started = time.monotonic()
    finisher.join()
    holder.join()
    assert started - released_at[0] >= 0.2 - 0.002


def test_a_failed_call_still_frees_its_turn_one_interval_later() -> None:
    pace = LocalPace({"create": 0.1}, max_wait_seconds=2.0)
    with pytest.raises(RuntimeError), pace.turn("create"):
        raise RuntimeError("boom")
    with pytest.raises(RateLimitedError), waiting_at_most(0), pace.turn("create"):
        pass
    t0 = time.monotonic()
    with pace.turn("create"):
        pass
    assert time.monotonic() - t0 < 1.0


def test_waiting_at_most_bounds_the_wait_and_nests_to_the_smaller() -> None:
    pace = LocalPace({"search": 0.5}, max_wait_seconds=5.0)
    with pace.turn("search"):
        pass
    with waiting_at_most(10), waiting_at_most(0.1), pytest.raises(RateLimitedError) as info:
        with pace.turn("search"):
            pass
    assert 0.3 <= (info.value.retry_after_seconds or 0) <= 0.5
    with pace.turn("search"):  # outside the block: the pace's own bound, 5 s
        pass


def test_bad_intervals_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        LocalPace({"nope": 1.0})
    with pytest.raises(ConfigError):
        LocalPace({"create": -1.0})


@pytest.fixture
def redis_url() -> str:
    return require_redis()


def test_redis_pace_spaces_calls_of_separate_clients(redis_url: str) -> None:
    """Each caller has its own Redis client and pace object, as separate worker processes."""
    prefix = f"test-pace:{uuid.uuid4().hex}"

    def make() -> Pace:
        return RedisPace(
            redis.Redis.from_url(redis_url),
            {"list": INTERVAL_S},
            key_prefix=prefix,
            max_wait_seconds=10.0,
        )

    _assert_spaced_from_the_end(_calls_of_concurrent_turns(make, "list", _uneven_calls))


def test_redis_pace_refuses_a_far_turn_without_reserving(redis_url: str) -> None:
    prefix = f"test-pace:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)
    pace = RedisPace(client, {"create": 3.0}, key_prefix=prefix, max_wait_seconds=1.0)
    with pace.turn("create"):
        assert client.exists(f"{prefix}:create:held"), "held during the call"
    assert not client.exists(f"{prefix}:create:held"), "freed when the call returned"
    before = client.get(f"{prefix}:create")
    with pytest.raises(RateLimitedError) as info, pace.turn("create"):
        pass
    assert 2.0 <= (info.value.retry_after_seconds or 0) <= 3.0
    assert client.get(f"{prefix}:create") == before, "a refused turn reserves nothing"
    assert client.pttl(f"{prefix}:create") > 0, "keys expire"
    pace.defer("destroy", 20.0)
    with pytest.raises(RateLimitedError), pace.turn("destroy"):
        pass


def test_redis_hold_of_a_dead_caller_ends_by_itself(redis_url: str) -> None:
    """A worker killed mid-call never settles: the endpoint frees when its hold passes."""
    prefix = f"test-pace:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)
    pace = RedisPace(
        client, {"list": 0.05}, key_prefix=prefix, max_wait_seconds=0.0, hold_seconds=0.3
    )
    turn = pace.turn("list")
    turn.__enter__()  # and never left: the holder died
    with pytest.raises(RateLimitedError) as info, pace.turn("list"):
        pass
    assert "in flight" in str(info.value)
    patient = RedisPace(
        client, {"list": 0.05}, key_prefix=prefix, max_wait_seconds=2.0, hold_seconds=0.3
    )
    t0 = time.monotonic()
    with patient.turn("list"):
        pass
    assert 0.1 <= time.monotonic() - t0 < 1.5


def test_make_pace_picks_redis_for_a_redis_broker(redis_url: str) -> None:
    assert isinstance(make_pace(redis_url), RedisPace)
    assert isinstance(make_pace(None), LocalPace)
    assert isinstance(make_pace("filesystem://"), LocalPace)


# -- over HTTP: the simulator enforcing minimum intervals --------------------------------------


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimServer]:
    with running_sim(tmp_path, monkeypatch, seed=5, speed=1.0, api_key=KEY) as server:
        yield server


def test_workers_at_the_simulators_exact_interval_never_break_it(
    sim: SimServer, redis_url: str
) -> None:
    """Providers of separate "workers" sharing a Redis pace set to EXACTLY the simulator's
    minimum interval: since each call's successor leaves one interval after the call
    returned, the simulator counts no violation, whatever the request's own latency."""
    sim.control.configure(rate_limits_real_s={"list": 0.2}, rate_limit_enforce=True)
    sim.control.reset_rate_limits()
    prefix = f"test-pace:{uuid.uuid4().hex}"
    errors: list[BaseException] = []
    done = [0]
    lock = threading.Lock()

    def worker() -> None:
        pace = RedisPace(
            redis.Redis.from_url(redis_url), {"list": 0.2}, key_prefix=prefix,
            max_wait_seconds=30.0,
        )
        provider = VastAIProvider(api_key=KEY, server_url=sim.url, retry_attempts=1, pace=pace)
        try:
            for _ in range(3):
                provider.list_instances()
                with lock:
                    done[0] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert done[0] == 12
    limits = sim.control.rate_limits()
    assert limits["calls"]["list"] == 12, limits
    assert limits["violations"].get("list", 0) == 0, limits


class TooFrequent:
    """A vast-like server whose every answer is its bare rate-limit 429: plain text, no
    ``Retry-After``, no threshold (vast docs: "API requests too frequent")."""

    def __init__(self) -> None:
        self.requests = 0
        self._http = make_server("127.0.0.1", 0, self)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.requests += 1
        response = Response("API requests too frequent", status=429)
        response.headers["Content-Type"] = "text/plain"
        return response(environ, start_response)

    def __enter__(self) -> str:
        self._thread.start()
        return f"http://127.0.0.1:{self._http.server_port}"

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._thread.join(timeout=5)


def test_a_429_without_retry_after_rests_the_endpoint_for_its_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    pace = LocalPace({"list": 4.0}, max_wait_seconds=0.5)
    server = TooFrequent()
    with server as url:
        provider = VastAIProvider(api_key=KEY, server_url=url, retry_attempts=1, pace=pace)
        with pytest.raises(RateLimitedError) as first:
            provider.list_instances()
        assert first.value.retry_after_seconds == 4.0
        with pytest.raises(RateLimitedError) as second:
            provider.list_instances()  # refused locally: nothing sent
    assert server.requests == 1
    assert second.value.__cause__ is None
    assert 3.0 <= (second.value.retry_after_seconds or 0) <= 4.0


def test_a_429_naming_a_threshold_rests_the_endpoint_that_long(sim: SimServer) -> None:
    """A wait named by vast outlasts the endpoint's own (shorter) interval."""
    pace = LocalPace({"list": 0.2}, max_wait_seconds=0.5)
    provider = VastAIProvider(api_key=KEY, server_url=sim.url, retry_attempts=1, pace=pace)
    sim.control.inject("GET", r"/instances", 429, count=1, json_body=False)
    with pytest.raises(RateLimitedError) as first:
        provider.list_instances()
    assert first.value.retry_after_seconds == 1.0  # "endpoint threshold=1.0"
    with pytest.raises(RateLimitedError) as second:
        provider.list_instances()
    assert second.value.__cause__ is None
    assert 0.5 <= (second.value.retry_after_seconds or 0) <= 1.0
