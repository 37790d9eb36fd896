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

Implementations:

- :class:`LocalSlots`: threads of one process, on ``time.monotonic``.
- :class:`RedisSlots`: every process sharing a Redis server (the broker's); each operation is
  one Lua script (atomic) on the server's own clock (``TIME``), so worker clocks do not matter.
  Keys expire a minute after their slot has passed.

Users: :mod:`gpubot.providers.vastai.pace` (turns per vast endpoint) and ``bot.delivery``
(Slack posts per channel, Slack methods per workspace).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Slot:
    """The answer of :meth:`Slots.reserve`.

    ``reserved``: the slot is the caller's; it starts ``wait_seconds`` from now (0: now).
    Not reserved: nothing changed; the next free slot is ``wait_seconds`` away.
    ``token`` identifies the reservation for :meth:`Slots.settle` (0 when not reserved).
    """

    reserved: bool
    wait_seconds: float
    token: int = 0


class Slots(Protocol):
    """Next-free-slot times on named keys (see the module docstring)."""

    def reserve(self, key: str, interval_seconds: float, *, max_wait_seconds: float = 0.0) -> Slot:
        """Reserve the next free slot of ``key`` if it is at most ``max_wait_seconds`` away;
        the key's next free slot then comes ``interval_seconds`` after it."""
        ...

    def defer(self, key: str, seconds: float) -> None:
        """No slot on ``key`` before ``seconds`` from now (a later slot is kept)."""
        ...

    def settle(self, key: str, slot: Slot, after_seconds: float) -> None:
        """End the reservation ``slot``: the next free slot of ``key`` is ``after_seconds``
        from now. If the key changed since ``slot`` was reserved (a defer, or the reservation
        expired and someone else reserved), the later of the two is kept."""
        ...


def _ms(seconds: float) -> int:
    return int(round(max(0.0, float(seconds)) * 1000))


class LocalSlots:
    """In-process slots (threads of one process), on ``time.monotonic`` (milliseconds)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def reserve(self, key: str, interval_seconds: float, *, max_wait_seconds: float = 0.0) -> Slot:
        with self._lock:
            now = self._now_ms()
            slot = max(self._next.get(key, now), now)
            wait = slot - now
            if wait > _ms(max_wait_seconds):
                return Slot(False, wait / 1000)
            nxt = slot + _ms(interval_seconds)
            self._next[key] = nxt
            return Slot(True, wait / 1000, nxt)

    def defer(self, key: str, seconds: float) -> None:
        with self._lock:
            until = self._now_ms() + _ms(seconds)
            if until > self._next.get(key, 0):
                self._next[key] = until

    def settle(self, key: str, slot: Slot, after_seconds: float) -> None:
        with self._lock:
            until = self._now_ms() + _ms(after_seconds)
            current = self._next.get(key, 0)
            if current == slot.token or until > current:
                self._next[key] = until


_NOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] = key; ARGV = interval ms, max wait ms. Returns {wait ms, reserved 0/1, token}.
_RESERVE_LUA = _NOW_LUA + """
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local wait = slot - now
if wait > tonumber(ARGV[2]) then
  return {wait, 0, 0}
end
local nxt = slot + tonumber(ARGV[1])
redis.call('SET', KEYS[1], nxt, 'PX', nxt - now + 60000)
return {wait, 1, nxt}
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

# KEYS[1] = key; ARGV = token, after ms.
_SETTLE_LUA = _NOW_LUA + """
local untl = now + tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or 0)
if cur == tonumber(ARGV[1]) or untl > cur then
  redis.call('SET', KEYS[1], untl, 'PX', untl - now + 60000)
end
return 1
"""


class RedisSlots:
    """Slots shared through Redis: one ``<key_prefix>:<key>`` string per key holding its next
    free slot (epoch ms on the Redis server's clock)."""

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

    def reserve(self, key: str, interval_seconds: float, *, max_wait_seconds: float = 0.0) -> Slot:
        wait_ms, reserved, token = self._reserve(
            keys=[self._key(key)], args=[_ms(interval_seconds), _ms(max_wait_seconds)]
        )
        return Slot(bool(int(reserved)), int(wait_ms) / 1000, int(token))

    def defer(self, key: str, seconds: float) -> None:
        self._defer(keys=[self._key(key)], args=[_ms(seconds)])

    def settle(self, key: str, slot: Slot, after_seconds: float) -> None:
        self._settle(keys=[self._key(key)], args=[slot.token, _ms(after_seconds)])


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

    def reserve(self, key: str, interval_seconds: float, *, max_wait_seconds: float = 0.0) -> Slot:
        return self.slots.reserve(
            f"{self.key_prefix}:{key}", interval_seconds, max_wait_seconds=max_wait_seconds
        )

    def defer(self, key: str, seconds: float) -> None:
        self.slots.defer(f"{self.key_prefix}:{key}", seconds)

    def settle(self, key: str, slot: Slot, after_seconds: float) -> None:
        self.slots.settle(f"{self.key_prefix}:{key}", slot, after_seconds)
