"""Per-process wiring for the worker: one EngineDeps and one deliverer, built lazily on first use.

Every process wires itself on its first task, whatever that task is: a prefork child whose
first task is ``deliver_messages_task`` builds the same EngineDeps a tick would. Nothing
"not built yet" is ever cached, and a failure to build is raised to the caller (the task
fails and Celery logs it) and retried on the next call, never remembered as "no Slack".
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING

from gpubot.deps import EngineDeps

if TYPE_CHECKING:
    from bot.delivery import SlackDeliverer

_lock = threading.Lock()
_deps: EngineDeps | None = None
_counter = itertools.count()
_deliverer_lock = threading.Lock()
_deliverer: SlackDeliverer | None = None
_deliverer_deps: EngineDeps | None = None
"""The EngineDeps ``_deliverer`` was built for; None: nothing built yet in this process."""


def install(engine_deps: EngineDeps) -> None:
    """Use ``engine_deps`` in this process (the demo and tests inject theirs).

    The deliverer is rebuilt for the new deps on its next use.
    """
    global _deps
    with _lock:
        _deps = engine_deps


def deps() -> EngineDeps:
    """This process's EngineDeps: the installed ones, else built from settings on first use.

    Raises whatever ``build_engine_deps`` raises (e.g. ``ConfigError``); nothing is cached
    then, so the next call tries again.
    """
    global _deps
    with _lock:
        if _deps is None:
            from gpubot.wiring import build_engine_deps

            _deps = build_engine_deps(enqueuer=CeleryKicker())
        return _deps


def tick_counter() -> int:
    return next(_counter)


def build_deliverer(engine_deps: EngineDeps) -> SlackDeliverer | None:
    """The Slack delivery loop for ``engine_deps``: None when SLACK_BOT_TOKEN is not set."""
    if engine_deps.settings.slack_bot_token is None:
        return None
    from bot.delivery import SlackDeliverer

    return SlackDeliverer.from_settings(engine_deps.settings, engine_deps)


def deliverer() -> SlackDeliverer | None:
    """This process's Slack deliverer, or None when Slack is not configured.

    Builds the EngineDeps through :func:`deps` first (so it works as a process's first task)
    and caches the deliverer per EngineDeps (an :func:`install` gets a new one). Raises what
    building raises; a failure is not cached.
    """
    global _deliverer, _deliverer_deps
    engine_deps = deps()
    with _deliverer_lock:
        if _deliverer_deps is not engine_deps:
            _deliverer = build_deliverer(engine_deps)
            _deliverer_deps = engine_deps
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
