"""The SSH work of running jobs, per job per tick, at N = 10 / 100 / 1000 running jobs.

Setup: a separate *instance process* (this script with ``--serve``) runs N simulator SSH
servers (``gpubot.sim.sshd.InstanceSSHServer``: one paramiko server per instance, each with
its own host key and remote root, commands run as real ``bash`` processes). Every instance
holds one job in the remote layout the engine expects (``.control/pid`` naming a live process,
a log, a progress file). The bench process is the *worker*: PostgreSQL (a throwaway
database), N jobs in ``running`` with an instance row each (SSH address and pinned host key),
the default ``train`` template (checkpoints on), and the production SSH connector
(``gpubot.wiring.build_ssh_connector`` when it exists, else ``ssh_connect``).

One tick = every job claimed (one UPDATE, untimed) and ``advance_job`` run for each on a pool
of ``--threads`` threads, as Celery threads would. Between ticks half of the jobs advance
(their progress file and log get a new step); the other half print nothing new.

Counted in the worker per job per tick: SSH connections opened (``SSHClient.connect``), round
trips (``exec`` calls), bytes on the wire (paramiko's packetizer: handshake included), worker
CPU (``time.process_time``, all threads: SQLAlchemy, psycopg2, paramiko). Staleness: at the
end of each tick, the age of every job's newest successful status read; shown as the max over
jobs, and the tick's wall time. The instance process's CPU (its sshd threads and the bash
processes it reaped) is shown too: on vast it is spread over N machines, here it shares the
2 cores with the worker, so wall times are pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()

LOG_LINES_AT_START = 200
"""Lines already in each job's log (a job that has run a while)."""


# -- the instance process ---------------------------------------------------------------------


def job_dir(root: Path, i: int) -> Path:
    return root / f"i{i:05d}" / "gpubot" / f"j{i:05d}"


def write_progress(root: Path, i: int, step: int) -> None:
    d = job_dir(root, i)
    tmp = d / "progress.json.tmp"
    tmp.write_text(json.dumps({
        "step": step, "total_steps": 100000, "epoch": step / 1000,
        "metrics": {"loss": 2.0 / (1 + step)}, "timestamp": time.time(),
    }))
    tmp.replace(d / "progress.json")
    with open(d / ".control" / "log", "a") as fh:
        fh.write(f"step {step} loss {2.0 / (1 + step):.5f} " + "x" * 60 + "\n")


_NONCE = "\x00NONCE\x00"
_STATUS_MARKER = re.compile(r"===gpubot-status-([0-9a-f]{16,64})===")
_NOW_FIELD = re.compile(rb'"now": [0-9]+')
REPLAYS = {"hits": 0, "misses": 0}


def _files_state(d: Path) -> tuple[object, ...]:
    """What a poll's output depends on in job dir ``d``: (size, mtime) of its files."""
    out: list[object] = []
    for sub in (".control/log", "progress.json", ".control/exit_code", "checkpoints"):
        try:
            st = (d / sub).stat()
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def replaying_server(base: Any, job: Path) -> Any:
    """A cheap endpoint (``--target``): the status poll of a job whose files did not change
    since an identical poll (same command but for its nonce) is answered from that poll's
    output (nonce and ``now`` replaced) without starting ``bash``; every other command, and
    every poll after a change, runs in ``bash`` as usual. The worker sees the same bytes as
    from ``bash``; on vast the shell runs on the instance's own machine, here 1000 of them
    would need more than the 2 cores."""

    class Replaying(base):  # type: ignore[misc, valid-type]
        cache: dict[tuple[str, tuple[object, ...]], tuple[bytes, bytes, int]] = {}

        def run(self, channel: Any, command: str | None, extra_env: dict[str, str]) -> None:
            found = _STATUS_MARKER.search(command or "")
            if found is None:
                return super().run(channel, command, extra_env)
            nonce = found.group(1)
            key = (command.replace(nonce, _NONCE), _files_state(job))  # type: ignore[union-attr]
            threading.Thread(target=self._answer, args=(channel, command, nonce, key),
                             daemon=True).start()
            return None

        def _answer(self, channel: Any, command: str, nonce: str, key: Any) -> None:
            hit = self.cache.get(key)
            if hit is None:
                REPLAYS["misses"] += 1
                done = subprocess.run(["/bin/bash", "-c", command], cwd=str(self.root),
                                      env=self.process_env({}), capture_output=True)
                out, err, status = done.stdout, done.stderr, done.returncode
                self.cache[key] = (out.replace(nonce.encode(), _NONCE.encode()), err, status)
            else:
                REPLAYS["hits"] += 1
                out, err, status = hit
                out = out.replace(_NONCE.encode(), nonce.encode())
                out = _NOW_FIELD.sub(b'"now": %d' % int(time.time()), out)
            try:
                channel.sendall(out)
                if err:
                    channel.sendall_stderr(err)
                channel.send_exit_status(status)
                channel.shutdown_write()
                channel.close()
            except (OSError, EOFError):
                pass

    return Replaying


