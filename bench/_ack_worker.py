"""The Celery worker of ``bench/ack_latency.py`` (queue mode), in its own process.

Wired as ``gpubot worker`` wires itself (``app.worker``: the answerer and deliverer factories,
the ``answers`` queue), with the engine the bench's HTTP app uses: the same database, config,
Slack fake and real ``VastAIProvider`` behind the slow-search proxy (the EngineDeps are
installed with ``workers.runtime.install`` before the worker starts, as the tests do).
Consumes only the ``answers`` queue from ``--broker`` (Redis) with a pool of
``--concurrency`` threads; prints ``ready`` once the worker consumes.

Usage: ``python bench/_ack_worker.py --home H --db-url URL --config TOML --slack-url U
--vast-url U --api-key K --token T --broker redis://...``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()


class NoKicks:
    """The bench's HTTP app asks for no early ticks either (no beat, no tick worker)."""

    def kick(self) -> None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--home", "--db-url", "--config", "--slack-url", "--vast-url", "--api-key",
                 "--token", "--broker"):
        parser.add_argument(name, required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()

    from celery.signals import worker_ready

    import app.worker as composition
    from gpubot.config import load_config
    from gpubot.providers.vastai.provider import VastAIProvider
    from gpubot.settings import Settings
    from gpubot.testing.fakes import MemoryStore
    from gpubot.wiring import build_engine_deps
    from workers import runtime
    from workers.celery_app import celery_config
    from workers.tasks import ANSWERS_QUEUE

    settings = Settings(
        GPUBOT_HOME=args.home,
        SLACK_BOT_TOKEN=args.token,
        SLACK_API_URL=args.slack_url,
        GPUBOT_DATABASE_URL=args.db_url,
        GPUBOT_BROKER_URL=args.broker,
    )
    deps = build_engine_deps(
        settings,
        config=load_config(Path(args.config)),
        provider=VastAIProvider(api_key=args.api_key, server_url=args.vast_url),
        store=MemoryStore(),
        enqueuer=NoKicks(),
    )
    runtime.install(deps)
    celery = composition.app
    celery.conf.update(celery_config(settings))
    c.quiet()

    @worker_ready.connect
    def _ready(**_: object) -> None:
        os.write(1, b"ready\n")  # fd 1: Celery has replaced sys.stdout with a logging proxy

    celery.worker_main([
        "worker", "--loglevel=ERROR", f"--queues={ANSWERS_QUEUE}", "--pool=threads",
        f"--concurrency={args.concurrency}", "--without-gossip", "--without-mingle",
        "--without-heartbeat",
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
