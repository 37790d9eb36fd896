"""A simulated month, measured: the real tick and steps over N jobs, waste from the simulator.

Unlike ``bench/month.py`` (kept as the old discrete-event MODEL for comparison), nothing here
is assumed about the engine's reaction times: the real ``reconcile_tick`` and ``advance_job``
run in-process (inline dispatch, PostgreSQL, the production ``VastAIProvider`` on the official
SDK, paramiko SSH, boto3 on moto's S3 server) against the simulator over HTTP, and every dollar
is read from the simulator's own per-instance charge record (``SimEngine.instances[..]``, the
same numbers as ``/_sim/billing`` and ``/charges/``).

Time. The simulator's clock is frozen (speed 0) and moved with ``control.advance``. Ticks sit
on a fixed grid of ``GPUBOT_TICK_SECONDS`` (10 s); a tick whose successor is due at once
(a kicked step) is followed by another tick at the same simulated instant. Grid ticks are
skipped only while nothing can change what the engine would decide: every live job is running
steadily (its process has started), booting (no SSH until the simulator's pull ends), or idle
with its idle/stuck deadline known (``gpubot.engine.idle.next_decision_at``, the engine's own).
Around every event (arrival, outbid, stall, process exit, checkpoint) the grid ticks just before
and just after it run, so ``last_processed_at`` and ``idle_since`` are what a tick every 10 s
would give. At a tick forced by one job's event, the other steadily running jobs (no event of
their own within a tick) are not due (their ``due_at`` is moved past the tick and restored):
polling them would change nothing the engine decides, and it made a tick's cost grow with the
number of running jobs. (One estimate does see fewer polls: a job's observed seconds per
progress step, ``idle.seconds_per_step``, taken between the poll that first saw it and the one
that saw its newest advance; the ticks around its own events keep both.) Steps take no
simulated time (the clock is frozen while they run): SSH deploy, restore and uploads are free
in time.

Instance processes. Each job runs ``work.py`` (written by this script into the job's workdir):
it paces itself on the simulated clock (a file the driver rewrites after every advance), one
progress step per simulated minute, a checkpoint every ``checkpoint_s`` of work (resumed with
``GPUBOT_RESUME_FROM``), writes ``$GPUBOT_REMOTE_ROOT/.sim/gpu_util`` (95 while working, 0
when stalled), and exits 0 after ``work_s``. Its progress file's mtime is the simulated time of
the write: the poll skips a progress file whose size and mtime (whole seconds) are unchanged,
and with real mtimes several simulated minutes of writes fall in one real second, so a
resumed job looked stalled (two of 300 outbid jobs were stopped as stuck). A stuck job stops
advancing at ``stall_at_s`` and sleeps forever with its GPU idle. A forgotten box is
``rent hours=4`` that nobody uses.

Waste (all from the simulator's charges, per instance, between marks taken on its clock):
- ``exit -> destroy``: from the process's exit to the instance being gone (collect included);
- ``stuck``: from the stall to the destroy;
- ``forgotten box``: the whole box (nobody used it);
- ``preemption``: the outbid instance from the checkpoint the job resumed from to its destroy
  (lost work + paused storage) plus the replacement's charges until its process restarted;
- ``orphans``: instances the simulator billed that no job recorded;
- ``unexpected outcome``: everything a job spent when it did not end as its kind should.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

H = 3600.0
M = 60.0
MODELLED = {  # bench/month.py, 1000 jobs, seed 7 (docs/benchmarks.md section 7)
    "exit -> destroy": Decimal("0.05"),
    "forgotten box": Decimal("0.25"),
    "preemption": Decimal("1.24"),
    "stuck": Decimal("1.46"),
    "orphans": Decimal("0"),
    "unexpected outcome": Decimal("0"),
}
MODELLED_TOTAL_PCT = Decimal("3.00")
CATEGORIES = tuple(MODELLED)
TERMINAL = {"succeeded", "failed", "cancelled"}

WORK_PY = r'''#!/usr/bin/env python3
"""gpubot month bench job: paces itself on the simulator's clock (file GPUBOT_PARAM_CLOCK)."""
import json, math, os, time
from pathlib import Path

def p(name, default):
    return os.environ.get("GPUBOT_PARAM_" + name, default)

def atomic(path, text):
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