def serve(n: int, root: Path, public_key: str, replay: bool = False, first: int = 0) -> None:
    """Start N instance SSH servers (numbered from ``first``), print one JSON line each, serve
    until stdin closes. ``replay``: cheap endpoints (:func:`replaying_server`)."""
    import logging

    import paramiko

    from gpubot.sim.sshd import InstanceSSHServer

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # clients closing are normal

    servers = []
    for i in range(first, first + n):
        inst_root = root / f"i{i:05d}"
        d = job_dir(root, i)
        for sub in ("work", "checkpoints", "results", ".control"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / ".control" / "pid").write_text(f"{os.getpid()}\n")  # a live process group
        (d / ".control" / "log").write_text(
            "".join(f"warmup line {k} " + "y" * 60 + "\n" for k in range(LOG_LINES_AT_START))
        )
        write_progress(root, i, 1)
        host_key = paramiko.Ed25519Key.from_private_key_file(str(_host_key(root, i)))
        server_class = replaying_server(InstanceSSHServer, d) if replay else InstanceSSHServer
        servers.append(server_class(
            instance_id=i, root=inst_root, host_key=host_key,
            authorized_keys=lambda: [public_key], env={}, on_bytes=lambda down, up: None,
        ))
        print(json.dumps({
            "i": i, "port": servers[-1].port,
            "host_key": f"{host_key.get_name()} {host_key.get_base64()}",
        }), flush=True)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "cpu":
            t = os.times()
            print(json.dumps({"cpu_s": t.user + t.system + t.children_user
                              + t.children_system, **REPLAYS}), flush=True)
    for s in servers:
        s.stop()


def _host_key(root: Path, i: int) -> Path:
    path = root / "hostkeys" / f"k{i:05d}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True, capture_output=True)
    return path


# -- counters in the worker --------------------------------------------------------------------


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.execs = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.last_read: dict[str, float] = {}
        self.errors: dict[str, int] = defaultdict(int)

    def snapshot(self) -> tuple[int, int, int, int]:
        with self.lock:
            return self.connections, self.execs, self.bytes_out, self.bytes_in


_INSTRUMENTED: list[Counters] = []


def instrument(counters: Counters) -> None:
    """Count connections, exec round trips and wire bytes (measurement only). Patched once
    per process; later calls only point the counting at ``counters``."""
    if _INSTRUMENTED:
        _INSTRUMENTED[0] = counters
        return
    _INSTRUMENTED.append(counters)
    import paramiko
    from paramiko.packet import Packetizer

    from gpubot.engine import remote_job
    from gpubot.remote import ssh

    orig_connect = paramiko.SSHClient.connect
    orig_write = Packetizer.write_all
    orig_read = Packetizer.read_all
    orig_exec = ssh.ParamikoRunner.exec
    orig_status = remote_job.RemoteSession.status

    def connect(self: Any, *a: Any, **k: Any) -> Any:
        counters = _INSTRUMENTED[0]
        with counters.lock:
            counters.connections += 1
        return orig_connect(self, *a, **k)

    def write_all(self: Any, out: bytes) -> Any:
        counters = _INSTRUMENTED[0]
        with counters.lock:
            counters.bytes_out += len(out)
        return orig_write(self, out)

    def read_all(self: Any, n: int, check_rekey: bool = False) -> Any:
        data = orig_read(self, n, check_rekey)
        counters = _INSTRUMENTED[0]
        with counters.lock:
            counters.bytes_in += len(data)
        return data

    def exec_(self: Any, *a: Any, **k: Any) -> Any:
        counters = _INSTRUMENTED[0]
        with counters.lock:
            counters.execs += 1
        return orig_exec(self, *a, **k)

    def status(self: Any, job: Any, *a: Any, **k: Any) -> Any:
        result = orig_status(self, job, *a, **k)
        counters = _INSTRUMENTED[0]
        with counters.lock:
            counters.last_read[job.id] = time.monotonic()
        return result

    paramiko.SSHClient.connect = connect  # type: ignore[method-assign]
    Packetizer.write_all = write_all  # type: ignore[method-assign]
    Packetizer.read_all = read_all  # type: ignore[method-assign]
    ssh.ParamikoRunner.exec = exec_  # type: ignore[method-assign]
    remote_job.RemoteSession.status = status  # type: ignore[method-assign]


