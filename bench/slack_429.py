"""Slack 429s when 100 jobs post into one channel through ``bot.delivery.SlackDeliverer``.

Setup: the Slack Web API fake (``tests/fixtures/slack_fake.py``) over real HTTP on 127.0.0.1,
enforcing one ``chat.postMessage`` per channel per interval (Slack's ~1 message/s) and
answering 429 with ``Retry-After`` = one interval. The outbox (SQLite) holds what 100 launches
in one channel queue: a parent (the plan) and a status card (a thread reply) per job = 200
posts. Deliverers call ``deliver_once()`` in a loop (as ``deliver_messages_task`` does) until
the outbox is empty.

Time is scaled by ``--scale`` (default 0.1: a 0.1 s interval for the fake, the deliverer's
pacing and Retry-After alike) so a run takes ~20 s per scenario instead of ~200 s;
``--scale 1`` runs at Slack's real 1 post/s. Scenarios:
- one deliverer with its default pacing (one post per channel per interval);
- one deliverer with pacing off (``post_interval_seconds=0``: relies on 429 handling only);
- two deliverers at once, each with a Redis client of its own (two worker processes sharing
  the per-channel pace on Redis, ``--redis``, default redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()

TOKEN = "xoxb-fake-bot-token-1234"
CHANNEL = "CBUSY001"


def fill_outbox(deps: Any, jobs: int) -> None:
    from gpubot.db.engine import session_scope
    from gpubot.notify import outbox
    with session_scope(deps.sessions) as session:
        for i in range(jobs):
            job_id = f"job{i:04d}"
            outbox.post_parent(session, channel=CHANNEL, job_id=job_id,
                               text=f"Plan for {job_id}: RTX 4090 at $0.40/h")
            outbox.upsert_card(session, job_id=job_id, channel=CHANNEL, thread_key=job_id,
                               text=f"{job_id}: queued")


def dirty_count(deps: Any) -> int:
    from sqlalchemy import func, select

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import MessageRow

    with session_scope(deps.sessions) as session:
        return int(session.scalar(
            select(func.count()).select_from(MessageRow).where(MessageRow.dirty.is_(True))
        ) or 0)


def scenario(name: str, tmp: Path, *, jobs: int, interval: float, pacing: float,
             deliverers: int, redis_url: str | None = None) -> list[object]:
    import uuid

    from slack_sdk import WebClient

    from bot.delivery import SlackDeliverer
    from gpubot.pace import make_slots
    from gpubot.testing.fakes import fake_deps
    from tests.fixtures.slack_fake import SlackFake

    slack = SlackFake(token=TOKEN, post_interval_seconds=interval, retry_after=interval).start()
    try:
        deps = fake_deps(tmp)
        c.quiet()
        fill_outbox(deps, jobs)
        prefix = f"bench-slack-pace:{uuid.uuid4().hex}"
        workers = [
            SlackDeliverer(WebClient(token=TOKEN, base_url=slack.url), deps,
                           post_interval_seconds=pacing,
                           slots=make_slots(redis_url, key_prefix=prefix) if redis_url else None)
            for _ in range(deliverers)
        ]
        started = time.monotonic()
        deadline = started + max(120.0, jobs * 2 * interval * 6)
        while dirty_count(deps) and time.monotonic() < deadline:
            for worker in workers:
                worker.deliver_once()
            time.sleep(interval / 20)
        wall = time.monotonic() - started
        posts = slack.calls_to("chat.postMessage")
        ok = sum(1 for p in posts if p.status == 200)
        limited = sum(1 for p in posts if p.status == 429)
        ideal = jobs * 2 * interval
        deps.sessions.kw["bind"].dispose()
        return [name, jobs * 2, ok, limited, f"{100 * limited / max(1, len(posts)):.1f} %",
                f"{wall:.1f}", f"{wall / ideal:.2f}", dirty_count(deps)]
    finally:
        slack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--scale", type=float, default=0.1,
                        help="time scale: 1 = Slack's real 1 post/s per channel")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15",
                        help="Redis for the shared pace of the two-deliverer scenario")
    args = parser.parse_args()
    sys.path.insert(0, str(c.REPO))
    interval = 1.0 * args.scale
    c.print_header(
        f"Slack 429s: {args.jobs} jobs in one channel, fake allows 1 post per {interval:g} s "
        f"(time scale {args.scale:g})"
    )
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="gpubot-bench-429-") as tmp:
        rows.append(scenario("1 deliverer, paced (default)", Path(tmp) / "a", jobs=args.jobs,
                             interval=interval, pacing=interval, deliverers=1))
        rows.append(scenario("1 deliverer, pacing off", Path(tmp) / "b", jobs=args.jobs,
                             interval=interval, pacing=0.0, deliverers=1))
        rows.append(scenario("2 deliverers, Redis pace", Path(tmp) / "c", jobs=args.jobs,
                             interval=interval, pacing=interval, deliverers=2,
                             redis_url=args.redis))
    print(c.table(
        ["scenario", "posts due", "posted", "429s", "429 share", "wall s", "wall / ideal",
         "left"],
        rows,
    ))
    print(f"ideal = posts x {interval:g} s (the channel's limit); wall is scaled time.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
