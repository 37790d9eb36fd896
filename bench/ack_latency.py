"""Ack latency of every ``/gpu`` verb through the bot's HTTP front, vs a bare Bolt app.

Setup (all on 127.0.0.1, ports chosen by the OS):
- the vast.ai simulator (``gpubot sim``, in its own process like the real remote API, or
  in-process with ``--sim-in-process``) behind the real ``VastAIProvider``, reached through
  a forwarding proxy that holds every offer search (``/bundles/``) for ``--search-delay``
  seconds (default 2 s: a slow vast search, e.g. one 429 retry) before forwarding it;
- the Slack Web API fake (``tests/fixtures/slack_fake.py``), which also takes the
  response_url posts; it and the proxy run in their own process (``bench/_ack_remote.py``):
  Slack and vast are remote, their CPU must not share the measured process's GIL;
- gpubot's Bolt app (``bot.app.build_app``) served by ``bot.http.make_http_server`` (the
  threaded werkzeug WSGI server ``gpubot serve`` uses in HTTP mode), in two answer modes
  (``--modes``): ``queue`` (what ``gpubot serve`` runs: the ack enqueues the answer on the
  ``answers`` queue of the Redis server and a real Celery worker process,
  ``bench/_ack_worker.py``, answers) and ``inline`` (the answer runs as a Bolt lazy listener
  in the HTTP process: the "before");
- a bare Bolt app whose ``/gpu`` listener only acks, served by the same server code with the
  same signing secret (request verification on in both).

Each round fires ``--concurrency`` signed slash-command requests at once (a barrier releases
the client threads together), cycling through the verbs in ``VERBS`` (launches and ``offers``
search vast), and records each request's wall time until the HTTP response (the ack body) is
read. Each request has its own response_url on the Slack fake; the answer time is when the
last response_url post for it arrived (or the ack, when the ack carried the answer). Each
burst's answers are awaited before the next burst, and the apps take turns burst by burst
(round-robin), so that each meets the same load from the rest of a shared machine. One
warm-up request per app is not counted. Database: SQLite (the default ``GPUBOT_HOME`` file)
and, if reachable, a throwaway PostgreSQL database.

Prints the load average before and after, p50/p99 of the ack per app and per verb, the ratio
gpubot / bare, and the answer times. No assertions.
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


VERBS = ("train lr=2e-5", "offers gpu=4090", "jobs", "status", "help")
"""One burst cycles through these: two search vast (launch, offers), three only read."""
ACK_PLACEHOLDER = "Working on it"
BARE = "bare Bolt (ack only)"
INLINE = "gpubot inline"
"""Answers as Bolt lazy listeners in the HTTP process (before)."""
QUEUE = "gpubot queue"
"""Answers enqueued for a Celery worker process (``gpubot serve``)."""
BENCH_REDIS_URL = "redis://127.0.0.1:6379/13"
"""Database 7: the tests use 8-15 (tests/services_available.py), and each queue-mode run
flushes it."""


def command_body(text: str, *, user: str, trigger: str, response_url: str) -> str:
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
            "response_url": response_url,
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


class Sample:
    """One request: its verb, ack time, HTTP status, and when its answer arrived."""

    def __init__(self, verb: str, path: str) -> None:
        self.verb = verb
        self.path = path
        self.started = 0.0
        self.ack_s = 0.0
        self.status = 0
        self.answered_in_ack = False
        self.answer_s: float | None = None


def fire(url: str, slack: Any, n: int, round_no: int, tag: str) -> list[Sample]:
    """``n`` concurrent signed requests (verbs cycling through ``VERBS``)."""
    barrier = threading.Barrier(n)
    samples = [Sample(VERBS[i % len(VERBS)], f"/webhook/{tag}/{round_no}/{i}") for i in range(n)]
    base = slack.webhook_url.split("/webhook/")[0]

    def one(i: int) -> None:
        sample = samples[i]
        session = requests.Session()
        session.trust_env = False
        user = f"U{i:05d}"
        body = command_body(sample.verb, user=user, trigger=f"{tag}.{round_no}.{i}.trig",
                            response_url=base + sample.path)
        headers = c.slack_headers(body, SIGNING_SECRET)
        barrier.wait()
        sample.started = time.monotonic()
        try:
            response = session.post(url, data=body, headers=headers, timeout=60)
            sample.status = response.status_code
            sample.answered_in_ack = (response.status_code == 200
                                      and ACK_PLACEHOLDER not in response.text)
        except requests.RequestException:
            sample.status = -1
        sample.ack_s = time.monotonic() - sample.started
        session.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def collect_answers(remote: RemoteServices, samples: list[Sample],
                    timeout_s: float = 120.0) -> None:
    """Fill ``answer_s``: the ack when it carried the answer, else the last response_url post
    for the request (polls the remote process's log until every request has one, or until
    ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        last: dict[str, float] = {}
        for path, at in remote.webhook_posts():
            last[path] = max(last.get(path, 0.0), at)
        for s in samples:
            if s.answered_in_ack:
                s.answer_s = s.ack_s
            elif s.path in last:
                s.answer_s = last[s.path] - s.started
        if all(s.answer_s is not None or s.status != 200 for s in samples):
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


class RemoteServices:
    """``bench/_ack_remote.py`` in its own process: the Slack fake and the slow-search proxy."""

    def __init__(self, sim_url: str, search_delay_s: float) -> None:
        import json
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parent / "_ack_remote.py"),
             "--upstream", sim_url, "--search-delay", str(search_delay_s), "--token", BOT_TOKEN],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(c.REPO),
        )
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.url: str = info["slack_url"]
        self.webhook_url: str = info["webhook_url"]
        self.proxy_url: str = info["proxy_url"]
        self.log_url: str = info["log_url"]
        self._session = requests.Session()
        self._session.trust_env = False
        self._posts: list[tuple[str, float]] = []

    def webhook_posts(self) -> list[tuple[str, float]]:
        """Every response_url post so far: (path, ``time.monotonic()`` at arrival)."""
        got = self._session.get(self.log_url, params={"from": len(self._posts)}, timeout=30)
        self._posts += [(str(p), float(at)) for p, at in got.json()["posts"]]
        return list(self._posts)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.proc.kill()