clock = Path(p("CLOCK", ""))
work, stall = float(p("WORK_S", "600")), float(p("STALL_AT_S", "-1"))
ck = float(p("CHECKPOINT_S", "600"))
root = Path(os.environ.get("GPUBOT_REMOTE_ROOT", "."))
ckdir = Path(os.environ["GPUBOT_CHECKPOINT_DIR"]); ckdir.mkdir(parents=True, exist_ok=True)
results = Path(os.environ["GPUBOT_RESULTS_DIR"]); results.mkdir(parents=True, exist_ok=True)
progress = Path(os.environ["GPUBOT_PROGRESS_FILE"])
(root / ".sim").mkdir(exist_ok=True)
util = root / ".sim" / "gpu_util"

def now():
    while True:
        try:
            return float(clock.read_text())
        except (OSError, ValueError):
            time.sleep(0.005)

base = 0.0
resume = os.environ.get("GPUBOT_RESUME_FROM")
if resume:
    base = float(json.loads((Path(resume) / "state.json").read_text())["done_s"])
start = now()
state = root / ".month_state.json"
info = {"start": start, "base": base, "seen": start, "exit_at": None, "stalled": False}
last_step, last_k, total = None, math.floor(base / ck + 1e-9), max(1, math.ceil(work / 60))
while True:
    t = now()
    done = min(work, base + t - start)
    stalled = 0 <= stall <= done
    if stalled:
        done = stall
    k = math.floor(done / ck + 1e-9)
    if k > last_k and done < work:
        name = "checkpoint-%d" % int(k * ck // 60)
        tmp = ckdir / (".tmp-" + name)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "state.json").write_text(json.dumps({"done_s": k * ck}))
        (tmp / ".complete").write_text("")
        os.replace(tmp, ckdir / name)
        for old in sorted(ckdir.glob("checkpoint-*"), key=lambda d: int(d.name[11:]))[:-2]:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        last_k = k
    step = int(done // 60)
    if step != last_step:
        atomic(progress, json.dumps({"epoch": 0, "step": step, "total_steps": total,
                                     "metrics": {"loss": 1.0 / (1 + step)}, "timestamp": t}))
        os.utime(progress, (t, t))  # written at simulated time t (see the module docstring)
        last_step = step
    atomic(util, "0" if stalled else "95")
    info.update(seen=t, stalled=stalled)
    if done >= work:
        (results / "metrics.json").write_text(json.dumps({"eval_loss": 0.1, "work_s": work}))
        info["exit_at"] = t
        atomic(state, json.dumps(info))
        raise SystemExit(0)
    atomic(state, json.dumps(info))
    while now() == t:
        time.sleep(0.01)
'''

CONFIG = """
[templates.mjob]
description = "Month bench job: works work_s simulated seconds, paced on the simulator clock."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "{workdir}"
setup = ["true"]
run = "python3 work.py"

[templates.mjob.params.work_s]
type = "float"
default = 600
min = 1
max = 1000000

[templates.mjob.params.stall_at_s]
type = "float"
default = -1
min = -1
max = 1000000

[templates.mjob.params.checkpoint_s]
type = "float"
default = {checkpoint_s}
min = 1
max = 1000000

[templates.mjob.params.clock]
type = "str"
default = "{clock}"

[templates.mjob.resources]
gpu_names = ["RTX 4090", "RTX 3090", "A100 PCIE", "A100 SXM4", "L40S", "RTX A6000"]
min_gpu_ram_gb = 16
min_reliability = 0.9
interruptible = "yes"
checkpoints = true
expected_hours = 1.5

[budgets]
team_monthly_usd = 1000000
user_monthly_usd = 1000000
channel_monthly_usd = 1000000
job_default_usd = 20

[roles]
approval_above_price_per_hour_usd = 1000
approval_above_estimate_usd = 1000000
per_user_max_live_jobs = 1000
per_channel_max_live_jobs = 1000
"""


@dataclass
class Job:
    """One planned job of the month and what the driver learnt about it."""

    n: int
    kind: str
    """normal | preempted | stuck | forgotten"""
    arrive_at: float
    work_s: float = 0.0
    stall_at_s: float = -1.0
    outbid_at_s: float = -1.0
    """work offset of the outbid (preempted jobs, first rental only)"""
    job_id: str | None = None
    starts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """provider id -> the process's state file as first seen (start, base)"""
    outbid_done: bool = False
    exit_at: dict[str, float] = field(default_factory=dict)
    stall_mark: tuple[str, float] | None = None
    error: str = ""


@dataclass
class MonthResult:
    """What :func:`run_month` measured. Money in Decimal USD from the simulator's charges."""

    jobs: int
    kinds: dict[str, int]
    spend_usd: Decimal
    """sum of every instance's charges as the simulator billed them"""
    sim_total_usd: Decimal
    """the simulator's own account total (``billing()['total_usd']``)"""
    ledger_usd: Decimal
    """gpubot's ledger total (its own metering), for comparison"""
    waste_usd: dict[str, Decimal]
    useful_usd: Decimal
    outcomes: dict[str, int]
    unexpected: list[str]
    ticks: int
    time_points: int
    wall_s: float
    cpu_s: float
    load_avg: tuple[float, float, float]
    mark_misses: int
    instances: int
    lags_s: dict[str, list[float]]
    """per category, the simulated seconds each case was billed for (mark -> destroy)"""

    @property
    def waste_total_usd(self) -> Decimal:
        return sum(self.waste_usd.values(), Decimal(0))


def _grid_floor(t: float, t0: float, tick: float) -> float:
    return t0 + math.floor((t - t0) / tick + 1e-9) * tick


def _grid_ceil(t: float, t0: float, tick: float) -> float:
    return t0 + math.ceil((t - t0) / tick - 1e-9) * tick


def _epoch(when: datetime) -> float:
    """Epoch seconds of a stored time (naive values are UTC)."""
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@contextmanager
def _moto() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (real HTTP), boto3 pointed at it."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="month-bench",
                      AWS_SECRET_ACCESS_KEY="month-bench-secret", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield endpoint
    finally:
        server.stop()


def plan_jobs(n: int, *, seed: int, days: float, preempted: float, stuck: float,
              forgotten: float, min_each: int = 0) -> list[Job]:
    """The month's jobs: the mix (rounded; at least ``min_each`` of each kind when > 0),
    arrivals uniform over ``days``, work lognormal (median 1.5 h, 5 min - 12 h) like the model."""
    rng = random.Random(seed)

    def count(share: float) -> int:
        return max(min_each, round(n * share)) if share > 0 else 0

    kinds = (["forgotten"] * count(forgotten) + ["stuck"] * count(stuck)
             + ["preempted"] * count(preempted))
    kinds += ["normal"] * max(0, n - len(kinds))
    rng.shuffle(kinds)
    jobs = []
    for i, kind in enumerate(kinds):
        job = Job(i, kind, arrive_at=rng.uniform(0, days * 24 * H))
        if kind != "forgotten":
            job.work_s = float(round(min(12 * H, max(5 * M,
                                         rng.lognormvariate(math.log(1.5 * H), 0.9)))))
        if kind == "stuck":
            job.stall_at_s = float(round(rng.uniform(0.05, 0.95) * job.work_s))
        if kind == "preempted":
            job.outbid_at_s = float(round(rng.uniform(0.1, 0.9) * job.work_s))
        jobs.append(job)
    return jobs


def run_month(jobs: list[Job], *, pg_url: str, workdir_root: Path, checkpoint_s: float = 600,
              loading_s: float = 120, wall_limit_s: float = 3600,
              log: Any = None) -> MonthResult:
    """Run ``jobs`` through the real engine on a frozen simulator and account every charge.

    Returns a :class:`MonthResult`; raises ``TimeoutError`` when the run exceeds
    ``wall_limit_s`` of wall time (everything started is stopped first)."""
    from sqlalchemy import func, select

    from gpubot.chat.launch import plan_launch, submit
    from gpubot.commands.grammar import parse_command
    from gpubot.config import load_config_text
    from gpubot.db.engine import session_scope
    from gpubot.db.tables import InstanceRow, JobRow, LedgerEntryRow, MessageRow
    from gpubot.engine.idle import next_decision_at as idle_next_decision_at
    from gpubot.engine.steps import advance_job
    from gpubot.engine.tick import reconcile_tick
    from gpubot.providers.vastai.provider import VastAIProvider
    from gpubot.settings import Settings
    from gpubot.sim.server import SimServer
    from gpubot.sim.settings import SimSettings
    from gpubot.storage.s3 import S3Store
    from gpubot.wiring import build_engine_deps

    wall0, cpu0 = time.monotonic(), time.process_time()
    workdir = workdir_root / "workdir"
    workdir.mkdir(parents=True)
    (workdir / "work.py").write_text(WORK_PY)
    clock_file = workdir_root / "sim_clock"
    home = workdir_root / "home"
    config = load_config_text(CONFIG.format(workdir=workdir, clock=clock_file,
                                            checkpoint_s=checkpoint_s), name="month.toml")
    sim = SimServer(home=workdir_root / "sim", seed=11, speed=0.0,
                    settings=SimSettings(loading_s=loading_s))
    sim.start()
    try:
        store = S3Store(f"gpubot-month-{uuid.uuid4().hex[:8]}", "gpubot/")
        store.ensure_bucket()
        os.environ["GPUBOT_HOME"] = str(home)
        settings = Settings(GPUBOT_HOME=str(home), GPUBOT_DATABASE_URL=pg_url,
                            VAST_API_KEY=sim.api_key, VAST_URL=sim.url,
                            GPUBOT_S3_BUCKET=store.bucket)
        deps = build_engine_deps(
            settings, config=config,
            provider=VastAIProvider(api_key=sim.api_key, server_url=sim.url), store=store,
            clock=lambda: datetime.fromtimestamp(sim.engine.now(), UTC))
        c.quiet()
        tick_s = float(settings.tick_seconds)
        control = sim.control
        t0 = sim.engine.now()
        t = t0
        clock_file.write_text(repr(t))
        by_id: dict[str, Job] = {}
        events: list[tuple[float, int, str, Job, str]] = []  # (time, seq, what, job, pid)
        seq = 0

        def push(at: float, what: str, job: Job, pid: str = "") -> None:
            nonlocal seq
            seq += 1
            heapq.heappush(events, (at, seq, what, job, pid))

        for job in jobs:
            push(t0 + job.arrive_at, "arrive", job)
        # per instance: time -> (charges right after the clock reached it, after its ticks)
        series: dict[str, dict[float, list[Decimal]]] = {}
        ticks = points = misses = 0
        forced: set[float] = set()
        """grid ticks owed to events already handled (the first tick at or after each)"""

        def snapshot(after: bool) -> None:
            with sim.engine._lock:
                for inst in sim.engine.instances.values():
                    if inst.destroyed_at is None:
                        points_of = series.setdefault(str(inst.id), {})
                        if t not in points_of:
                            points_of[t] = [inst.total_usd, inst.total_usd]
                        elif after:
                            points_of[t][1] = inst.total_usd

        def move_to(at: float) -> None:
            nonlocal t, points
            if at > t:
                t = control.advance(at - t)
                t = at if abs(t - at) < 1e-6 else t
                tmp = clock_file.with_suffix(".tmp")
                tmp.write_text(repr(t))
                os.replace(tmp, clock_file)
            points += 1
            snapshot(after=False)

        def state_file(pid: str) -> dict[str, Any] | None:
            path = sim.engine.root_of(int(pid)) / ".month_state.json"
            try:
                return dict(json.loads(path.read_text()))
            except (OSError, ValueError):
                return None

        def wait_seen(pid: str, *, exited: bool = False) -> None:
            """Poll (bounded) until the process has reacted to the current clock."""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                inst = sim.engine.instances.get(int(pid))
                if inst is None or inst.actual_status != "running":
                    return
                info = state_file(pid)
                if info is None or info.get("exit_at") is not None:
                    return
                if info["seen"] >= t and not exited:
                    return
                time.sleep(0.005)  # polling interval, bounded by the deadline

        def live_jobs() -> list[tuple[JobRow, str | None]]:
            with session_scope(deps.sessions) as s:
                rows = list(s.scalars(select(JobRow).where(JobRow.state.notin_(TERMINAL))))
                out = []
                for row in rows:
                    pid = s.scalar(select(InstanceRow.provider_id).where(
                        InstanceRow.job_id == row.id, InstanceRow.destroyed_at.is_(None),
                        InstanceRow.provider_id.is_not(None)).order_by(
                        InstanceRow.id.desc()).limit(1))
                    s.expunge(row)
                    out.append((row, pid))
                return out

        def learn_starts(live: list[tuple[JobRow, str | None]]) -> bool:
            """Record newly started processes and schedule their events; False when a running
            job's process has not written its state yet (not quiet)."""
            ok = True
            for row, pid in live:
                job = by_id.get(row.id)
                if job is None or job.kind == "forgotten" or pid is None:
                    continue
                if row.state != "running" or pid in job.starts:
                    continue
                info = state_file(pid)
                if info is None:
                    deadline = time.monotonic() + 5
                    while info is None and time.monotonic() < deadline:
                        time.sleep(0.01)  # the detached process is starting; bounded
                        info = state_file(pid)
                if info is None:
                    ok = False
                    continue
                job.starts[pid] = info
                s0, b = float(info["start"]), float(info["base"])
                if job.kind != "stuck":
                    push(s0 + job.work_s - b, "exit", job, pid)
                if job.kind == "stuck" and b < job.stall_at_s:
                    push(s0 + job.stall_at_s - b, "stall", job, pid)
                if job.kind == "preempted" and not job.outbid_done and len(job.starts) == 1:
                    push(s0 + job.outbid_at_s - b, "outbid", job, pid)
                    k = math.floor(b / checkpoint_s) + 1
                    while k * checkpoint_s < job.outbid_at_s:
                        push(s0 + k * checkpoint_s - b, "checkpoint", job, pid)
                        k += 1
            return ok

        def next_tick_at(live: list[tuple[JobRow, str | None]], started_ok: bool) -> float:
            """The next grid tick the engine needs (see the module docstring)."""
            nxt = math.inf
            busy = not started_ok
            for row, pid in live:
                if row.state == "running":
                    due = idle_next_decision_at(deps, row)
                    if due is not None:
                        # the engine's own idle/stuck deadline (window or grace), acted on by
                        # the job's next step (not before its due_at)
                        at = max(_epoch(due), _epoch(row.due_at))
                        nxt = min(nxt, max(_grid_ceil(at, t0, tick_s),
                                           _grid_floor(t, t0, tick_s) + tick_s))
                    elif row.kind == "interactive":
                        busy = True
                    else:
                        job = by_id.get(row.id)
                        info = state_file(pid) if pid else None
                        if job is None or info is None or info.get("stalled"):
                            busy = True
                    continue
                if (row.state in ("renting", "re_renting") and row.lock_token is None
                        and _epoch(row.due_at) > t + 1e-6):
                    # waiting for an offer: its searches back off; it acts at its due_at
                    nxt = min(nxt, _grid_ceil(_epoch(row.due_at), t0, tick_s))
                    continue
                if row.state == "booting" and pid is not None:
                    inst = sim.engine.instances.get(int(pid))
                    if inst is not None and inst.phase_until is not None:
                        nxt = min(nxt, _grid_ceil(inst.phase_until, t0, tick_s))
                        continue
                busy = True
            if forced:
                nxt = min(nxt, min(forced))
            if busy or (live and nxt == math.inf and not events):
                nxt = min(nxt, _grid_floor(t, t0, tick_s) + tick_s)
            if events:
                e = events[0][0]
                floor = _grid_floor(e, t0, tick_s)
                nxt = min(nxt, floor if floor > t + 1e-6 else _grid_ceil(e, t0, tick_s))
            return nxt

        handled_at: dict[str, float] = {}
        """job id -> simulated time of its newest handled event"""

        def defer_steady(live: list[tuple[JobRow, str | None]]) -> dict[str, datetime]:
            """Make the steadily running jobs with no event of their own within one tick of
            now not due for the coming ticks; returns their stored ``due_at`` to restore.

            A tick forced by another job's event would poll them, and a poll of a steady
            job changes nothing the engine decides (the same reasoning as skipping grid
            ticks, see the module docstring): their own events keep the ticks just before
            and after them. This keeps a tick's cost to the jobs that need it."""
            near: set[str] = {jid for jid, at in handled_at.items() if t - at <= tick_s + 1e-6}
            near |= {e[3].job_id or "" for e in events if e[0] - t <= tick_s + 1e-6}
            steady: list[str] = []
            for row, pid in live:
                job = by_id.get(row.id)
                if (row.state != "running" or row.kind == "interactive" or job is None
                        or pid is None or pid not in job.starts or row.id in near
                        or row.idle_since is not None or row.idle_warned_at is not None):
                    continue
                info = state_file(pid)
                if info is None or info.get("stalled") or info.get("exit_at") is not None:
                    continue
                steady.append(row.id)
            if not steady:
                return {}
            later = datetime.fromtimestamp(t + 24 * H, UTC)
            with session_scope(deps.sessions) as s:
                rows = list(s.scalars(select(JobRow).where(JobRow.id.in_(steady),
                                                           JobRow.lock_token.is_(None))))
                saved = {r.id: r.due_at for r in rows}
                for r in rows:
                    r.due_at = later
            return saved

        def restore_due(saved: dict[str, datetime]) -> None:
            if not saved:
                return
            with session_scope(deps.sessions) as s:
                for r in s.scalars(select(JobRow).where(JobRow.id.in_(list(saved)))):
                    if r.state == "running" and r.lock_token is None:
                        r.due_at = saved[r.id]

        def run_ticks() -> None:
            nonlocal ticks
            for _ in range(12):  # a kicked successor runs at the same instant, as in production
                report = reconcile_tick(
                    deps, dispatch=lambda job_id, token: advance_job(deps, job_id, token))
                ticks += 1
                if not report.claimed:
                    break
                with session_scope(deps.sessions) as s:
                    due = s.scalar(select(func.count()).select_from(JobRow).where(
                        JobRow.state.notin_(TERMINAL), JobRow.state != "running",
                        JobRow.due_at <= deps.clock()))
                if not due:
                    break

        def handle(what: str, job: Job, pid: str) -> None:
            if job.job_id is not None:
                handled_at[job.job_id] = t
            if what == "arrive":
                if job.kind == "forgotten":
                    text = "rent hours=4"
                else:
                    hours = (job.work_s * 1.5 + 2 * H) / H
                    text = (f"mjob work_s={job.work_s:g} stall_at_s={job.stall_at_s:g} "
                            f"hours={hours:.2f}")
                try:
                    plan = plan_launch(deps, parse_command(text, deps.config))
                except Exception as e:  # noqa: BLE001 - counted as an unexpected outcome
                    job.error = f"not launched: {e}"
                    return
                job_id, _ = submit(deps, plan, requester=f"U{job.n % 40}",
                                   channel=f"C{job.n % 7}", request_key=uuid.uuid4().hex)
                job.job_id = job_id
                by_id[job_id] = job
                return
            inst = sim.engine.instances.get(int(pid))
            if inst is None or inst.destroyed_at is not None:
                return
            if what == "outbid":
                if inst.actual_status == "running":
                    control.outbid(pid)
                    job.outbid_done = True
            elif what == "stall":
                wait_seen(pid)
                job.stall_mark = (pid, t)
            elif what == "exit":
                wait_seen(pid, exited=True)
                info = state_file(pid)
                job.exit_at[pid] = t
                if info is not None and info.get("exit_at") is not None:
                    job.exit_at[pid] = float(info["exit_at"])
            elif what == "checkpoint":
                wait_seen(pid)

        end_arrivals = t0 + max((j.arrive_at for j in jobs), default=0.0)
        quiet_rounds = 0
        while True:
            if time.monotonic() - wall0 > wall_limit_s:
                raise TimeoutError(f"month run over {wall_limit_s:.0f} s of wall time at "
                                   f"sim +{(t - t0) / H:.1f} h")
            live = live_jobs()
            started_ok = learn_starts(live)
            if not live and not events and t >= end_arrivals:
                quiet_rounds += 1
                if quiet_rounds > 3:
                    break
                nxt = _grid_floor(t, t0, tick_s) + tick_s
            else:
                nxt = next_tick_at(live, started_ok)
            if events and events[0][0] <= nxt + 1e-6 and events[0][0] >= t - 1e-6:
                at, _, what, job, pid = heapq.heappop(events)
                move_to(max(at, t))
                handle(what, job, pid)
                forced.add(_grid_ceil(t, t0, tick_s))
                continue
            if events and events[0][0] < t - 1e-6:  # an event scheduled in the past: now
                _, _, what, job, pid = heapq.heappop(events)
                handle(what, job, pid)
                continue
            if nxt == math.inf:
                if log is not None:
                    log(f"  nothing due: {[(r.id, r.state, p) for r, p in live]}")
                nxt = _grid_floor(t, t0, tick_s) + tick_s
            move_to(nxt)
            forced = {f for f in forced if f > t + 1e-6}
            saved_due = defer_steady(live)
            try:
                run_ticks()
            finally:
                restore_due(saved_due)
            snapshot(after=True)
            if log is not None and ticks % 500 == 0:
                log(f"  sim +{(t - t0) / H / 24:.2f} d, {ticks} ticks, {len(live)} live, "
                    f"wall {time.monotonic() - wall0:.0f} s")

        # ---- accounting from the simulator's charges -----------------------------------
        with sim.engine._lock:
            sim.engine.sync()
            final = {str(i.id): i.total_usd for i in sim.engine.instances.values()}
            gone_at = {str(i.id): i.destroyed_at for i in sim.engine.instances.values()}
            live_left = [str(i.id) for i in sim.engine.instances.values()
                         if i.destroyed_at is None]
        sim_total = Decimal(control.billing()["total_usd"])
        with session_scope(deps.sessions) as s:
            rows = {r.id: r for r in s.scalars(select(JobRow))}
            for r in rows.values():
                s.expunge(r)
            inst_rows = [(r.job_id, r.provider_id) for r in s.scalars(select(InstanceRow))]
            ledger = Decimal(s.scalar(select(func.coalesce(func.sum(
                LedgerEntryRow.amount_usd), 0))))
        pids_of: dict[str, list[str]] = {}
        for job_id, pid in inst_rows:
            if pid is not None:
                pids_of.setdefault(job_id, []).append(pid)

        def at(pid: str, when: float, which: int) -> Decimal:
            nonlocal misses
            points_of = series.get(pid, {})
            if when in points_of:
                return points_of[when][which]
            misses += 1
            before = [p for p in points_of if p <= when]
            return points_of[max(before)][1] if before else Decimal(0)

        def case_detail(row: JobRow, pids: list[str]) -> str:
            """What an unexpected job with spend went through (the database is dropped at
            the end): each rental's simulated times and its process's own state, the job's
            stored progress, and its thread, all relative to the month's start (s)."""
            parts = []
            for pid in pids:
                inst = sim.engine.instances.get(int(pid))
                info = state_file(pid) or {}
                rel = {k: round(float(v) - t0) for k, v in info.items()
                       if k in ("start", "seen", "exit_at") and v is not None}
                gone = inst.destroyed_at if inst is not None else None
                parts.append(
                    f"rental {pid}: created {round(inst.created_at - t0) if inst else '?'}, "
                    f"destroyed {round(gone - t0) if gone is not None else '-'}, "
                    f"process {rel} base {info.get('base')} stalled {info.get('stalled')}")
            progress = {k: (row.progress or {}).get(k)
                        for k in ("step", "last_advance_at", "first")}
            with session_scope(deps.sessions) as s:
                texts = list(s.scalars(select(MessageRow.text).where(
                    MessageRow.thread_key == row.id).order_by(MessageRow.id)))
            thread = " | ".join(t[:90] for t in texts[-6:])
            return (f"{'; '.join(parts)}; progress {progress}; idle_since {row.idle_since}; "
                    f"thread: {thread}")

        waste = {k: Decimal(0) for k in CATEGORIES}
        outcomes: dict[str, int] = {}
        unexpected: list[str] = []
        lags: dict[str, list[float]] = {}
        expected = {"normal": "succeeded", "preempted": "succeeded", "stuck": "failed",
                    "forgotten": "cancelled"}
        for job in jobs:
            row = rows.get(job.job_id or "")
            pids = sorted(pids_of.get(job.job_id or "", []), key=int)
            spent = sum((final.get(p, Decimal(0)) for p in pids), Decimal(0))
            state = row.state if row is not None else "not launched"
            outcomes[f"{job.kind} {state}"] = outcomes.get(f"{job.kind} {state}", 0) + 1
            rentals = 2 if job.kind == "preempted" else 1
            if row is None or state != expected[job.kind] or len(pids) != rentals:
                waste["unexpected outcome"] += spent
                unexpected.append(f"{job.kind} {job.job_id} {state} rentals={len(pids)}: "
                                  f"{row.reason if row is not None else job.error}"[:200])
                if spent > 0 and row is not None:
                    unexpected.append("  " + case_detail(row, pids))
                continue
            if job.kind == "forgotten":
                waste["forgotten box"] += spent
                inst = sim.engine.instances[int(pids[0])]
                lags.setdefault("forgotten box", []).append(
                    (inst.destroyed_at or t) - inst.created_at)
            elif job.kind == "stuck":
                assert job.stall_mark is not None
                pid, when = job.stall_mark
                waste["stuck"] += final[pid] - at(pid, when, 0)
                lags.setdefault("stuck", []).append((gone_at[pid] or t) - when)
            else:
                last = pids[-1]
                waste["exit -> destroy"] += final[last] - at(last, job.exit_at[last], 0)
                lags.setdefault("exit -> destroy", []).append(
                    (gone_at[last] or t) - job.exit_at[last])
                if job.kind == "preempted":
                    first = pids[0]
                    s1 = job.starts[first]
                    s2 = job.starts[last]
                    resumed = float(s2["base"]) - float(s1["base"])
                    mark = float(s1["start"]) + resumed
                    lost = final[first] - at(first, mark, 1 if resumed == 0 else 0)
                    waste["preemption"] += lost + at(last, float(s2["start"]), 1)
                    lags.setdefault("preemption", []).append(
                        (gone_at[first] or t) - mark + float(s2["start"])
                        - sim.engine.instances[int(last)].created_at)
        known = {p for ps in pids_of.values() for p in ps}
        waste["orphans"] = sum((v for p, v in final.items() if p not in known), Decimal(0))
        spend = sum(final.values(), Decimal(0))
        kinds: dict[str, int] = {}
        for job in jobs:
            kinds[job.kind] = kinds.get(job.kind, 0) + 1
        if live_left:
            unexpected.append(f"instances still live at the end: {live_left}")
        return MonthResult(
            jobs=len(jobs), kinds=kinds, spend_usd=spend, sim_total_usd=sim_total,
            ledger_usd=ledger, waste_usd=waste,
            useful_usd=spend - sum(waste.values(), Decimal(0)), outcomes=outcomes,
            unexpected=unexpected, ticks=ticks, time_points=points,
            wall_s=time.monotonic() - wall0, cpu_s=time.process_time() - cpu0,
            load_avg=os.getloadavg(), mark_misses=misses, instances=len(final), lags_s=lags)
    finally:
        sim.stop()


def report(r: MonthResult, *, seed: int, days: float) -> str:
    """The printed table: measured categories beside the old modelled ones."""
    rows: list[list[object]] = []
    for k in CATEGORIES:
        w = r.waste_usd[k]
        rows.append([k, f"${w:.4f}", f"{100 * w / r.spend_usd:.2f} %", f"{MODELLED[k]:.2f} %"])
    tw = r.waste_total_usd
    rows.append(["TOTAL waste", f"${tw:.4f}", f"{100 * tw / r.spend_usd:.2f} %",
                 f"{MODELLED_TOTAL_PCT:.2f} %"])
    rows.append(["useful", f"${r.useful_usd:.4f}", f"{100 * r.useful_usd / r.spend_usd:.2f} %",
                 ""])
    rows.append(["TOTAL spend (simulator)", f"${r.spend_usd:.4f}", "", "$135.19 (1000 jobs)"])
    lines = [c.table(["category", "measured $", "measured % of spend", "modelled %"], rows)]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.kinds.items()))
    lines.append(f"jobs: {r.jobs} ({kinds}) over {days:g} simulated days, seed {seed}; "
                 f"{r.instances} instances")
    lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items())))
    lines.append(f"simulator account total ${r.sim_total_usd:.4f} (sum of instances "
                 f"${r.spend_usd:.4f}); gpubot ledger ${r.ledger_usd:.4f} "
                 f"(diff ${r.ledger_usd - r.sim_total_usd:+.4f})")
    lines.append(f"ticks {r.ticks}, clock points {r.time_points}, wall {r.wall_s:.0f} s, "
                 f"this process CPU {r.cpu_s:.0f} s, load average {r.load_avg[0]:.1f} / "
                 f"{r.load_avg[1]:.1f} / {r.load_avg[2]:.1f}; marks off the clock "
                 f"points: {r.mark_misses}")
    for k, v in sorted(r.lags_s.items()):
        if v:
            lines.append(f"{k}: {len(v)} cases, billed {min(v):.0f} / {sorted(v)[len(v) // 2]:.0f}"
                         f" / {max(v):.0f} s (min / median / max)")
    for u in r.unexpected[:20]:
        lines.append(f"UNEXPECTED: {u}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--preempted", type=float, default=0.10)
    parser.add_argument("--stuck", type=float, default=0.05)
    parser.add_argument("--forgotten", type=float, default=0.02)
    parser.add_argument("--checkpoint-s", type=float, default=600.0)
    parser.add_argument("--loading-s", type=float, default=120.0,
                        help="simulated image pull per (re)start")
    parser.add_argument("--wall-limit-s", type=float, default=3600.0)
    args = parser.parse_args()
    c.setup()
    if not c.pg_available():
        print("PostgreSQL not available at", c.PG_ADMIN_URL)
        return 2
    jobs = plan_jobs(args.jobs, seed=args.seed, days=args.days, preempted=args.preempted,
                     stuck=args.stuck, forgotten=args.forgotten)
    c.print_header(f"simulated month, MEASURED: {args.jobs} jobs, real tick + steps on the "
                   "frozen simulator")
    with _moto(), c.pg_database("gpubot_month") as url, \
            tempfile.TemporaryDirectory(prefix="month-", dir=c.fast_tmp_root()) as tmp:
        result = run_month(jobs, pg_url=url, workdir_root=Path(tmp),
                           checkpoint_s=args.checkpoint_s, loading_s=args.loading_s,
                           wall_limit_s=args.wall_limit_s, log=print)
    print(report(result, seed=args.seed, days=args.days))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
