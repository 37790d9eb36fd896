"""Client-side pacing of vast.ai calls: a minimum interval per endpoint, shared by every worker.

Why: vast limits each endpoint by a *minimum time between calls* per API key (vast docs,
``rate-limits-and-errors.mdx``: "API requests too frequent endpoint threshold=4.5") and sends no
``Retry-After``; the vastai 1.9.1 SDK then retries 429s only 3 times with a 0.15 s x 1.5 backoff
(``vastai/api/client.py``, about 1.2 s in all) and never retries ``search_quota_exceeded``.
Several workers sharing one key must therefore take turns *before* calling.

The pace hands out turns, one call each: ``with pace.turn("create"): send()``. A turn is
taken when the endpoint is free: no call of it in flight (a turn is *held* during its call) and
``interval`` seconds passed since the previous call *returned*. Spacing is measured from the end
of the previous call, not from when it was allowed to start, so however late a request leaves
(network, GIL, a busy worker) and however long it takes, vast never sees two calls of an
endpoint closer than the interval. A holder that dies mid-call frees the endpoint when
``hold_seconds`` pass.

Nobody waits long for a turn: a turn more than ``max_wait_seconds`` away (and, inside
:func:`gpubot.pace.waiting_at_most`, more than that bound; the reconcile tick lists only if
the list turn is free now) is not taken: :class:`RateLimitedError` is raised with
``retry_after_seconds`` = when the turn should come, and the engine makes the job due again
then without counting an error. While another call holds the endpoint the caller polls the
hold briefly (within its bound). :meth:`Pace.defer` pushes the endpoint's next turn out after
vast answered 429 anyway (by the endpoint's interval when vast named no wait).

- :class:`LocalPace`: one process (the embedded default broker runs one worker process).
- :class:`RedisPace`: every process sharing a Redis server (the broker's), atomic in one Lua
  script on the server's own clock (``TIME``), so worker clocks do not matter.

Both are turns on the shared slot mechanism :mod:`gpubot.pace` (also used for Slack delivery).

Endpoints are the names in :data:`DEFAULT_INTERVALS_SECONDS`; unknown names pace as ``other``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from types import MappingProxyType
from typing import Any, Protocol

from gpubot.errors import ConfigError, RateLimitedError
from gpubot.pace import LocalSlots, RedisSlots, Slot, Slots, is_redis_url, wait_limit

ENDPOINTS = ("create", "destroy", "list", "search", "other")
DEFAULT_INTERVALS_SECONDS: Mapping[str, float] = MappingProxyType(
    {"create": 2.0, "destroy": 1.0, "list": 1.0, "search": 1.0, "other": 0.5}
)
"""Below vast's published examples for some endpoints (create 4.5 s, destroy 3 s): those are
per-key thresholds of single calls, not contracts; a 429 still defers the endpoint."""
DEFAULT_MAX_WAIT_SECONDS = 2.0
"""The longest a caller (a job step on a worker) waits for a turn; a turn further away is
refused (RateLimitedError) so the worker goes on with other jobs."""
DEFAULT_HOLD_SECONDS = 45.0
"""The longest one call holds its endpoint: above the provider's 30 s request timeout, so only
a holder that died mid-call (or a call retried through several timeouts) is outlived."""
HOLD_POLL_SECONDS = 0.05
"""How often a caller looks again while another call holds the endpoint (within its bound)."""


class Pace(Protocol):
    """Takes turns on vast endpoints."""

    def turn(self, endpoint: str) -> AbstractContextManager[None]:
        """The turn for one call on ``endpoint``: ``with pace.turn(endpoint): send()``.

        Entering waits (at most ``max_wait_seconds``, less inside
        :func:`gpubot.pace.waiting_at_most`) until no call of the endpoint is in flight and
        its interval has passed since the previous call returned; the block holds the
        endpoint; leaving frees it one interval later (an exception in the block too).

        Raises (on entering; nothing was taken or sent):
            RateLimitedError: the turn is further away than the bound;
                ``retry_after_seconds`` says when to try again (when another call still holds
                the endpoint: its interval, the earliest the turn can come).
        """
        ...

    def defer(self, endpoint: str, seconds: float | None = None) -> float:
        """No turn on ``endpoint`` before ``seconds`` from now (vast answered 429; None: the
        endpoint's interval, vast named no wait). A later turn is kept. Returns the seconds
        used."""
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
        clock: Callable[[], float] = time.monotonic,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
    ) -> None:
        self.slots = slots
        self.intervals = _intervals(intervals)
        self.max_wait_seconds = float(max_wait_seconds)
        self.hold_seconds = float(hold_seconds)
        self._sleep = sleep
        self._clock = clock

    def _endpoint(self, endpoint: str) -> str:
        return endpoint if endpoint in self.intervals else "other"

    @contextmanager
    def turn(self, endpoint: str) -> Iterator[None]:
        name = self._endpoint(endpoint)
        interval = self.intervals[name]
        slot = self._take(name, interval)
        try:
            if slot.wait_seconds > 0:
                self._sleep(slot.wait_seconds)  # pacing an outgoing call, not waiting for state
            yield
        finally:
            self.slots.settle(name, slot, interval)

    def _take(self, name: str, interval: float) -> Slot:
        """Reserve and hold the endpoint's next turn within the wait bound, or raise."""
        bound = wait_limit(self.max_wait_seconds)
        deadline = self._clock() + bound
        while True:
            left = max(0.0, min(bound, deadline - self._clock()))
            slot = self.slots.reserve(
                name, max(self.hold_seconds, interval), max_wait_seconds=left, held=True
            )
            if slot.reserved:
                return slot
            if slot.held and left > 0:
                # Another call is in flight; it frees the endpoint one interval after it
                # returns, which may still be within our bound.
                self._sleep(min(HOLD_POLL_SECONDS, left))
                continue
            retry = interval if slot.held else slot.wait_seconds
            why = "a call is in flight" if slot.held else f"next turn in {retry:.1f} s"
            raise RateLimitedError(
                f"vast.ai {name} calls are paced: {why}", retry_after_seconds=retry
            )

    def defer(self, endpoint: str, seconds: float | None = None) -> float:
        name = self._endpoint(endpoint)
        rest = self.intervals[name] if seconds is None else max(0.0, float(seconds))
        self.slots.defer(name, rest)
        return rest


class LocalPace(_BasePace):
    """In-process pace (threads of one process), on ``time.monotonic``."""

    def __init__(
        self,
        intervals: Mapping[str, float] | None = None,
        *,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
    ) -> None:
        super().__init__(
            LocalSlots(clock=clock), intervals, max_wait_seconds, sleep, clock, hold_seconds
        )


class RedisPace(_BasePace):
    """Pace shared through Redis: one ``<prefix>:<endpoint>`` key per endpoint holding the
    next free slot (epoch ms on the Redis server's clock; expires a minute after it passes),
    and ``<prefix>:<endpoint>:held`` while a call holds the endpoint."""

    def __init__(
        self,
        client: Any,
        intervals: Mapping[str, float] | None = None,
        *,
        key_prefix: str = "gpubot:vast-pace",
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
    ) -> None:
        """``client`` is a ``redis.Redis``; ``key_prefix`` should name the API key's account
        (never the key itself) when several accounts share a server."""
        super().__init__(
            RedisSlots(client, key_prefix=key_prefix),
            intervals,
            max_wait_seconds,
            sleep,
            hold_seconds=hold_seconds,
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
