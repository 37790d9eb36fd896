"""Client-side pacing of vast.ai calls: a minimum interval per endpoint, shared by every worker.

Why: vast limits each endpoint by a *minimum time between calls* per API key (vast docs,
``rate-limits-and-errors.mdx``: "API requests too frequent endpoint threshold=4.5") and sends no
``Retry-After``; the vastai 1.9.1 SDK then retries 429s only 3 times with a 0.15 s x 1.5 backoff
(``vastai/api/client.py``, about 1.2 s in all) and never retries ``search_quota_exceeded``.
Several workers sharing one key must therefore take turns *before* calling.

The pace hands out turns ("slots"): each :meth:`Pace.turn` reserves the next free slot of the
endpoint (no earlier than now, at least ``interval`` after the previous slot) and waits until it.
A slot further away than ``max_wait_seconds`` is not reserved: :class:`RateLimitedError` is
raised instead, so a tick is never held for long (the engine retries on a later tick without
counting it as a failure). :meth:`Pace.defer` pushes the endpoint's next slot out after vast
answered 429 anyway.

- :class:`LocalPace`: one process (the embedded default broker runs one worker process).
- :class:`RedisPace`: every process sharing a Redis server (the broker's), atomic in one Lua
  script on the server's own clock (``TIME``), so worker clocks do not matter.

Both are turns on the shared slot mechanism :mod:`gpubot.pace` (also used for Slack delivery).

Endpoints are the names in :data:`DEFAULT_INTERVALS_SECONDS`; unknown names pace as ``other``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from gpubot.errors import ConfigError, RateLimitedError
from gpubot.pace import LocalSlots, RedisSlots, Slots, is_redis_url

ENDPOINTS = ("create", "destroy", "list", "search", "other")
DEFAULT_INTERVALS_SECONDS: Mapping[str, float] = MappingProxyType(
    {"create": 2.0, "destroy": 1.0, "list": 1.0, "search": 1.0, "other": 0.5}
)
"""Below vast's published examples for some endpoints (create 4.5 s, destroy 3 s): those are
per-key thresholds of single calls, not contracts; a 429 still defers the endpoint."""
DEFAULT_MAX_WAIT_SECONDS = 10.0


class Pace(Protocol):
    """Takes turns on vast endpoints."""

    def turn(self, endpoint: str) -> None:
        """Wait for this caller's slot on ``endpoint``; return when the call may be sent.

        Raises:
            RateLimitedError: the next free slot is more than ``max_wait_seconds`` away
                (nothing was reserved); ``retry_after_seconds`` says when to try again.
        """
        ...

    def defer(self, endpoint: str, seconds: float) -> None:
        """No slot on ``endpoint`` before ``seconds`` from now (vast answered 429)."""
        ...


def _intervals(intervals: Mapping[str, float] | None) -> dict[str, float]:
    merged = dict(DEFAULT_INTERVALS_SECONDS)
    for name, seconds in (intervals or {}).items():
        if name not in ENDPOINTS:
            raise ConfigError(f"unknown vast endpoint {name!r} (one of {', '.join(ENDPOINTS)})")
        if not 0 <= float(seconds) <= 600:
            raise ConfigError(f"pace for {name} must be 0-600 seconds, not {seconds}")
        merged[name] = float(seconds)
    return merged


class _BasePace:
    """Turns on top of :class:`gpubot.pace.Slots` (one slot key per endpoint)."""

    def __init__(
        self,
        slots: Slots,
        intervals: Mapping[str, float] | None,
        max_wait_seconds: float,
        sleep: Callable[[float], None],
    ) -> None:
        self.slots = slots
        self.intervals = _intervals(intervals)
        self.max_wait_seconds = float(max_wait_seconds)
        self._sleep = sleep

    def _endpoint(self, endpoint: str) -> str:
        return endpoint if endpoint in self.intervals else "other"

    def turn(self, endpoint: str) -> None:
        name = self._endpoint(endpoint)
        slot = self.slots.reserve(
            name, self.intervals[name], max_wait_seconds=self.max_wait_seconds
        )
        if not slot.reserved:
            raise RateLimitedError(
                f"vast.ai {name} calls are paced: next turn in {slot.wait_seconds:.1f} s",
                retry_after_seconds=slot.wait_seconds,
            )
        if slot.wait_seconds > 0:
            self._sleep(slot.wait_seconds)  # pacing an outgoing call, not waiting for state

    def defer(self, endpoint: str, seconds: float) -> None:
        self.slots.defer(self._endpoint(endpoint), seconds)


class LocalPace(_BasePace):
    """In-process pace (threads of one process), on ``time.monotonic``."""

    def __init__(
        self,
        intervals: Mapping[str, float] | None = None,
        *,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(LocalSlots(clock=clock), intervals, max_wait_seconds, sleep)


class RedisPace(_BasePace):
    """Pace shared through Redis: one ``<prefix>:<endpoint>`` key per endpoint holding the
    next free slot (epoch ms on the Redis server's clock); expires a minute after it passes."""

    def __init__(
        self,
        client: Any,
        intervals: Mapping[str, float] | None = None,
        *,
        key_prefix: str = "gpubot:vast-pace",
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``client`` is a ``redis.Redis``; ``key_prefix`` should name the API key's account
        (never the key itself) when several accounts share a server."""
        super().__init__(
            RedisSlots(client, key_prefix=key_prefix), intervals, max_wait_seconds, sleep
        )
        self.key_prefix = key_prefix


def make_pace(
    broker_url: str | None,
    intervals: Mapping[str, float] | None = None,
    *,
    identity: str = "default",
    max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
) -> Pace:
    """A :class:`RedisPace` on the broker's Redis when ``broker_url`` is ``redis://`` or
    ``rediss://``, else a :class:`LocalPace` (the embedded broker: one worker process).

    ``identity`` names the vast account (``VastAIProvider.pace_identity``, a hash): callers
    with the same identity share turns; other accounts on the same Redis do not."""
    if is_redis_url(broker_url):
        import redis

        return RedisPace(
            redis.Redis.from_url(broker_url),
            intervals,
            key_prefix=f"gpubot:vast-pace:{identity}",
            max_wait_seconds=max_wait_seconds,
        )
    return LocalPace(intervals, max_wait_seconds=max_wait_seconds)
