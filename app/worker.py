"""``gpubot worker`` / ``gpubot beat``, and the target of ``celery -A app.worker …``.

Importing this module wires the worker side of the process: it installs the Slack deliverer
factory (``bot.delivery.SlackDeliverer``) into ``workers.runtime``. Celery imports the ``-A``
module in the parent process before a prefork pool forks, so every child inherits the
factory, and a child whose first task is a delivery still delivers (``workers.runtime``
builds the EngineDeps lazily on first use). ``workers/`` itself never imports ``bot/``.

``app`` is the project's Celery app (``workers.celery_app.app``), re-exported for ``-A``.
"""

from __future__ import annotations

from bot.delivery import SlackDeliverer
from gpubot.deps import EngineDeps
from gpubot.settings import Settings
from workers import runtime
from workers.celery_app import app

__all__ = ["app", "run_beat", "run_worker", "slack_deliverer"]


def slack_deliverer(engine_deps: EngineDeps) -> SlackDeliverer:
    """The worker's ``DelivererFactory``: Slack delivery on ``engine_deps``' settings."""
    return SlackDeliverer.from_settings(engine_deps.settings, engine_deps)


runtime.install_deliverer_factory(slack_deliverer)


def run_worker(*, loglevel: str, concurrency: int) -> int:
    """Run a Celery worker (prefork pool of ``concurrency``) until it is stopped. Returns 0."""
    app.worker_main(["worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}"])
    return 0


def run_beat(*, loglevel: str) -> int:
    """Run Celery beat until it is stopped (run exactly one). Returns 0.

    Its schedule state is ``GPUBOT_HOME/celerybeat-schedule*`` (``celery_config``), never the
    working directory; GPUBOT_HOME is created first.
    """
    settings = Settings()
    settings.ensure_home()
    schedule = str(settings.home / "celerybeat-schedule")
    app.start(["beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])
    return 0
