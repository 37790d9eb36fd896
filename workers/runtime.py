"""Per-process wiring for the worker: one EngineDeps, built lazily on first use."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from gpubot.services.deps import EngineDeps

_lock = threading.Lock()
_deps: EngineDeps | None = None
_counter = itertools.count()
_deliverer: Any = None
_deliverer_built = False


def install(engine_deps: EngineDeps) -> None:
    """Use ``engine_deps`` in this process (the demo and tests inject theirs)."""
    global _deps, _deliverer, _deliverer_built
    with _lock:
        _deps = engine_deps
        _deliverer = None
        _deliverer_built = False


def deps() -> EngineDeps:
    global _deps
    with _lock:
        if _deps is None:
            from gpubot.wiring import build_engine_deps

            _deps = build_engine_deps(enqueuer=CeleryKicker())
        return _deps


def tick_counter() -> int:
    return next(_counter)


def deliverer() -> Any:
    """The Slack delivery loop when SLACK_BOT_TOKEN is set, else None."""
    global _deliverer, _deliverer_built
    with _lock:
        if not _deliverer_built:
            _deliverer_built = True
            engine_deps = _deps
            if engine_deps is not None and engine_deps.settings.slack_bot_token is not None:
                from bot.delivery import SlackDeliverer

                _deliverer = SlackDeliverer.from_settings(engine_deps.settings, engine_deps)
        return _deliverer


class CeleryKicker:
    """Enqueuer port: asks for an early tick, at most one per ``min_interval_seconds``."""

    def __init__(self, min_interval_seconds: float = 0.3) -> None:
        self._min_interval = min_interval_seconds
        self._last = 0.0
        self._lock = threading.Lock()

    def kick(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._min_interval:
                return
            self._last = now
        from workers.tasks import reconcile_tick_task

        reconcile_tick_task.apply_async(expires=30)
