"""Ack latency of ``/gpu train lr=2e-5`` through the bot's HTTP front, vs a bare Bolt app.

Setup (all on 127.0.0.1, ports chosen by the OS):
- the vast.ai simulator (``gpubot sim``, in its own process like the real remote API, or
  in-process with ``--sim-in-process``) behind the real ``VastAIProvider``;
- the Slack Web API fake (``tests/fixtures/slack_fake.py``);
- gpubot's Bolt app (``bot.app.build_app``) served by ``bot.http.make_http_server`` (the
  threaded werkzeug WSGI server ``gpubot serve`` uses in HTTP mode);
- a bare Bolt app whose ``/gpu`` listener only acks, served by the same server code with the
  same signing secret (request verification on in both).

Each round fires ``--concurrency`` signed slash-command requests at once (a barrier releases
the client threads together) and records each request's wall time until the HTTP response
(the ack body) is read. One warm-up request per app is not counted. Database: SQLite (the
default ``GPUBOT_HOME`` file) and, if reachable, a throwaway PostgreSQL database.

Prints p50/p99 per app and the ratio gpubot / bare. No assertions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()

import requests  # noqa: E402

BOT_TOKEN = "xoxb-fake-bot-token-1234"
SIGNING_SECRET = "bench-signing-secret-0123456789"
CHANNEL = "CBENCH01"
CONFIG_TOML = """
[roles]
per_user_max_live_jobs = 1000
per_channel_max_live_jobs = 1000
approval_above_price_per_hour_usd = 100
approval_above_estimate_usd = 10000

