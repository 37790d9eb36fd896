"""``gpubot demo``: the whole product on embedded defaults, in one process.

Starts the vast.ai simulator (HTTP + per-instance SSH), a local S3-compatible server (moto),
a Celery worker and Celery beat on the embedded broker, then plays a scripted chat session
through the same command handlers Slack uses, printing each job's thread as it happens.
No keys, no servers to install. Simulated time runs faster than the wall clock
(``SIM_SPEED``), so idle timeouts and costs are visible within minutes.

Needs the ``demo`` extra (``pip install -e '.[demo]'``): moto's S3 server, and pypdf, which
the OCR job uses on the simulated instances to read the generated sample PDFs (it falls back
to a minimal parser without it). Without moto, :func:`run_demo` says so and returns 2.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

SIM_SPEED = 12.0
"""Simulated seconds per real second."""
DEMO_TICK_SECONDS = 0.5
DEMO_CONFIG = """
[idle]
gpu_util_threshold_pct = 5
window_minutes = 2
grace_minutes = 2
stuck_window_minutes = 30

[engine]
max_attempts = 3
"""
DEMO_INPUT = """
[inputs.samples]
src = "{folder}"
description = "generated sample PDFs"
max_files = 100
"""
"""The demo's declared input: users name it (``/gpu ocr src=samples shards=2``), never a path.
Its folder is outside GPUBOT_HOME, as config validation requires."""
DEMO_INPUT_PDFS = 8
DEMO_TRAIN_STEPS = 1500
"""Steps of the demo's train job: about 30 s of real time (0.02 s a step), long enough
for the outbid to land mid-run and the resumed run to have work left."""
MISSING_EXTRA_EXIT = 2
MISSING_EXTRA_MESSAGE = (
    "gpubot demo needs the 'demo' extra (moto's local S3 server, pypdf for the OCR samples), "
    "which is not installed ({missing}). Install it with:\n"
    "  pip install -e '.[demo]'      (from a checkout; or: pip install 'gpubot[demo]')"
)


def missing_demo_extra() -> str | None:
    """The module of the ``demo`` extra that cannot be imported, or None when it is usable."""
    try:
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError as exc:
        return exc.name or "moto[server]"
    return None


class _Printer:
    """Prints a job's thread from the outbox: new messages, and card changes as lines."""

    def __init__(self, deps: Any, out: TextIO) -> None:
        self.deps = deps
        self.out = out
        self.seen_ids: set[int] = set()
        self.card_versions: dict[int, int] = {}

    def poll(self, job_ids: set[str], *, replies_only: set[str] | None = None) -> None:
        """Print what is new for ``job_ids``; for ``replies_only`` jobs (sweep children, whose
        group card summarises them) only their replies."""
        from sqlalchemy import select

        from gpubot.db.engine import session_scope
        from gpubot.db.tables import MessageRow

        with session_scope(self.deps.sessions) as session:
            rows = list(
                session.scalars(
                    select(MessageRow)
                    .where(MessageRow.job_id.in_(job_ids))
                    .order_by(MessageRow.id)
                )
            )
            for row in rows:
                if replies_only and row.job_id in replies_only and row.kind != "reply":
                    continue
                if row.kind == "card":
                    if self.card_versions.get(row.id) != row.version:
                        self.card_versions[row.id] = row.version
                        first = row.text.splitlines()
                        self._print("   │ " + " · ".join(first))
                    continue
                if row.id in self.seen_ids:
                    continue
                self.seen_ids.add(row.id)
                prefix = "   ┌ " if row.kind == "parent" else "   ├ "
                for i, line in enumerate(row.text.splitlines()):
                    self._print((prefix if i == 0 else "   │   ") + line)

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(
    *, interactive: bool = False, keep_home: str | None = None, out: TextIO = sys.stdout
) -> int:
    """Run the scripted session; 0 when every step did what it should, 1 when a check failed.

    Returns :data:`MISSING_EXTRA_EXIT` (2), with a message on stderr naming the ``demo``
    extra, when moto's server is not installed; nothing is started then.
    """
    missing = missing_demo_extra()
    if missing is not None:
        print(MISSING_EXTRA_MESSAGE.format(missing=missing), file=sys.stderr)
        return MISSING_EXTRA_EXIT
    home = Path(keep_home) if keep_home else Path(tempfile.mkdtemp(prefix="gpubot-demo-"))
    home.mkdir(parents=True, exist_ok=True)
    inputs_dir = Path(tempfile.mkdtemp(prefix="gpubot-demo-inputs-"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(var, None)
    os.environ["GPUBOT_HOME"] = str(home)
    # Everything runs in this process, so kombu's in-memory transport is the embedded broker
    # here (gpubotfs://, the embedded folder transport, is for separate worker, beat and chat
    # processes).
    os.environ["GPUBOT_BROKER_URL"] = "memory://"
    os.environ["GPUBOT_TICK_SECONDS"] = str(DEMO_TICK_SECONDS)

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("werkzeug", "moto", "botocore", "celery", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A peer closing an SSH socket is routine here (short-lived sessions per step).
    logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(f"gpubot demo — state in {home}")
    say("starting: vast.ai simulator, local S3 (moto), Celery worker + beat (embedded broker)")
    from moto.server import ThreadedMotoServer

    s3_port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
        AWS_ACCESS_KEY_ID="demo-access-key",
        AWS_SECRET_ACCESS_KEY="demo-secret-key",
        AWS_DEFAULT_REGION="us-east-1",
    )
    from gpubot.sim.server import SimServer

    sim = SimServer(home=home / "sim", seed=42, speed=SIM_SPEED)
    sim.start()
    os.environ.update(VAST_URL=sim.url, VAST_API_KEY=sim.api_key, GPUBOT_S3_BUCKET="gpubot-demo")
    worker_ctx = None
    beat = None
    try:
        from gpubot.config import load_config_text
        from gpubot.settings import Settings
        from gpubot.storage.s3 import S3Store
        from gpubot.wiring import build_engine_deps
        from workers import runtime

        settings = Settings()
        store = S3Store("gpubot-demo", settings.s3_prefix)
        _wait(lambda: _try(store.ensure_bucket), 20, "local S3")

        def clock() -> datetime:
            return datetime.fromtimestamp(sim.engine.now(), UTC)

        from gpubot.jobs.ocr.make_pdfs import make_pdfs

        make_pdfs(inputs_dir, DEMO_INPUT_PDFS)
        config_text = DEMO_CONFIG + DEMO_INPUT.format(folder=inputs_dir)
        deps = build_engine_deps(
            settings,
            config=load_config_text(config_text, name="demo.toml", home=home),
            store=store,
            clock=clock,
            enqueuer=runtime.CeleryKicker(),
        )
        runtime.install(deps)
        from celery.beat import EmbeddedService
        from celery.contrib.testing.worker import start_worker

        from app.worker import app as celery
        from workers.celery_app import celery_config

        celery.conf.update(celery_config(settings))
        worker_ctx = start_worker(
            celery,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            shutdown_timeout=10,
            loglevel="WARNING",
        )
        worker_ctx.__enter__()
        beat = EmbeddedService(celery, thread=True)
        beat.start()
        say(f"simulator at {sim.url} (time runs {SIM_SPEED:g}x), S3 at 127.0.0.1:{s3_port}\n")
        ok = _script(deps, sim, say, out)
        if interactive:
            _prompt(deps, out)
        return 0 if ok else 1
    finally:
        # A tick may still be in flight while everything shuts down: its failed listing is
        # expected here, not news.
        logging.getLogger("gpubot.engine.tick").setLevel(logging.ERROR)
        if beat is not None:
            beat.stop()
        if worker_ctx is not None:
            worker_ctx.__exit__(None, None, None)
        sim.stop()
        moto.stop()
        shutil.rmtree(inputs_dir, ignore_errors=True)
        if keep_home is None:
            shutil.rmtree(home, ignore_errors=True)


def _try(fn: Callable[[], Any]) -> bool:
    try:
        fn()
        return True
    except Exception:  # noqa: BLE001 - readiness probe
        return False


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _command(deps: Any, text: str, say: Callable[[str], None], key: str) -> Any:
    from gpubot.chat.dispatch import handle_command

    say(f"\n> {text}")
    reply = handle_command(deps, text, user="U_DEMO", channel="C_DEMO", request_key=key)
    for line in reply.text.splitlines():
        say(f"  {line}")
    return reply


def _job_state(deps: Any, job_id: str) -> Any:
    from gpubot.db.engine import session_scope
    from gpubot.db.tables import JobRow

    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, job_id)
        if job is not None:
            session.expunge(job)
        return job


def _follow(
    deps: Any,
    job_ids: set[str],
    printer: _Printer,
    *,
    timeout_s: float,
    on_poll: Callable[[], None] | None = None,
    wait_for: set[str] | None = None,
    replies_only: set[str] | None = None,
) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        printer.poll(job_ids, replies_only=replies_only)
        if on_poll is not None:
            on_poll()
        states = {j: _job_state(deps, j).state for j in (wait_for or job_ids)}
        if all(s in {"succeeded", "failed", "cancelled"} for s in states.values()):
            printer.poll(job_ids)
            return states
        time.sleep(0.25)
    return states


def _script(deps: Any, sim: Any, say: Callable[[str], None], out: TextIO) -> bool:
    from sqlalchemy import func, select

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import InstanceRow, JobRow, LedgerEntryRow

    printer = _Printer(deps, out)
    ok = True
    _command(deps, "/gpu offers gpu_ram=24", say, "demo-1")

    # 1. a training job, outbid mid-run, resumed from its checkpoint. The run must outlast
    # the first polls: 300 default steps took about 6 s of real time, and the first running
    # poll that backs up a checkpoint comes a few seconds after the start (one SSH session of
    # status, log and checkpoint listing per tick, list calls paced at 1 s), so the job often
    # finished before the hook saw it running with a checkpoint.
    reply = _command(deps, f"/gpu train lr=2e-5 steps={DEMO_TRAIN_STEPS}", say, "demo-2")
    train_id = reply.job_id
    outbid_done: dict[str, bool] = {"done": False}
    outbid_at: dict[str, str] = {}

    def outbid_once() -> None:
        """Outbid the train job's instance once, on the first poll that sees it running with a
        backed-up checkpoint and steps still to go (a real mid-run outbid)."""
        job = _job_state(deps, train_id)
        if outbid_done["done"] or job is None or job.state != "running" or not job.checkpoint_key:
            return
        if int((job.progress or {}).get("step") or 0) >= DEMO_TRAIN_STEPS:
            return
        with session_scope(deps.sessions) as session:
            row = session.scalars(
                select(InstanceRow)
                .where(InstanceRow.job_id == train_id, InstanceRow.destroyed_at.is_(None))
                .order_by(InstanceRow.id.desc())
            ).first()
            provider_id = row.provider_id if row else None
        if provider_id:
            say(f"   ⚡ [demo] the host outbids instance {provider_id}")
            sim.control.outbid(provider_id)
            outbid_done["done"] = True
            outbid_at["step"] = str((job.progress or {}).get("step"))

    states = _follow(deps, {train_id}, printer, timeout_s=240, on_poll=outbid_once)
    ok &= _check(say, states.get(train_id) == "succeeded", "train job succeeded")
    train = _job_state(deps, train_id)
    resumed = str((train.progress or {}).get("resume_from") or "") if train else ""
    resumed_step = int(resumed.rsplit("-", 1)[-1]) if resumed.rsplit("-", 1)[-1].isdigit() else 0
    ok &= _check(
        say,
        outbid_done["done"] and train is not None and train.attempts == 2
        and 0 < resumed_step < DEMO_TRAIN_STEPS,
        f"the outbid happened (at step {outbid_at.get('step', '—')}) and the job resumed "
        f"(from {resumed.rsplit('/', 1)[-1] or 'no checkpoint'} of {DEMO_TRAIN_STEPS} steps)",
    )

    # 2. a sweep
    reply = _command(deps, "/gpu sweep train lr=1e-5,2e-5", say, "demo-3")
    sweep_ids = set(reply.job_ids)
    ok &= _check(say, len(sweep_ids) == 2, "the sweep launched one job per learning rate")
    if sweep_ids:
        printer_ids = sweep_ids | ({reply.job_id} if reply.job_id else set())
        states = _follow(
            deps,
            printer_ids,
            printer,
            timeout_s=240,
            wait_for=sweep_ids,
            replies_only=sweep_ids,
        )
        ok &= _check(
            say, all(s == "succeeded" for s in states.values()), "every sweep child succeeded"
        )

    # 2b. a sharded OCR run over the operator-declared input `samples` (a name, not a path)
    reply = _command(deps, "/gpu ocr src=samples shards=2", say, "demo-3b")
    shard_ids = set(reply.job_ids)
    ok &= _check(say, len(shard_ids) == 2, "the sharded run launched one job per shard")
    if shard_ids:
        states = _follow(
            deps,
            shard_ids | ({reply.job_id} if reply.job_id else set()),
            printer,
            timeout_s=240,
            wait_for=shard_ids,
            replies_only=shard_ids,
        )
        ok &= _check(
            say, all(s == "succeeded" for s in states.values()), "every shard succeeded"
        )

    # 3. an interactive box left idle until the reaper destroys it
    reply = _command(deps, "/gpu rent gpu_ram=24 hours=2", say, "demo-4")
    rent_id = reply.job_id
    states = _follow(deps, {rent_id}, printer, timeout_s=240)
    ok &= _check(say, states.get(rent_id) == "cancelled", "idle box destroyed by the reaper")

    # 4. cost
    _command(deps, "/gpu cost", say, "demo-5")

    # summary
    with session_scope(deps.sessions) as session:
        jobs = list(session.scalars(select(JobRow)))
        spent = Decimal(
            str(session.scalar(select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0))))
        )
        saved = Decimal(0)
        rent = session.get(JobRow, rent_id) if rent_id else None
        if rent is not None and rent.finished_at is not None:
            row = session.scalars(select(InstanceRow).where(InstanceRow.job_id == rent_id)).first()
            planned_hours = Decimal(str((rent.plan or {}).get("expected_hours", 2)))
            used_hours = Decimal(str((rent.finished_at - rent.created_at).total_seconds() / 3600))
            if row is not None:
                saved = max(Decimal(0), (planned_hours - used_hours) * row.price_per_hour_usd)
        leaked = session.scalar(
            select(func.count()).select_from(InstanceRow).where(
                InstanceRow.provider_id.is_not(None), InstanceRow.destroyed_at.is_(None)
            )
        )
    from gpubot.render.text import usd

    say("\n== summary")
    say(f"jobs: {len(jobs)} ({', '.join(sorted(f'{j.id} {j.state}' for j in jobs))})")
    say(f"spent: {usd(spent)} (simulated time)")
    say(f"the idle reaper saved about {usd(saved)} on the forgotten box")
    listed = deps.provider.list_instances()
    ok &= _check(say, leaked == 0 and not listed, "no instance left running")
    say("demo " + ("finished: every step did what it should" if ok else "FAILED"))
    return ok


def _check(say: Callable[[str], None], condition: bool, what: str) -> bool:
    say(f"   {'✔' if condition else '✘'} {what}")
    return condition


def _prompt(deps: Any, out: TextIO) -> None:
    from gpubot.chat.dispatch import handle_command

    print(
        "\ninteractive: type /gpu commands (help, offers, train, ocr src=samples shards=2 ...);"
        " Ctrl-D to quit",
        file=out,
    )
    n = 0
    while True:
        try:
            text = input("gpubot> ")
        except EOFError:
            break
        if not text.strip():
            continue
        n += 1
        reply = handle_command(
            deps, text, user="U_DEMO", channel="C_DEMO", request_key=f"interactive-{n}"
        )
        print(reply.text, file=out)
