"""``gpubot serve``: the Slack app. Socket Mode when SLACK_APP_TOKEN is set, else HTTP on $PORT.

In Socket Mode ``GET /healthz`` and ``GET /metrics`` are still served on $PORT, by a small
HTTP server thread started next to the socket client (:func:`start_health_server`), so the
compose health check and Prometheus work in both modes.

The bot gets its enqueuer (a ``CeleryKicker``, which asks the workers for an early tick)
through the EngineDeps built here; ``bot/`` itself never imports ``workers/``. Outbox
delivery (posting threads and cards) runs in the Celery worker
(``workers.tasks.deliver_messages_task``), not here.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from gpubot.settings import Settings

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

    from gpubot.deps import EngineDeps


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
    from workers.runtime import CeleryKicker, install

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    settings = Settings()
    deps = build_engine_deps(settings, enqueuer=CeleryKicker())
    install(deps)
    app = build_app(deps, settings=settings)
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