[budgets]
team_monthly_usd = 1000000
user_monthly_usd = 1000000
channel_monthly_usd = 1000000
"""


def command_body(text: str, *, user: str, trigger: str) -> str:
    return urlencode(
        {
            "token": "deprecated",
            "team_id": "T0FAKE",
            "team_domain": "fake",
            "channel_id": CHANNEL,
            "channel_name": "gpu",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/gpu",
            "text": text,
            "api_app_id": "A0GPUBOT",
            "is_enterprise_install": "false",
            "response_url": "http://127.0.0.1:9/webhook",
            "trigger_id": trigger,
        }
    )


def bare_app(slack_url: str) -> Any:
    from slack_bolt import App
    from slack_sdk import WebClient

    app = App(
        client=WebClient(token=BOT_TOKEN, base_url=slack_url),
        signing_secret=SIGNING_SECRET,
        request_verification_enabled=True,
        token_verification_enabled=False,
        process_before_response=False,
    )

    @app.command("/gpu")
    def gpu(ack: Callable[..., None]) -> None:
        ack(text="ok", response_type="ephemeral")

    return app


def fire(url: str, n: int, round_no: int, tag: str) -> tuple[list[float], list[int]]:
    """``n`` concurrent signed requests; returns (latencies in s, HTTP statuses)."""
    barrier = threading.Barrier(n)
    latencies: list[float] = [0.0] * n
    statuses: list[int] = [0] * n

    def one(i: int) -> None:
        session = requests.Session()
        session.trust_env = False
        user = f"U{i:05d}"
        body = command_body("train lr=2e-5", user=user, trigger=f"{tag}.{round_no}.{i}.trig")
        headers = c.slack_headers(body, SIGNING_SECRET)
        barrier.wait()
        started = time.perf_counter()
        try:
            response = session.post(url, data=body, headers=headers, timeout=60)
            statuses[i] = response.status_code
        except requests.RequestException:
            statuses[i] = -1
        latencies[i] = time.perf_counter() - started
        session.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, statuses


def serve(app: Any, deps: Any) -> tuple[Any, str]:
    from bot.http import make_http_server

    server = make_http_server(app, deps, host="127.0.0.1", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/slack/events"


class SimProcess:
    """``gpubot sim`` in its own process (vast.ai is remote: its CPU must not share our GIL)."""

    def __init__(self, home: Path) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpubot.sim.server", "--port", "0", "--home", str(home)],
            stdout=subprocess.PIPE, text=True, cwd=str(c.REPO),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = line.split("serving ", 1)[1].split()[0]
        self.api_key = "sim-local-key"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def measure(db: str, db_url: str | None, home: Path, sim: Any, slack: Any,
            rounds: int, concurrency: int) -> list[list[object]]:
    from bot.app import build_app
    from gpubot.config import load_config_text
    from gpubot.providers.vastai.provider import VastAIProvider
    from gpubot.settings import Settings
    from gpubot.testing.fakes import MemoryStore
    from gpubot.wiring import build_engine_deps

    class Kicks:
        def kick(self) -> None:
            return None

    settings = Settings(
        GPUBOT_HOME=home,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=slack.url,
        GPUBOT_DATABASE_URL=db_url or f"sqlite:///{home / 'gpubot.db'}",
    )
    deps = build_engine_deps(
        settings,
        config=load_config_text(CONFIG_TOML),
        provider=VastAIProvider(api_key=sim.api_key, server_url=sim.url),
        store=MemoryStore(),
        enqueuer=Kicks(),
    )
    c.quiet()
    results: dict[str, tuple[list[float], list[int]]] = {}
    serial: dict[str, float] = {}
    for name, app in (("bare Bolt (ack only)", bare_app(slack.url)),
                      ("gpubot", build_app(deps, settings=deps.settings))):
        server, url = serve(app, deps)
        try:
            fire(url, 1, 0, f"warm-{db}-{name[:4]}")
            one_by_one = [fire(url, 1, -k, f"serial-{db}-{name[:4]}")[0][0] for k in range(10)]
            serial[name] = c.median(one_by_one)
            lats: list[float] = []
            codes: list[int] = []
            for r in range(1, rounds + 1):
                la, st = fire(url, concurrency, r, f"{db}-{name[:4]}")
                lats += la
                codes += st
            results[name] = (lats, codes)
        finally:
            server.shutdown()
            server.server_close()
            # Listeners that missed Bolt's 3 s ack wait keep running in Bolt's executor:
            # let them finish before the database goes away.
            runner = getattr(app, "_listener_runner", None)
            executor = getattr(runner, "listener_executor", None)
            if executor is not None:
                executor.shutdown(wait=True)
    from sqlalchemy import func, select

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import JobRow

    with session_scope(deps.sessions) as session:
        jobs_created = int(session.scalar(select(func.count()).select_from(JobRow)) or 0)
    rows: list[list[object]] = []
    bare_p50 = c.percentile(results["bare Bolt (ack only)"][0], 50)
    bare_p99 = c.percentile(results["bare Bolt (ack only)"][0], 99)
    for name, (lats, codes) in results.items():
        p50, p99 = c.percentile(lats, 50), c.percentile(lats, 99)
        ok = sum(1 for s in codes if s == 200)
        rows.append([
            db, name, f"{serial[name] * 1000:.0f}", len(lats), ok,
            f"{p50 * 1000:.0f}", f"{p99 * 1000:.0f}",
            f"{max(lats) * 1000:.0f}", f"{p50 / bare_p50:.1f}x", f"{p99 / bare_p99:.1f}x",
            sum(1 for x in lats if x >= 3.0),
            jobs_created if name == "gpubot" else "-",
        ])
    deps.sessions.kw["bind"].dispose()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4, help="bursts per app and database")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--sim-in-process", action="store_true",
                        help="run the simulator in this process (its CPU then competes)")
    args = parser.parse_args()

    from gpubot.sim.server import SimServer

    sys.path.insert(0, str(c.REPO))
    from tests.fixtures.slack_fake import SlackFake

    c.print_header(
        f"ack latency: {args.rounds} bursts x {args.concurrency} concurrent signed "
        "`/gpu train lr=2e-5` (werkzeug threaded WSGI server, 127.0.0.1)"
    )
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="gpubot-bench-ack-") as tmp:
        sim: Any = (SimServer(home=Path(tmp) / "sim").start() if args.sim_in_process
                    else SimProcess(Path(tmp) / "sim"))
        slack = SlackFake(token=BOT_TOKEN).start()
        try:
            if args.db in ("sqlite", "both"):
                rows += measure("sqlite", None, Path(tmp) / "home-sqlite", sim, slack,
                                args.rounds, args.concurrency)
            if args.db in ("postgres", "both"):
                if c.pg_available():
                    with c.pg_database("gpubot_bench_ack") as url:
                        rows += measure("postgres", url, Path(tmp) / "home-pg", sim, slack,
                                        args.rounds, args.concurrency)
                else:
                    print(f"PostgreSQL not reachable at {c.PG_ADMIN_URL}: skipped")
        finally:
            slack.stop()
            sim.stop()
    print(c.table(
        ["db", "app", "alone ms", "requests", "HTTP 200", "p50 ms", "p99 ms", "max ms",
         "p50 vs bare", "p99 vs bare", ">=3 s", "jobs"],
        rows,
    ))
    print("'alone ms' = median of 10 requests sent one at a time (service time, no queueing).")
    print("'jobs' = job rows gpubot wrote (warm-up and one-at-a-time requests included).")
    print("Bolt runs listeners in a 5-thread pool and waits at most 3 s for ack(); a request "
          "not acked by then gets HTTP 404 (counted as not 200).")
    print("p99 is nearest-rank over all requests of all bursts; '>=3 s' would miss "
          "Slack's ack deadline.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