# -- the worker ----------------------------------------------------------------------------------


def production_connector() -> Any:
    from gpubot import wiring

    build = getattr(wiring, "build_ssh_connector", None)
    return build() if build is not None else (wiring.ssh_connect, None)


def build_deps(db_url: str, home: Path) -> Any:
    from gpubot.config import load_config
    from gpubot.db.engine import make_engine, make_sessionmaker, upgrade_to_head
    from gpubot.deps import EngineDeps
    from gpubot.remote.ssh import load_or_create_key
    from gpubot.settings import Settings
    from gpubot.testing.fakes import FakeProvider, MemoryStore

    upgrade_to_head(db_url)
    c.quiet()
    key_path = home / "id_ed25519"
    _, public = load_or_create_key(key_path)
    connect, pool = production_connector()
    deps = EngineDeps(
        settings=Settings(GPUBOT_HOME=home, GPUBOT_DATABASE_URL=db_url),
        config=load_config(None),
        sessions=make_sessionmaker(make_engine(db_url)),
        provider=FakeProvider(),
        store=MemoryStore(),
        connect=connect,
        ssh_key_path=key_path,
        ssh_public_key=public,
    )
    if pool is not None and hasattr(deps, "ssh_pool"):
        deps.ssh_pool = pool
    return deps, public


def seed(deps: Any, endpoints: list[dict[str, Any]], root: Path) -> None:
    from sqlalchemy import insert

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import InstanceRow, JobRow

    now = datetime.now(UTC)
    jobs = [{
        "id": f"j{e['i']:05d}", "template": "train", "requester": "U001", "channel": "C001",
        "state": "running", "kind": "job", "budget_usd": Decimal(20), "created_at": now,
        "updated_at": now, "due_at": now, "step_started_at": now,
        "remote_root": str(root / f"i{e['i']:05d}"),
    } for e in endpoints]
    instances = [{
        "job_id": f"j{e['i']:05d}", "provider_id": str(100000 + e["i"]),
        "label": f"gpubot:j{e['i']:05d}", "price_per_hour_usd": Decimal("0.40"),
        "rental_type": "on_demand", "status": "running", "provider_status": "running",
        "created_at": now, "metered_until": now, "disk_gb": 40,
        "storage_per_gb_month_usd": Decimal("0.10"), "ssh_host": "127.0.0.1",
        "ssh_port": e["port"], "host_key": e["host_key"],
    } for e in endpoints]
    with session_scope(deps.sessions) as session:
        session.execute(insert(JobRow), jobs)
        session.execute(insert(InstanceRow), instances)