class WorkerProcess:
    """``bench/_ack_worker.py``: a Celery worker process consuming the ``answers`` queue."""

    def __init__(self, *, home: Path, db_url: str, config: Path, remote: RemoteServices,
                 api_key: str, broker: str, concurrency: int) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parent / "_ack_worker.py"),
             "--home", str(home), "--db-url", db_url, "--config", str(config),
             "--slack-url", remote.url, "--vast-url", remote.proxy_url, "--api-key", api_key,
             "--token", BOT_TOKEN, "--broker", broker, "--concurrency", str(concurrency)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(c.REPO),
        )
        assert self.proc.stdout is not None
        import select

        deadline = time.monotonic() + 120
        line = ""
        while line.strip() != "ready":  # Celery prints its banner on stdout first
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            line = self.proc.stdout.readline() if ready else ""
            if not ready or (not line and self.proc.poll() is not None):
                self.stop()
                raise RuntimeError("the bench worker did not start within 120 s")

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: Celery's warm shutdown
        try:
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def serve(app: Any, deps: Any, cpu_s: list[float]) -> tuple[Any, str]:
    """Serve ``app`` as ``gpubot serve`` does; each request's CPU time in the thread that
    handled it (``time.thread_time()``, the WSGI call: verification, Bolt, the ack function)
    is appended to ``cpu_s``."""
    from bot.http import make_http_server

    server = make_http_server(app, deps, host="127.0.0.1", port=0)
    inner = server.app

    def timed(environ: dict[str, Any], start_response: Any) -> Any:
        began = time.thread_time()
        try:
            return inner(environ, start_response)
        finally:
            cpu_s.append(time.thread_time() - began)

    server.app = timed
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


