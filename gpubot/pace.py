"""Time slots on named keys, shared by every worker: the one pacing mechanism of the bot.

A key (a vast endpoint, a Slack channel, a Slack method) holds the time of its next free slot.
:meth:`Slots.reserve` takes the next free slot of a key when it is at most ``max_wait_seconds``
away and moves the key's next free slot ``interval_seconds`` after it; otherwise nothing is
reserved and the caller learns how long to wait. Nothing here sleeps: the caller decides
whether to wait for a reserved slot (vast pacing) or to go on with other work (Slack delivery).

* :meth:`Slots.defer`: no slot before ``seconds`` from now (the server answered 429 with a
  ``Retry-After``); never shortens a later slot.
* :meth:`Slots.settle`: the reservation is over; the next free slot is ``after_seconds`` from
  *now*. With a long reservation interval this is a lock with spacing: the key is held while a
  call is in flight (a crashed holder frees it when the interval passes) and the next call
  starts ``after_seconds`` after this one *finished*, whatever the network jitter. A
  :meth:`defer` made meanwhile by someone else is kept when it is later.
* ``reserve(..., held=True)`` marks such a reservation as a hold: until it is settled (or its
  interval passes), other reservations answer ``held`` instead of the (long, meaningless)
  wait until the hold would expire, so a caller can tell "a call is in flight, the key frees
  soon" from "the key is paced or deferred until then"; and a :meth:`Slots.defer` made during
  the hold (the holder's call was answered 429) outlives its settle when it is later.

Implementations:

- :class:`LocalSlots`: threads of one process, on ``time.monotonic``.
- :class:`RedisSlots`: every process sharing a Redis server (the broker's); each operation is
  one Lua script (atomic) on the server's own clock (``TIME``), so worker clocks do not matter.
  Keys expire a minute after their slot has passed.

Users: :mod:`gpubot.providers.vastai.pace` (turns per vast endpoint) and ``bot.delivery``
(Slack posts per channel, Slack methods per workspace).

:func:`waiting_at_most` bounds, for one block of code, how long a pace built on these slots
may wait for a turn (the reconcile tick lists instances only if the list turn is free now: it
must never queue behind other callers and hold a worker).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Slot:
    """The answer of :meth:`Slots.reserve`.

    ``reserved``: the slot is the caller's; it starts ``wait_seconds`` from now (0: now).
    Not reserved: nothing changed; the next free slot is ``wait_seconds`` away, or, when
    ``held``, the key is held by a call in flight (``reserve(..., held=True)``) and frees when
    that call settles (``wait_seconds`` is then only the longest the hold can last).
    ``token`` identifies the reservation for :meth:`Slots.settle` (0 when not reserved).
    """

    reserved: bool
    wait_seconds: float
    token: int = 0
    held: bool = False


class Slots(Protocol):
    """Next-free-slot times on named keys (see the module docstring)."""

    def reserve(
        self,
        key: str,
        interval_seconds: float,
        *,
        max_wait_seconds: float = 0.0,
        held: bool = False,
    ) -> Slot:
        """Reserve the next free slot of ``key`` if it is at most ``max_wait_seconds`` away
        and no hold is on the key; the key's next free slot then comes ``interval_seconds``
        after it. ``held``: the reservation is a hold (ended by :meth:`settle`, or by itself
        ``interval_seconds`` after the slot); meanwhile other reservations answer ``held``."""
        ...

    def defer(self, key: str, seconds: float) -> None:
        """No slot on ``key`` before ``seconds`` from now (a later slot is kept)."""
        ...

    def settle(self, key: str, slot: Slot, after_seconds: float) -> None:
        """End the reservation ``slot``: the next free slot of ``key`` is ``after_seconds``
        from now. If the key changed since ``slot`` was reserved (a defer, or the reservation
        expired and someone else reserved), the later of the two is kept."""
        ...


_WAIT_LIMIT: ContextVar[float | None] = ContextVar("gpubot_pace_wait_limit", default=None)


@contextmanager
def waiting_at_most(seconds: float) -> Iterator[None]:
    """Within this block (this thread or task), paces wait at most ``seconds`` for a turn;
    0: only a turn free right now. A pace that would have to wait longer refuses at once
    instead (the vast pace raises :class:`gpubot.errors.RateLimitedError`). Nested blocks keep
    the smaller bound."""
    current = _WAIT_LIMIT.get()
    bound = max(0.0, float(seconds))
    token = _WAIT_LIMIT.set(bound if current is None else min(current, bound))
    try:
        yield
    finally:
        _WAIT_LIMIT.reset(token)


def wait_limit(default_seconds: float) -> float:
    """``default_seconds``, or less inside :func:`waiting_at_most`."""
    bound = _WAIT_LIMIT.get()
    return default_seconds if bound is None else min(default_seconds, bound)


def _ms(seconds: float) -> int:
    return int(round(max(0.0, float(seconds)) * 1000))


class LocalSlots:
    """In-process slots (threads of one process), on ``time.monotonic`` (milliseconds)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}
        self._holds: dict[str, int] = {}
        """key -> token (= end ms) of the hold on it."""

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def reserve(
        self,
        key: str,
        interval_seconds: float,
        *,
        max_wait_seconds: float = 0.0,
        held: bool = False,
    ) -> Slot:
        with self._lock:
            now = self._now_ms()
            hold_end = self._holds.get(key, 0)
            if hold_end > now:
                return Slot(False, (hold_end - now) / 1000, held=True)
            slot = max(self._next.get(key, now), now)
            wait = slot - now
            if wait > _ms(max_wait_seconds):
                return Slot(False, wait / 1000)
            nxt = slot + _ms(interval_seconds)
            if held:
                # The key keeps its slot (a defer during the hold compares with it); the
                # hold ends at settle or, for a holder that died, at ``nxt``.
                self._next[key] = slot
                self._holds[key] = nxt
            else:
                self._next[key] = nxt
            return Slot(True, wait / 1000, nxt)

    def defer(self, key: str, seconds: float) -> None:
        with self._lock:
            until = self._now_ms() + _ms(seconds)
            if until > self._next.get(key, 0):
                self._next[key] = until

    def settle(self, key: str, slot: Slot, after_seconds: float) -> None:
        with self._lock:
            if self._holds.get(key) == slot.token:
                del self._holds[key]
            until = self._now_ms() + _ms(after_seconds)
            current = self._next.get(key, 0)
            if current == slot.token or until > current:
                self._next[key] = until


_NOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS = key, its hold key; ARGV = interval ms, max wait ms, hold 0/1.
# Returns {wait ms, reserved 0/1, token, held 0/1}.
_RESERVE_LUA = _NOW_LUA + """
local hold = redis.call('PTTL', KEYS[2])
if hold > 0 then
  return {hold, 0, 0, 1}
end
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local wait = slot - now
if wait > tonumber(ARGV[2]) then
  return {wait, 0, 0, 0}
end
local nxt = slot + tonumber(ARGV[1])
if ARGV[3] == '1' then
  -- a hold: the key keeps its slot (a defer during the hold compares with it), the hold key
  -- carries the token and ends by itself when the hold would
  redis.call('SET', KEYS[1], slot, 'PX', nxt - now + 60000)
  redis.call('SET', KEYS[2], nxt, 'PX', math.max(1, nxt - now))
  return {wait, 1, nxt, 0}
end
redis.call('SET', KEYS[1], nxt, 'PX', nxt - now + 60000)
return {wait, 1, nxt, 0}
"""

# KEYS[1] = key; ARGV[1] = defer ms.
_DEFER_LUA = _NOW_LUA + """
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or 0)
if untl > cur then
  redis.call('SET', KEYS[1], untl, 'PX', untl - now + 60000)
end
return 1
"""

# KEYS = key, its hold key; ARGV = token, after ms.
_SETTLE_LUA = _NOW_LUA + """
if tonumber(redis.call('GET', KEYS[2]) or -1) == tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[2])
end
local untl = now + tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or 0)
if cur == tonumber(ARGV[1]) or untl > cur then
  redis.call('SET', KEYS[1], untl, 'PX', untl - now + 60000)
end
return 1
"""


class RedisSlots:
    """Slots shared through Redis: one ``<key_prefix>:<key>`` string per key holding its next
    free slot (epoch ms on the Redis server's clock), and ``<key_prefix>:<key>:held`` while a
    hold is on it (the hold's token; it expires when the hold would)."""

    def __init__(self, client: Any, *, key_prefix: str) -> None:
        """``client`` is a ``redis.Redis``; ``key_prefix`` separates users and accounts (it
        must never contain a secret: keys are visible to anyone with access to the server)."""
        self.client = client
        self.key_prefix = key_prefix
        self._reserve = client.register_script(_RESERVE_LUA)
        self._defer = client.register_script(_DEFER_LUA)
        self._settle = client.register_script(_SETTLE_LUA)

    def _key(self, key: str) -> str:
        return f"{self.key_prefix}:{key}"

    def reserve(
        self,
        key: str,
        interval_seconds: float,
        *,
        max_wait_seconds: float = 0.0,
        held: bool = False,
    ) -> Slot:
        name = self._key(key)
        wait_ms, reserved, token, is_held = self._reserve(
            keys=[name, f"{name}:held"],
            args=[_ms(interval_seconds), _ms(max_wait_seconds), 1 if held else 0],
        )
        return Slot(bool(int(reserved)), int(wait_ms) / 1000, int(token), bool(int(is_held)))

    def defer(self, key: str, seconds: float) -> None:
        self._defer(keys=[self._key(key)], args=[_ms(seconds)])

    def settle(self, key: str, slot: Slot, after_seconds: float) -> None:
        name = self._key(key)
        self._settle(keys=[name, f"{name}:held"], args=[slot.token, _ms(after_seconds)])


def is_redis_url(url: str | None) -> bool:
    """True for ``redis://`` and ``rediss://`` URLs (the broker is a Redis server)."""
    return bool(url) and str(url).split("://", 1)[0] in ("redis", "rediss")


_process_slots = LocalSlots()


def make_slots(broker_url: str | None, *, key_prefix: str) -> Slots:
    """:class:`RedisSlots` on the broker's Redis when ``broker_url`` is ``redis://`` or
    ``rediss://``; else this process's one :class:`LocalSlots` (the embedded broker runs one
    worker process), on which ``key_prefix`` separates the users."""
    if is_redis_url(broker_url):
        import redis

        return RedisSlots(redis.Redis.from_url(str(broker_url)), key_prefix=key_prefix)
    return _PrefixedSlots(_process_slots, key_prefix)


class _PrefixedSlots:
    """A view of shared slots whose keys carry a prefix."""

    def __init__(self, slots: Slots, key_prefix: str) -> None:
        self.slots = slots
        self.key_prefix = key_prefix

    def reserve(
        self,
        key: str,
        interval_seconds: float,
        *,
        max_wait_seconds: float = 0.0,
        held: bool = False,
    ) -> Slot:
        return self.slots.reserve(
            f"{self.key_prefix}:{key}", interval_seconds, max_wait_seconds=max_wait_seconds,
            held=held,
        )

    def defer(self, key: str, seconds: float) -> None:
        self.slots.defer(f"{self.key_prefix}:{key}", seconds)

    def settle(self, key: str, slot: Slot, after_seconds: float) -> None:
        self.slots.settle(f"{self.key_prefix}:{key}", slot, after_seconds)
