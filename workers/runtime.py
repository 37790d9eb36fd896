"""Per-process wiring for the worker: one EngineDeps and one deliverer, built lazily on first use.

Every process wires itself on its first task, whatever that task is: a prefork child whose
first task is ``deliver_messages_task`` builds the same EngineDeps a tick would. Nothing
"not built yet" is ever cached, and a failure to build is raised to the caller (the task
fails and Celery logs it) and retried on the next call, never remembered as "no Slack".

This package never imports ``bot/``: the Slack deliverer and the answerer of acknowledged
Slack commands are made by factories the composition root installs
(:func:`install_deliverer_factory`, :func:`install_answerer_factory`, called when
``app.worker`` is imported, i.e. in the parent process before a prefork pool forks, so every
child inherits them).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

from gpubot.deps import EngineDeps
from gpubot.errors import ConfigError


class Deliverer(Protocol):
    """Sends what is due in the outbox now and returns how many messages went out."""

    def deliver_once(self) -> int: ...


DelivererFactory = Callable[[EngineDeps], Deliverer]
"""Builds the Slack deliverer for an EngineDeps whose settings carry SLACK_BOT_TOKEN."""


class Answerer(Protocol):
    """Answers one acknowledged Slack command or click (``bot.answers.Answerer``): keyword
    arguments are the plain request the bot enqueued; returns where the answer went."""

    def answer_command(
        self, *, text: str, user: str, channel: str, team: str = "", request_key: str,
        response_url: str,
    ) -> str: ...

    def answer_action(
        self, *, action_id: str, value: str, user: str, channel: str, action_ts: str = "",
        response_url: str, request_key: str,
    ) -> str: ...


AnswererFactory = Callable[[EngineDeps], Answerer]
"""Builds the answerer for an EngineDeps whose settings carry SLACK_BOT_TOKEN."""

_lock = threading.Lock()
_deps: EngineDeps | None = None
_counter = itertools.count()
_deliverer_lock = threading.Lock()
_deliverer: Deliverer | None = None
_deliverer_deps: EngineDeps | None = None
"""The EngineDeps ``_deliverer`` was built for; None: nothing built yet in this process."""
_deliverer_factory: DelivererFactory | None = None
_answerer_lock = threading.Lock()
_answerer: Answerer | None = None
_answerer_deps: EngineDeps | None = None
_answerer_factory: AnswererFactory | None = None


def install(engine_deps: EngineDeps) -> None:
    """Use ``engine_deps`` in this process (the demo and tests inject theirs).

    The deliverer is rebuilt for the new deps on its next use.
    """
    global _deps
    with _lock:
        _deps = engine_deps


def install_deliverer_factory(factory: DelivererFactory) -> None:
    """Make :func:`deliverer` build its Slack deliverer with ``factory`` from now on.

    Called by the composition root (``app.worker``) at import, before any fork. A deliverer
    already built for other deps is kept until the deps change.
    """
    global _deliverer_factory, _deliverer_deps
    with _deliverer_lock:
        _deliverer_factory = factory
        _deliverer_deps = None


def install_answerer_factory(factory: AnswererFactory) -> None:
    """Make :func:`answerer` build the Slack answerer with ``factory`` from now on (called by
    ``app.worker`` at import, before any fork)."""
    global _answerer_factory, _answerer_deps
    with _answerer_lock:
        _answerer_factory = factory
        _answerer_deps = None


def answerer() -> Answerer:
    """This process's answerer of acknowledged Slack requests, built on first use per
    EngineDeps (an :func:`install` gets a new one).

    Raises:
        ConfigError: no factory was installed (a worker started without the composition
            root, e.g. ``celery -A workers.celery_app``), or what the factory raises
            (SLACK_BOT_TOKEN not set). Nothing is cached then.
    """
    global _answerer, _answerer_deps
    engine_deps = deps()
    with _answerer_lock:
        if _answerer is None or _answerer_deps is not engine_deps:
            factory = _answerer_factory
            if factory is None:
                raise ConfigError(
                    "this worker cannot answer Slack commands: start it with `gpubot worker` "
                    "(or `celery -A app.worker worker`)",
                    key="SLACK_BOT_TOKEN",
                )
            _answerer = factory(engine_deps)
            _answerer_deps = engine_deps
        return _answerer


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
    """A process-wide counter: the tick uses it to sweep orphans every N ticks."""
    return next(_counter)


def build_deliverer(engine_deps: EngineDeps) -> Deliverer | None:
    """The Slack delivery loop for ``engine_deps``: None when SLACK_BOT_TOKEN is not set.

    Raises:
        ConfigError: SLACK_BOT_TOKEN is set but no factory was installed (a worker started
            without the composition root, e.g. ``celery -A workers.celery_app``): refusing
            loudly beats leaving the outbox undelivered in silence.
    """
    if engine_deps.settings.slack_bot_token is None:
        return None
    factory = _deliverer_factory
    if factory is None:
        raise ConfigError(
            "is set but this worker has no Slack deliverer: start it with `gpubot worker` "
            "(or `celery -A app.worker worker`)",
            key="SLACK_BOT_TOKEN",
        )
    return factory(engine_deps)


def deliverer() -> Deliverer | None:
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
        """Enqueue one ``reconcile_tick_task`` (expiring in 30 s) unless one was just sent."""
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._min_interval:
                return
            self._last = now
        from workers.tasks import reconcile_tick_task

        reconcile_tick_task.apply_async(expires=30)
