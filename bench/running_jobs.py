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


def serve(n: int, root: Path, public_key: str) -> None:
    """Start N instance SSH servers, print one JSON line each, serve until stdin closes."""
    import logging

    import paramiko

    from gpubot.sim.sshd import InstanceSSHServer

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # clients closing are normal

    servers = []
    for i in range(n):
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
        servers.append(InstanceSSHServer(
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
                              + t.children_system}), flush=True)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="10,100,1000", help="comma-separated job counts")
    ap.add_argument("--ticks", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8, help="step threads in the worker")
    ap.add_argument("--label", default="", help="printed in the header (before/after)")
    ap.add_argument("--profile", action="store_true",
                    help="run the last tick on one thread under cProfile and print the top")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--public-key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        serve(args.serve, Path(args.root), args.public_key)
        return
    import logging

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # servers closing at the end
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