def redis_available(url: str) -> bool:
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used (``/proc/<pid>/stat``; 0 when
    it is gone)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    """The 1/5/15-minute load averages (``/proc/loadavg``)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(db: str, db_url: str | None, home: Path, sim: Any, remote: RemoteServices,
            rounds: int, concurrency: int, modes: list[str], broker: str | None,
            worker_threads: int) -> tuple[list[list[object]], list[list[object]]]:
    from bot.app import build_app
    from gpubot.config import load_config_text
    from gpubot.providers.vastai.provider import VastAIProvider
    from gpubot.settings import Settings
    from gpubot.testing.fakes import MemoryStore
    from gpubot.wiring import build_engine_deps

    class Kicks:
        def kick(self) -> None:
            return None

    home.mkdir(parents=True, exist_ok=True)
    config_path = home / "bench.toml"
    config_path.write_text(CONFIG_TOML)
    database_url = db_url or f"sqlite:///{home / 'gpubot.db'}"
    settings = Settings(
        GPUBOT_HOME=home,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=remote.url,
        GPUBOT_DATABASE_URL=database_url,
        GPUBOT_BROKER_URL=broker,
    )
    deps = build_engine_deps(
        settings,
        config=load_config_text(CONFIG_TOML),
        provider=VastAIProvider(api_key=sim.api_key, server_url=remote.proxy_url),
        store=MemoryStore(),
        enqueuer=Kicks(),
    )
    c.quiet()
    from sqlalchemy import func, select

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import JobRow

    def job_count() -> int:
        with session_scope(deps.sessions) as session:
            return int(session.scalar(select(func.count()).select_from(JobRow)) or 0)

    results: dict[str, list[Sample]] = {}
    serial: dict[str, float] = {}
    jobs: dict[str, int] = {}
    cpu_ms: dict[str, tuple[float, float, float, float]] = {}
    """Per app: the median CPU ms of one request's handling, their sum per burst, this
    process's CPU ms per burst while it is acked, and the other processes' (worker, remote
    services, simulator)."""
    apps: list[tuple[str, Callable[[], Any]]] = [
        (BARE, lambda: bare_app(remote.url))]
    if "inline" in modes:
        apps.append((INLINE, lambda: build_app(deps, settings=deps.settings)))
    if "queue" in modes and broker is not None:
        from app.serve import answer_sender
        from workers.celery_app import app as celery
        from workers.celery_app import celery_config

        celery.conf.update(celery_config(settings))
        apps.append((QUEUE, lambda: build_app(
            deps, settings=deps.settings, answers="queue", send_task=answer_sender(celery))))
    worker = None
    if any(name == QUEUE for name, _ in apps):
        assert broker is not None
        import redis

        redis.Redis.from_url(broker).flushdb()
        worker = WorkerProcess(home=home, db_url=database_url, config=config_path,
                               remote=remote, api_key=sim.api_key, broker=broker,
                               concurrency=worker_threads)
    others = [remote.proc.pid] + [p.proc.pid for p in (sim, worker)
                                  if isinstance(p, SimProcess | WorkerProcess)]
    running: dict[str, tuple[Any, Any, str, list[float], str]] = {}
    """Per app: the Bolt app, its server, URL, per-request CPU list and request tag."""
    for name, make in apps:
        app = make()
        cpu: list[float] = []
        server, url = serve(app, deps, cpu)
        running[name] = (app, server, url, cpu, f"{db}-{name.split()[-1][:6]}")
    here_s = dict.fromkeys(running, 0.0)
    elsewhere_s = dict.fromkeys(running, 0.0)
    try:
        for name, (_, _, url, cpu, tag) in running.items():
            before = job_count()
            warm = fire(url, remote, 1, 0, f"warm-{tag}")
            one_by_one = [fire(url, remote, 1, -k, f"serial-{tag}")[0] for k in range(10)]
            serial[name] = c.median([s.ack_s for s in one_by_one])
            if name != BARE:
                collect_answers(remote, warm + one_by_one)
            del cpu[:]  # the bursts' requests only
            jobs[name] = job_count() - before
            results[name] = []
        # Round-robin: burst r of every app, then burst r + 1, so that each app meets the
        # same load from the rest of the machine.
        for r in range(1, rounds + 1):
            for name, (_, _, url, _, tag) in running.items():
                before = job_count()
                here0, there0 = time.process_time(), sum(proc_cpu_s(p) for p in others)
                burst = fire(url, remote, concurrency, r, tag)
                here_s[name] += time.process_time() - here0
                elsewhere_s[name] += sum(proc_cpu_s(p) for p in others) - there0
                if name != BARE:
                    collect_answers(remote, burst)
                results[name] += burst
                jobs[name] += job_count() - before
        for name, (_, _, _, cpu, _) in running.items():
            cpu_ms[name] = (c.median(cpu) * 1000, sum(cpu) * 1000 / max(1, rounds),
                            here_s[name] * 1000 / max(1, rounds),
                            elsewhere_s[name] * 1000 / max(1, rounds))
    finally:
        for app, server, _, _, _ in running.values():
            server.shutdown()
            server.server_close()
            # Listeners (and lazy answers) still running in Bolt's executor: let them finish
            # before the database goes away.
            runner = getattr(app, "_listener_runner", None)
            executor = getattr(runner, "listener_executor", None)
            if executor is not None:
                executor.shutdown(wait=True)
        if worker is not None:
            worker.stop()
    rows: list[list[object]] = []
    bare = [s.ack_s for s in results[BARE]]
    bare_p50, bare_p99 = c.percentile(bare, 50), c.percentile(bare, 99)
    for name, samples in results.items():
        lats = [s.ack_s for s in samples]
        p50, p99 = c.percentile(lats, 50), c.percentile(lats, 99)
        ok = sum(1 for s in samples if s.status == 200)
        rows.append([
            db, name, f"{serial[name] * 1000:.0f}", len(lats), ok,
            f"{p50 * 1000:.0f}", f"{p99 * 1000:.0f}",
            f"{max(lats) * 1000:.0f}", f"{p50 / bare_p50:.2f}x", f"{p99 / bare_p99:.2f}x",
            sum(1 for x in lats if x >= 3.0),
            jobs[name] if name != BARE else "-",
            f"{cpu_ms[name][0]:.1f}", f"{cpu_ms[name][1]:.0f}", f"{cpu_ms[name][2]:.0f}",
            f"{cpu_ms[name][3]:.0f}",
        ])
    verb_rows: list[list[object]] = []
    for name in (INLINE, QUEUE):
        if name not in results:
            continue
        for verb in VERBS:
            mine = [s for s in results[name] if s.verb == verb]
            acks = [s.ack_s for s in mine]
            answers = [s.answer_s for s in mine if s.answer_s is not None]
            verb_rows.append([
                db, name, verb, len(mine), f"{c.percentile(acks, 50) * 1000:.0f}",
                f"{c.percentile(acks, 99) * 1000:.0f}",
                f"{c.percentile(acks, 99) / bare_p99:.2f}x",
                f"{c.percentile(answers, 50):.2f}" if answers else "-",
                f"{c.percentile(answers, 99):.2f}" if answers else "-",
                len(mine) - len(answers),
            ])
    deps.sessions.kw["bind"].dispose()
    return rows, verb_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4, help="bursts per app and database")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--modes", default="inline,queue",
                        help="gpubot answer modes to measure: inline, queue or both")
    parser.add_argument("--broker", default=BENCH_REDIS_URL,
                        help="Redis for queue mode (flushed before each queue-mode run)")
    parser.add_argument("--worker-threads", type=int, default=10,
                        help="threads of the queue-mode worker process")
    parser.add_argument("--search-delay", type=float, default=2.0,
                        help="seconds each vast offer search is held by the proxy (0: none)")
    parser.add_argument("--sim-in-process", action="store_true",
                        help="run the simulator in this process (its CPU then competes)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    from gpubot.sim.server import SimServer

    sys.path.insert(0, str(c.REPO))
    broker: str | None = args.broker
    if "queue" in modes and not redis_available(args.broker):
        print(f"Redis not reachable at {args.broker}: queue mode skipped")
        broker = None
    c.print_header(
        f"ack latency: {args.rounds} bursts x {args.concurrency} concurrent signed `/gpu` "
        f"requests ({', '.join(VERBS)}), vast search held {args.search_delay:g} s "
        "(werkzeug threaded WSGI server, 127.0.0.1)"
    )
    print(f"load average before: {load()}")
    rows: list[list[object]] = []
    verb_rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="gpubot-bench-ack-") as tmp:
        sim: Any = (SimServer(home=Path(tmp) / "sim").start() if args.sim_in_process
                    else SimProcess(Path(tmp) / "sim"))
        remote = RemoteServices(sim.url, args.search_delay)
        try:
            if args.db in ("sqlite", "both"):
                r, v = measure("sqlite", None, Path(tmp) / "home-sqlite", sim, remote,
                               args.rounds, args.concurrency, modes, broker,
                               args.worker_threads)
                rows += r
                verb_rows += v
                print(f"load average after sqlite: {load()}")
            if args.db in ("postgres", "both"):
                if c.pg_available():
                    with c.pg_database("gpubot_bench_ack") as url:
                        r, v = measure("postgres", url, Path(tmp) / "home-pg", sim, remote,
                                       args.rounds, args.concurrency, modes, broker,
                                       args.worker_threads)
                        rows += r
                        verb_rows += v
                    print(f"load average after postgres: {load()}")
                else:
                    print(f"PostgreSQL not reachable at {c.PG_ADMIN_URL}: skipped")
        finally:
            remote.stop()
            sim.stop()
    print(c.table(
        ["db", "app", "alone ms", "requests", "HTTP 200", "p50 ms", "p99 ms", "max ms",
         "p50 vs bare", "p99 vs bare", ">=3 s", "jobs", "CPU ms/req", "CPU ms/burst",
         "bench CPU ms/burst", "others CPU ms/burst"],
        rows,
    ))
    print(c.table(
        ["db", "app", "verb", "requests", "ack p50 ms", "ack p99 ms", "ack p99 vs bare p99",
         "answer p50 s", "answer p99 s", "no answer"],
        verb_rows,
    ))
    print("'alone ms' = median of 10 requests sent one at a time (service time, no queueing).")
    print("'answer' = request sent -> last response_url post for it (or the ack when the ack "
          "carried the answer); 'no answer' = none within 120 s after the burst.")
    print("'CPU ms/req' = median CPU time of one request's WSGI call in its server thread "
          "(time.thread_time: verification, Bolt, the ack function; queueing for the GIL not "
          "counted); 'CPU ms/burst' = their sum per burst.")
    print("'bench CPU ms/burst' = this process's CPU (client threads, HTTP server, in-process "
          "answers) from a burst's start to its last ack; 'others CPU ms/burst' = the same "
          "interval in the other processes (queue-mode worker, Slack fake + proxy, simulator; "
          "10 ms ticks). 2 cores in all.")
    print("'jobs' = job rows the app wrote (warm-up and one-at-a-time requests included).")
    print(f"queue mode: one worker process, {args.worker_threads} threads, consuming the "
          "'answers' queue from Redis.")
    print("p99 is nearest-rank over all requests of all bursts; '>=3 s' would miss "
          "Slack's ack deadline.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
