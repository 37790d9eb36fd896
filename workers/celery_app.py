"""The Celery app: JSON only, late acks on idempotent tasks, the reconcile beat schedule.

Broker: ``GPUBOT_BROKER_URL`` (``redis://…`` in production), else the embedded broker
``gpubotfs://`` in ``GPUBOT_HOME/broker``: kombu's filesystem transport with atomic writes and
rename claims (``workers/embedded_broker.py``; kombu's own ``filesystem://`` let a consumer read
a half-written message file). No server to install, one machine only, and a message can be
lost if a worker dies mid-task. That is acceptable because nothing depends on one message: the
reconcile tick re-derives all work from the database every ``GPUBOT_TICK_SECONDS``
(docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from gpubot.settings import Settings
from workers import embedded_broker  # noqa: F401 - registers the gpubotfs:// transport


def _preload_vendor_sdks() -> None:
    """Import the vastai SDK now, before a worker replaces ``sys.stdout``.

    ``vastai.api.client`` reads ``sys.stdout.encoding`` at import time. Inside a worker, Celery
    has replaced ``sys.stdout`` with a ``LoggingProxy`` that has no ``encoding``, so the first
    task that built the provider died with ``AttributeError`` and ``gpubot worker`` could never
    run a tick (found by tests/faults, which run real worker subprocesses). Importing it here,
    when ``-A workers.celery_app`` loads the app, caches the module in the parent process
    (prefork children inherit it).
    """
    try:
        import vastai  # noqa: F401
    except ImportError:  # pragma: no cover - vastai is a hard dependency
        pass


_preload_vendor_sdks()


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings`` (pure; used by the app and by tests)."""
    tick = settings.tick_seconds
    config: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "timezone": "UTC",
        "enable_utc": True,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": False,
        "task_reject_on_worker_lost": False,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_soft_time_limit": 600,
        "task_time_limit": 900,
        # Beat's schedule state lives in GPUBOT_HOME, never in the working directory.
        "beat_schedule_filename": str(settings.home / "celerybeat-schedule"),
        "beat_schedule": {
            "reconcile-tick": {
                "task": "workers.tasks.reconcile_tick_task",
                "schedule": tick,
                "options": {"expires": max(tick * 2, 2.0)},
            },
            "check-charges": {
                "task": "workers.tasks.check_charges_task",
                "schedule": 24 * 3600.0,
                "options": {"expires": 3600.0},
            },
            "deliver-messages": {
                "task": "workers.tasks.deliver_messages_task",
                "schedule": max(1.0, min(tick, 2.0)),
                "options": {"expires": 10.0},
            },
        },
    }
    if settings.uses_embedded_broker:
        # gpubotfs:// (workers/embedded_broker.py) publishes and consumes in the same folder;
        # its tmp/, claimed/ and bad/ folders are created next to it. A worker polls an idle
        # queue every 0.1 s (one directory listing), so an early-tick kick waits < 0.1 s.
        folder = settings.broker_folder
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "in"),
            "data_folder_out": str(folder / "in"),
            "control_folder": str(folder / "control"),
            "polling_interval": 0.1,
        }
    else:
        # Longer than the longest task so a running task is never delivered twice.
        config["broker_transport_options"] = {"visibility_timeout": 3600}
    return config


def make_celery(settings: Settings | None = None) -> Celery:
    """The project's Celery app for ``settings`` (default: from the environment).

    Creates GPUBOT_HOME for the embedded broker. The Slack deliverer is not wired here: the
    composition root (``app.worker``) installs it; see ``workers.runtime``.
    """
    settings = settings or Settings()
    if settings.uses_embedded_broker:
        settings.ensure_home()
    app = Celery("gpubot", include=["workers.tasks"])
    app.conf.update(celery_config(settings))
    return app


app = make_celery()
