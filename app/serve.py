"""``gpubot serve``: the Slack app. Socket Mode when SLACK_APP_TOKEN is set, else HTTP on $PORT.

In Socket Mode ``GET /healthz`` and ``GET /metrics`` are still served on $PORT, by a small
HTTP server thread started next to the socket client (:func:`start_health_server`), so the
compose health check and Prometheus work in both modes.

The bot gets its enqueuer (a ``CeleryKicker``, which asks the workers for an early tick)
through the EngineDeps built here, and the app answers in queue mode: each ``/gpu`` command
and click is acknowledged here and its answer enqueued (:func:`answer_sender`) for a worker
(``workers.tasks.answer_command_task`` on the ``answers`` queue), so answers never hold this
process's GIL while later requests wait for their ack. ``bot/`` itself never imports
``workers/``. Outbox delivery (posting threads and cards) runs in the Celery worker
(``workers.tasks.deliver_messages_task``), not here either.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from gpubot.settings import Settings

if TYPE_CHECKING:
    from celery import Celery
    from werkzeug.serving import BaseWSGIServer

    from bot.answers import SendTask
    from gpubot.deps import EngineDeps

ENQUEUE_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 2, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.2,
}
"""Publishing an answer is retried for at most ~0.3 s (a request has 3 s to be acked; the
listener answers in-process when the broker stays unreachable)."""


def answer_sender(celery: Celery) -> SendTask:
    """``bot.answers.SendTask`` on ``celery``: ``send_task`` by name onto the ``answers``
    queue, expiring after ``workers.tasks.ANSWER_EXPIRES_SECONDS``."""
    from workers.tasks import ANSWER_EXPIRES_SECONDS, ANSWERS_QUEUE

    def send(name: str, kwargs: dict[str, str]) -> None:
        celery.send_task(
            name, kwargs=kwargs, queue=ANSWERS_QUEUE, expires=ANSWER_EXPIRES_SECONDS,
            retry_policy=ENQUEUE_RETRY_POLICY,
        )

    return send


def start_health_server(deps: EngineDeps, *, host: str, port: int) -> BaseWSGIServer:
    """Serve ``/healthz`` and ``/metrics`` (``bot.http``'s handlers) on ``host:port`` from a
    daemon thread and return the server (``server_port`` is the bound port; port 0 lets the
    OS choose). The caller stops it with ``shutdown()`` then ``server_close()``.

    Raises:
        OSError: the port cannot be bound.
    """
    from bot.http import make_health_server

    server = make_health_server(deps, host=host, port=port)
    threading.Thread(target=server.serve_forever, name="gpubot-health", daemon=True).start()
    return server


def main() -> int:
    """Build the engine and the Bolt app, then serve until interrupted. Returns 0.

    Raises ``ConfigError`` (via ``build_engine_deps`` / ``build_app``) when a setting the
    bot needs is missing; nothing is served then.
    """
    from bot.app import build_app
    from gpubot.wiring import build_engine_deps
    from workers.celery_app import app as celery
    from workers.runtime import CeleryKicker, install

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    settings = Settings()
    deps = build_engine_deps(settings, enqueuer=CeleryKicker())
    install(deps)
    app = build_app(deps, settings=settings, answers="queue", send_task=answer_sender(celery))
    if settings.slack_app_token is not None:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        health = start_health_server(deps, host="0.0.0.0", port=settings.port)  # noqa: S104
        logging.getLogger(__name__).info(
            "serving in Socket Mode; /healthz and /metrics on port %s", health.server_port
        )
        try:
            SocketModeHandler(app, settings.slack_app_token.get_secret_value()).start()
        finally:
            health.shutdown()
            health.server_close()
        return 0
    from bot.http import make_http_server

    server = make_http_server(app, deps, host="0.0.0.0", port=settings.port)  # noqa: S104
    logging.getLogger(__name__).info("serving HTTP on port %s", server.server_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
