"""Acks before answers: answer work waits while Slack requests are still being acknowledged.

Acks and answers share one process and its GIL. A burst of slash commands would otherwise have
its later acks wait behind the Python work of earlier answers (planning over hundreds of
offers, database writes), and Slack drops a command not acked within 3 s. The HTTP front counts
the requests it is dispatching (:meth:`AckGate.enter` / :meth:`AckGate.leave`); an answer calls
:meth:`AckGate.wait_idle` before it starts, which returns as soon as no request is in flight,
or after ``max_wait_s`` so that answers are never starved by steady traffic.
"""

from __future__ import annotations

import threading
import time

MAX_WAIT_SECONDS = 1.0


class AckGate:
    """A count of requests being acknowledged, and a wait for it to reach zero."""

    def __init__(self) -> None:
        self._in_flight = 0
        self._idle = threading.Condition()

    def enter(self) -> None:
        with self._idle:
            self._in_flight += 1

    def leave(self) -> None:
        with self._idle:
            self._in_flight = max(0, self._in_flight - 1)
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


GATE = AckGate()
"""The process's gate: entered by ``bot.http`` per request, waited on by ``bot.listeners``."""
