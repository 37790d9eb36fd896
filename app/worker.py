"""``gpubot worker`` / ``gpubot beat``, and the target of ``celery -A app.worker …``.

Importing this module wires the worker side of the process: it installs the Slack deliverer
factory (``bot.delivery.SlackDeliverer``) and the answerer factory
(``bot.answers.Answerer``, which answers the ``/gpu`` commands and clicks ``gpubot serve``
acknowledged and enqueued) into ``workers.runtime``, and declares the ``answers`` queue next
to the default one, so a worker started from here consumes both unless told otherwise
(``-Q answers``: answers only). Celery imports the ``-A`` module in the parent process before
a prefork pool forks, so every child inherits the factories, and a child whose first task is
a delivery or an answer still runs it (``workers.runtime`` builds the EngineDeps lazily on
first use). ``workers/`` itself never imports ``bot/``.

``app`` is the project's Celery app (``workers.celery_app.app``), re-exported for ``-A``.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from bot.answers import Answerer
from bot.delivery import SlackDeliverer
from gpubot.deps import EngineDeps
from gpubot.settings import Settings
from workers import runtime
from workers.celery_app import app
from workers.tasks import ANSWERS_QUEUE

__all__ = ["WORKER_QUEUES", "app", "run_beat", "run_worker", "slack_answerer", "slack_deliverer"]

WORKER_QUEUES = (app.conf.task_default_queue, ANSWERS_QUEUE)
"""What ``gpubot worker`` consumes: ticks, steps and deliveries (the default queue) and the
answers to Slack commands."""


def slack_deliverer(engine_deps: EngineDeps) -> SlackDeliverer:
    """The worker's ``DelivererFactory``: Slack delivery on ``engine_deps``' settings."""
    return SlackDeliverer.from_settings(engine_deps.settings, engine_deps)


def slack_answerer(engine_deps: EngineDeps) -> Answerer:
    """The worker's ``AnswererFactory``: answers on ``engine_deps`` with a WebClient from its
    settings (raises ``ConfigError`` when SLACK_BOT_TOKEN is not set)."""
    return Answerer.from_deps(engine_deps)


runtime.install_deliverer_factory(slack_deliverer)
runtime.install_answerer_factory(slack_answerer)
# Declared queues are what a worker consumes by default (Celery ``task_queues``); the names,
# exchanges and routing keys are those Celery creates for a queue named in ``send_task``.
app.conf.task_queues = [Queue(name, Exchange(name), routing_key=name) for name in WORKER_QUEUES]


def run_worker(
    *, loglevel: str, concurrency: int, queues: tuple[str, ...] = WORKER_QUEUES
) -> int:
    """Run a Celery worker (prefork pool of ``concurrency``) consuming ``queues`` (default:
    every queue, ticks and steps and answers) until it is stopped. Returns 0.

    Raises:
        ValueError: a queue this app does not declare (a typo would consume nothing).
    """
    unknown = sorted(set(queues) - set(WORKER_QUEUES))
    if unknown or not queues:
        raise ValueError(
            f"unknown queue(s) {', '.join(unknown) or '(none given)'}; "
            f"this app's queues: {', '.join(WORKER_QUEUES)}"
        )
    argv = [
        "worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}",
        f"--queues={','.join(queues)}",
    ]
    if tuple(queues) != WORKER_QUEUES:
        # A second worker on the same host needs its own node name (Celery warns about, and
        # remote control confuses, duplicate ones): named after what it consumes.
        argv.append(f"--hostname={'+'.join(queues)}@%h")
    app.worker_main(argv)
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
