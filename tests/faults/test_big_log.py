"""A job writing a 1 GiB single-line log (and progress file) must not blow up the worker.

The running step's status read (``RemoteSession.status``: status script, log tail, trainer
metrics, diagnosis) runs in a child process against a real OpenSSH sshd, so the child's peak
RSS (``VmHWM``) measures that read alone, isolated from pytest and the sshd.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gpubot.remote import control
from tests.fixtures.sshd import SSHDServer, sshd  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3
MAX_PEAK_INCREASE_MIB = 300
CHILD_DEADLINE_SECONDS = 240

_CHILD = r"""
import json, sys, time
from datetime import UTC, datetime
from pathlib import Path

from gpubot.db.tables import JobRow
from gpubot.remote.runner import SSHTarget
from gpubot.remote.ssh import ParamikoRunner
from gpubot.engine import remote_job
def vm_hwm_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


host, port, user, key, root = sys.argv[1:6]
runner = ParamikoRunner(target=SSHTarget(host, int(port), user, Path(key)))
session = remote_job.RemoteSession(runner, None)
small = JobRow(id="job-small", remote_root=root)
session.status(small)  # warm up: imports, connection, buffers
base = vm_hwm_kib()
job = JobRow(id="job-big", remote_root=root, progress={})
started = time.monotonic()
status = session.status(job)
progress = remote_job.merge_progress(job, status, datetime.now(UTC))
reason = remote_job.failure_reason(status)
elapsed = time.monotonic() - started
peak = vm_hwm_kib()
runner.close()
print(json.dumps({
    "base_kib": base, "peak_kib": peak, "seconds": elapsed,
    "running": status.running, "exit_code": status.exit_code,
    "log_tail_chars": len(status.log_tail), "log_tail_end": status.log_tail[-40:],
    "trainer_metrics": status.trainer_metrics, "progress_parsed": status.progress is not None,
    "reason_chars": len(reason), "metrics": progress.get("metrics"),
}))
"""


def _job_files(root: Path, job_id: str, log_bytes: int, log_end: bytes, progress_bytes: int
               ) -> None:
    layout = control.remote_layout(str(root), job_id)
    Path(layout.control_dir).mkdir(parents=True, exist_ok=True)
    for path, size, end in (
        (layout.log_file(), log_bytes, log_end),
        (layout.progress_file, progress_bytes, b'{"step": 1}'),
    ):
        with open(path, "wb") as fh:  # sparse: instant, no disk
            fh.truncate(size)
            fh.seek(size)
            fh.write(end)
    Path(layout.pid_file()).write_text("999999\n")
    Path(layout.exit_code_file()).write_text("1\n")


def test_status_read_of_a_1gb_single_line_log_stays_within_300mib(sshd: SSHDServer) -> None:  # noqa: F811
    # given a finished job whose log is one 1 GiB line ending in Trainer metrics, and whose
    # progress file is 1 GiB as well (plus a small job to warm the child up)
    _job_files(sshd.root, "job-small", 10, b"\nhello\n", 0)
    _job_files(sshd.root, "job-big", GIB, b" {'loss': 0.25, 'epoch': 2.0}", GIB)
    target = sshd.target
    # when the engine's status read runs against it in a fresh process
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, target.host, str(target.port), target.user,
         str(target.private_key_path), str(sshd.root)],
        capture_output=True, text=True, cwd=REPO, timeout=CHILD_DEADLINE_SECONDS, check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    increase_mib = (figures["peak_kib"] - figures["base_kib"]) / 1024
    print(f"peak RSS increase {increase_mib:.1f} MiB in {figures['seconds']:.2f} s")
    # then the worker's peak memory grows by less than 300 MiB
    assert increase_mib < MAX_PEAK_INCREASE_MIB, figures
    # and the status is still useful: newest bytes of the log, metrics, a failure reason
    assert figures["exit_code"] == 1 and not figures["running"]
    assert 0 < figures["log_tail_chars"] <= control.LOG_TAIL_MAX_BYTES
    assert figures["log_tail_end"].endswith("{'loss': 0.25, 'epoch': 2.0}")
    assert figures["trainer_metrics"] == {"loss": 0.25, "epoch": 2.0}
    assert not figures["progress_parsed"]  # an oversized progress file reads as unreadable
    assert figures["reason_chars"] <= control.LOG_TAIL_MAX_BYTES + 200
