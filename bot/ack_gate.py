"""Acks before answers: answer work waits while Slack requests are still being acknowledged.

Acks and answers share one process and its GIL. A burst of slash commands would otherwise have
its later acks wait behind the Python work of earlier answers (planning over hundreds of
offers, database writes), and Slack drops a command not acked within 3 s. The HTTP front counts
the requests it is dispatching (:meth:`AckGate.enter` / :meth:`AckGate.leave`); an answer calls
:meth:`AckGate.wait_idle` before it starts, which returns as soon as no request is in flight,
or after ``max_wait_s`` so that answers are never starved by steady traffic. The publisher of
queued answers (``bot.answers.Publisher``) calls :meth:`AckGate.wait_quiet`, which also waits
for the gaps between a burst's requests to end.
"""

from __future__ import annotations

import threading
import time

MAX_WAIT_SECONDS = 1.0
QUIET_SECONDS = 0.05
"""How long no request may have been in flight before :meth:`AckGate.wait_quiet` returns:
the requests of one burst arrive spread over tens of milliseconds, and the gate is briefly
idle between them."""


class AckGate:
    """A count of requests being acknowledged, and a wait for it to reach zero."""

    def __init__(self) -> None:
        self._in_flight = 0
        self._idle = threading.Condition()
        self._last_busy = 0.0
        """``time.monotonic()`` when a request last left (or entered)."""

    def enter(self) -> None:
        with self._idle:
            self._in_flight += 1
            self._last_busy = time.monotonic()

    def leave(self) -> None:
        with self._idle:
            self._in_flight = max(0, self._in_flight - 1)
            self._last_busy = time.monotonic()
            if self._in_flight == 0:
                self._idle.notify_all()

    @property
    def in_flight(self) -> int:
        with self._idle:
            return self._in_flight

    def wait_idle(self, max_wait_s: float = MAX_WAIT_SECONDS) -> bool:
        """Block until no request is being acknowledged; False if ``max_wait_s`` ran out."""
        deadline = time.monotonic() + max_wait_s
        with self._idle:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True


    def wait_quiet(
        self, quiet_s: float = QUIET_SECONDS, max_wait_s: float = MAX_WAIT_SECONDS
    ) -> bool:
        """Block until no request has been in flight for ``quiet_s`` (the burst is acked);
        False if ``max_wait_s`` ran out first."""
        deadline = time.monotonic() + max_wait_s
        with self._idle:
            while True:
                now = time.monotonic()
                if self._in_flight == 0 and now - self._last_busy >= quiet_s:
                    return True
                if now >= deadline:
                    return False
                if self._in_flight == 0:
                    left = min(self._last_busy + quiet_s, deadline) - now
                else:
                    left = deadline - now
                self._idle.wait(max(left, 0.001))


GATE = AckGate()
"""The process's gate: entered by ``bot.http`` per request, waited on by ``bot.listeners``."""