def rss_mb() -> float:
    """This process's resident memory now (MB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def claim_all(deps: Any) -> str:
    from sqlalchemy import update

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import JobRow

    token = uuid.uuid4().hex
    with session_scope(deps.sessions) as session:
        session.execute(update(JobRow).values(
            lock_token=token, lock_expires_at=datetime.now(UTC).replace(year=2100)))
    return token


def run_n(n: int, ticks: int, threads: int, profile: bool = False) -> dict[str, Any]:
    from sqlalchemy import func, select

    from gpubot.db.engine import session_scope
    from gpubot.db.tables import JobRow
    from gpubot.engine.steps import advance_job

    counters = Counters()
    instrument(counters)
    base = Path(tempfile.mkdtemp(prefix="gpubot-running-", dir=c.fast_tmp_root()))
    with c.pg_database("gpubot_bench_running") as db_url:
        deps, public = build_deps(db_url, base / "home")
        root = base / "inst"
        root.mkdir()
        for i in range(n):
            _host_key(root, i)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(n), "--root", str(root),
             "--public-key", public],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert server.stdin and server.stdout
        endpoints = []
        for line in server.stdout:
            if line.strip() == "ready":
                break
            endpoints.append(json.loads(line))
        if len(endpoints) != n:
            raise RuntimeError("instance process did not start")

        def server_cpu() -> float:
            assert server.stdin and server.stdout
            server.stdin.write("cpu\n")
            server.stdin.flush()
            return float(json.loads(server.stdout.readline())["cpu_s"])

        seed(deps, endpoints, root)
        job_ids = [f"j{e['i']:05d}" for e in endpoints]
        rows = []
        stats: Any = None
        step = 1
        try:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for tick in range(ticks):
                    step += 1
                    for i in range(0, n, 2):  # half the jobs made progress since last tick
                        write_progress(root, i, step)
                    token = claim_all(deps)
                    conns0, execs0, out0, in0 = counters.snapshot()
                    srv0 = server_cpu()
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    if profile and tick == ticks - 1:
                        import cProfile
                        import pstats

                        prof = cProfile.Profile()
                        prof.enable()
                        for j in job_ids:
                            advance_job(deps, j, token)
                        prof.disable()
                        stats = pstats.Stats(prof)
                    else:
                        list(pool.map(advance_job, [deps] * n, job_ids, [token] * n))
                    cpu1, wall1 = time.process_time(), time.perf_counter()
                    srv1 = server_cpu()
                    conns1, execs1, out1, in1 = counters.snapshot()
                    now = time.monotonic()
                    ages = [now - counters.last_read.get(j, -1e9) for j in job_ids]
                    with session_scope(deps.sessions) as session:
                        running = session.scalar(
                            select(func.count()).select_from(JobRow)
                            .where(JobRow.state == "running"))
                    rows.append({
                        "tick": tick + 1, "conns": (conns1 - conns0) / n,
                        "execs": (execs1 - execs0) / n, "out": (out1 - out0) / n,
                        "in": (in1 - in0) / n, "cpu_ms": (cpu1 - cpu0) * 1000 / n,
                        "srv_cpu_ms": (srv1 - srv0) * 1000 / n, "wall_s": wall1 - wall0,
                        "max_age_s": max(ages), "running": running, "rss_mb": rss_mb(),
                    })
        finally:
            server.stdin.close()
            server.wait(timeout=60)
    if stats is not None:
        print(f"profile of the last tick at N={n} (one thread, all jobs; cumulative s):")
        stats.sort_stats("tottime").print_stats(18)
    return {"n": n, "rows": rows}


# -- the target: N running jobs on W worker processes at a real tick ---------------------------


def worker_process(db_url: str, home: str, threads: int, work: Any, results: Any,
                   profile: bool = False) -> None:
    """One worker process (as a Celery worker with ``threads`` step threads): runs the real
    ``advance_job`` for each (job_id, token) taken from ``work`` until it gets None. Samples
    its own CPU and SSH counters every second; puts them and every job's status-read times
    on ``results`` at the end."""
    import logging

    from gpubot.engine.steps import advance_job

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    c.setup()
    counters = Counters()
    instrument(counters)
    reads: dict[str, list[float]] = defaultdict(list)

    from gpubot.engine import remote_job

    timed_status = remote_job.RemoteSession.status

    def status(self: Any, job: Any, *a: Any, **k: Any) -> Any:
        result = timed_status(self, job, *a, **k)
        reads[job.id].append(time.time())
        return result

    remote_job.RemoteSession.status = status  # type: ignore[method-assign]
    deps, _ = build_deps(db_url, Path(home))
    samples: list[tuple[float, float, int, int, int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.time(), time.process_time(), *counters.snapshot()))
            done.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    errors = 0
    profiles: list[Any] = []
    local = threading.local()

    def step(job_id: str, token: str) -> None:
        nonlocal errors
        prof = None
        if profile:
            import cProfile

            prof = getattr(local, "prof", None)
            if prof is None:
                prof = local.prof = cProfile.Profile(time.thread_time)
                profiles.append(prof)
            prof.enable()
        try:
            advance_job(deps, job_id, token)
        except Exception as exc:  # a failing step is counted, as Celery would log it
            errors += 1
            if errors <= 3:
                print(f"step of {job_id} failed: {exc!r}", file=sys.stderr, flush=True)
        finally:
            if prof is not None:
                prof.disable()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        while True:
            item = work.get()
            if item is None:
                break
            pool.submit(step, *item)
    done.set()
    sampler.join()
    samples.append((time.time(), time.process_time(), *counters.snapshot()))
    top = ""
    if profiles:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(*profiles, stream=buf).sort_stats("tottime").print_stats(22)
        top = buf.getvalue()
    results.put({"pid": os.getpid(), "samples": samples, "reads": dict(reads),
                 "errors": errors, "rss_mb": rss_mb(), "profile": top})


def _at(samples: list[tuple[float, ...]], t: float) -> tuple[float, ...]:
    """The last sample taken at or before wall time ``t`` (the first one if none)."""
    best = samples[0]
    for smp in samples:
        if smp[0] > t:
            break
        best = smp
    return best


def run_target(n: int, ticks: int, warmup: int, workers: int, threads: int, tick_s: float,
               advance_fraction: float, serve_procs: int = 4, profile: bool = False) -> None:
    """N running jobs, ``workers`` worker processes, the real tick every ``tick_s`` seconds
    (wall clock) claiming due jobs and handing them to the workers through a queue (the
    broker's place). Measured over ``ticks`` ticks after ``warmup``: each job's state age at
    every tick start (max, p99), SSH per job per tick, CPU per worker process."""
    import multiprocessing

    from gpubot.engine.tick import reconcile_tick
    from gpubot.testing.fakes import observation

    os.environ["GPUBOT_TICK_SECONDS"] = f"{tick_s:g}"  # the steps' interval, workers too
    spawn = multiprocessing.get_context("spawn")
    base = Path(tempfile.mkdtemp(prefix="gpubot-target-", dir=c.fast_tmp_root()))
    with c.pg_database("gpubot_bench_target") as db_url:
        deps, public = build_deps(db_url, base / "home")
        root = base / "inst"
        root.mkdir()
        for i in range(n):
            _host_key(root, i)
        # The endpoints in ``serve_procs`` processes (one process of 1000 paramiko servers
        # spends its time contending for its own GIL).
        share = -(-n // serve_procs)
        servers = [
            subprocess.Popen(
                [sys.executable, __file__, "--serve", str(min(share, n - first)), "--first",
                 str(first), "--root", str(root), "--public-key", public, "--replay"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            for first in range(0, n, share)
        ]
        endpoints = []
        for server in servers:
            assert server.stdin and server.stdout
            for line in server.stdout:
                if line.strip() == "ready":
                    break
                endpoints.append(json.loads(line))
        seed(deps, endpoints, root)
        for e in endpoints:  # the tick meters what the provider lists
            deps.provider.add(observation(str(100000 + e["i"]), label=f"gpubot:j{e['i']:05d}",
                                          price_per_hour_usd="0.40", gpu_util_pct=90.0,
                                          ssh_host="127.0.0.1", ssh_port=e["port"]))

        def server_stats() -> dict[str, Any]:
            total: dict[str, Any] = {"cpu_s": 0.0, "hits": 0, "misses": 0}
            for server in servers:
                assert server.stdin and server.stdout
                server.stdin.write("cpu\n")
                server.stdin.flush()
                for k, v in json.loads(server.stdout.readline()).items():
                    total[k] += v
            return total

        work = spawn.Queue()
        results = spawn.Queue()
        procs = [spawn.Process(target=worker_process,
                               args=(db_url, str(base / "home"), threads, work, results,
                                     profile and w == 0))
                 for w in range(workers)]
        for proc in procs:
            proc.start()
        time.sleep(3.0)  # the workers import and connect
        tick_starts: list[float] = []
        tick_cpu: list[float] = []
        claimed: list[int] = []
        step = 1
        srv0: dict[str, Any] = {}
        load: list[float] = []
        from sqlalchemy import func, select

        from gpubot.db.engine import session_scope
        from gpubot.db.tables import JobRow

        def never_stepped() -> int:
            with session_scope(deps.sessions) as session:
                return int(session.scalar(select(func.count()).select_from(JobRow)
                                          .where(JobRow.last_processed_at.is_(None))) or 0)

        # Warm-up: until every job has been stepped once (its first connection, handshake and
        # full first poll), then ``warmup`` ticks more; not measured.
        t_next = time.time()
        k = 0
        cold_ticks = 0
        measured_from: int | None = None
        while measured_from is None or k < measured_from + ticks:
            while time.time() < t_next:
                time.sleep(min(0.05, t_next - time.time()))
            if measured_from is None and (never_stepped() == 0 or k >= 60):
                cold_ticks = k
                measured_from = k + warmup
            if k == measured_from:
                srv0 = server_stats()
            tick_starts.append(time.time())
            load.append(os.getloadavg()[0])
            step += 1
            for i in range(n):  # a fraction of the jobs made progress since the last tick
                if (i * 7919 + step) % 1000 < advance_fraction * 1000:
                    write_progress(root, i, step)
            c0 = time.process_time()
            report = reconcile_tick(deps, dispatch=lambda job_id, token: work.put((job_id,
                                                                                   token)))
            tick_cpu.append(time.process_time() - c0)
            claimed.append(len(report.claimed))
            t_next = tick_starts[-1] + tick_s
            k += 1
        warmup = k - ticks  # every tick before the measured ones
        while time.time() < t_next:
            time.sleep(0.05)
        tick_starts.append(time.time())  # the end of the last measured tick
        srv1 = server_stats()
        with session_scope(deps.sessions) as session:
            states = dict(session.execute(
                select(JobRow.state, func.count()).group_by(JobRow.state)).all())
            sample_reason = session.scalar(select(JobRow.reason).where(JobRow.reason != ""))
        for _ in procs:
            work.put(None)
        outs = [results.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        for server in servers:
            assert server.stdin
            server.stdin.close()
        for server in servers:
            server.wait(timeout=60)
    window = (tick_starts[warmup], tick_starts[-1])
    seconds = window[1] - window[0]
    measured_ticks = seconds / tick_s
    reads: dict[str, list[float]] = defaultdict(list)
    for out in outs:
        for job_id, times in out["reads"].items():
            reads[job_id].extend(times)
    ages: list[float] = []
    for t in tick_starts[warmup:]:
        for i in range(n):
            before = [r for r in reads.get(f"j{i:05d}", []) if r <= t]
            ages.append((t - max(before)) / tick_s if before else float("inf"))
    ages.sort()
    p99 = ages[min(len(ages) - 1, int(0.99 * len(ages)))]
    reads_in = sum(1 for times in reads.values() for r in times if window[0] <= r < window[1])
    print(f"N={n} running jobs, {workers} worker processes x {threads} step threads, "
          f"tick {tick_s:g} s, {ticks} ticks measured after {warmup} warm-up ticks (every job "
          f"stepped once after {cold_ticks}); "
          f"{advance_fraction:.0%} of the jobs advance per tick; load average "
          f"{min(load):.1f}-{max(load):.1f} (1 min)")
    print(f"state age at each tick start, in ticks: max {ages[-1]:.2f}, p99 {p99:.2f}, "
          f"median {ages[len(ages) // 2]:.2f}")
    print(f"job states at the end: {states}" + (f"; a reason: {sample_reason!r}"
                                                 if sample_reason else ""))
    print(f"status reads: {reads_in / n / measured_ticks:.2f} per job per tick; "
          f"claimed per tick: {', '.join(str(x) for x in claimed[warmup:])}")
    rows = []
    total_cpu = 0.0
    for w, out in enumerate(outs):
        a, b = _at(out["samples"], window[0]), _at(out["samples"], window[1])
        cpu = b[1] - a[1]
        total_cpu += cpu
        rows.append([f"worker {w + 1}", f"{cpu / measured_ticks:.2f}",
                     f"{cpu / seconds * 100:.0f} %", f"{(b[2] - a[2]) / n / measured_ticks:.2f}",
                     f"{(b[3] - a[3]) / n / measured_ticks:.2f}",
                     f"{(b[4] - a[4]) / n / measured_ticks:.0f}",
                     f"{(b[5] - a[5]) / n / measured_ticks:.0f}", out["errors"],
                     f"{out['rss_mb']:.0f}"])
    print(c.table(["process", "CPU s/tick", "of one core", "conns/job/tick",
                   "round trips/job/tick", "bytes out/job/tick", "bytes in/job/tick",
                   "step errors", "RSS MB"], rows))
    srv_cpu = float(srv1["cpu_s"]) - float(srv0["cpu_s"])
    print(f"workers together: {total_cpu / measured_ticks:.2f} s CPU per tick, "
          f"{total_cpu * 1000 / n / measured_ticks:.1f} ms per job per tick; the tick itself "
          f"(coordinator): {statistics.median(tick_cpu[warmup:]) * 1000:.0f} ms CPU (median)")
    print(f"instance processes ({len(servers)}, {n} endpoints, on this machine): "
          f"{srv_cpu / measured_ticks:.2f} s CPU per tick; polls answered by bash "
          f"{int(srv1['misses']) - int(srv0['misses'])}, replayed "
          f"{int(srv1['hits']) - int(srv0['hits'])}")
    for out in outs:
        if out["profile"]:
            print("cProfile of worker 1's steps (CPU of its step threads: time.thread_time; "
                  "the whole run):")
            print(out["profile"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="10,100,1000", help="comma-separated job counts")
    ap.add_argument("--ticks", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8, help="step threads in the worker")
    ap.add_argument("--label", default="", help="printed in the header (before/after)")
    ap.add_argument("--profile", action="store_true",
                    help="run the last tick on one thread under cProfile and print the top")
    ap.add_argument("--target", action="store_true",
                    help="the target directly: --n jobs (one value) on --workers processes at "
                    "a real --tick-s tick, state age per job (cheap endpoints: --replay)")
    ap.add_argument("--workers", type=int, default=2, help="--target: worker processes")
    ap.add_argument("--tick-s", type=float, default=10.0, help="--target: tick interval")
    ap.add_argument("--warmup", type=int, default=2,
                    help="--target: ticks not measured once every job was stepped once")
    ap.add_argument("--advance-fraction", type=float, default=0.5,
                    help="--target: share of jobs whose log and progress grow per tick")
    ap.add_argument("--serve-procs", type=int, default=4,
                    help="--target: processes holding the instance endpoints")
    ap.add_argument("--replay", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--public-key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        serve(args.serve, Path(args.root), args.public_key, replay=args.replay,
              first=args.first)
        return
    import logging

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # servers closing at the end
    if args.target:
        c.print_header(f"running jobs: the target {args.label}".strip())
        run_target(int(args.n.split(",")[0]), args.ticks, args.warmup, args.workers,
                   args.threads, args.tick_s, args.advance_fraction, args.serve_procs,
                   args.profile)
        return
    c.print_header(f"running jobs at scale {args.label}".strip())
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores; "
          f"{args.threads} step threads, {args.ticks} ticks per N")
    headers = ["jobs", "tick", "conns/job", "round trips/job", "bytes out/job", "bytes in/job",
               "worker CPU ms/job", "instance CPU ms/job", "tick wall s", "max state age s",
               "worker RSS MB", "running"]
    table_rows = []
    for n in (int(x) for x in args.n.split(",")):
        result = run_n(n, args.ticks, args.threads, args.profile)
        for r in result["rows"]:
            table_rows.append([
                n, r["tick"], f"{r['conns']:.2f}", f"{r['execs']:.2f}", f"{r['out']:.0f}",
                f"{r['in']:.0f}", f"{r['cpu_ms']:.1f}", f"{r['srv_cpu_ms']:.1f}",
                f"{r['wall_s']:.2f}", f"{r['max_age_s']:.2f}", f"{r['rss_mb']:.0f}",
                r["running"],
            ])
        print(f"  N={n} done; load average {os.getloadavg()[0]:.2f}", flush=True)
    print(c.table(headers, table_rows))
    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
