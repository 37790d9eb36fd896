"""Cross-cutting ports the services take as arguments. Pure."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from gpubot.remote.runner import Runner, SSHTarget

Clock = Callable[[], datetime]
"""Returns the current UTC-aware time. Tests and the demo may run it faster than the wall."""


def system_clock() -> datetime:
    return datetime.now(UTC)


class RunnerFactory(Protocol):
    def __call__(self, target: SSHTarget, *, known_host_key: str | None) -> Runner:
        """Connect to ``target`` (raises SSHConnectError). The runner exposes the host key."""
        ...


class Enqueuer(Protocol):
    """Asks the workers to act now instead of waiting for the next tick (an optimisation:
    correctness never depends on it, the tick finds the work anyway)."""

    def kick(self) -> None:
        ...
