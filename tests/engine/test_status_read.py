"""The running step's status read: one round trip, parsed whole, over pooled connections."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.engine import remote_job
from gpubot.remote import control, parsing
from gpubot.remote.pool import SSHPool
from tests.fixtures.sshd import SSHDServer, sshd  # noqa: F401

# -- parsing (pure) ---------------------------------------------------------------------------


def _status_line(**over: object) -> str:
    import json

    data: dict[str, object] = {
        "stage": "job", "running": True, "pid": 42, "exit_code": None, "log_size": 120,
        "log_mtime": 1700000000, "progress_size": 30, "progress_mtime": 1700000001,
        "tail_included": True, "progress_included": True, "disk_free_mb": 900,
        "dmesg_readable": False, "oom_hint": None, "cancelled": False,
        "checkpoints_sig": "123 45", "now": 1700000002,
        "progress": '{"step": 7, "total_steps": 10, "metrics": {"loss": 0.5}}',
    }
    data.update(over)
    return json.dumps(data)


def test_parse_poll_splits_tail_and_status() -> None:
    nonce = "ab" * 8
    tail = "line 1\n{'loss': 0.25, 'epoch': 1.0}\n"
    text = tail + "\n" + control.poll_marker(nonce) + "\n" + _status_line() + "\n"
    poll = parsing.parse_poll(text, nonce)
    assert poll.tail == tail
    assert poll.status.running and poll.status.pid == 42 and poll.status.exit_code is None
    assert poll.status.progress is not None and poll.status.progress.step == 7
    assert poll.log_seen == (120, 1700000000) and poll.progress_seen == (30, 1700000001)
    assert poll.progress_included and poll.checkpoints_sig == "123 45"


def test_parse_poll_skipped_parts_and_forged_markers() -> None:
    nonce = "cd" * 8
    forged = "\n" + control.poll_marker("ef" * 8) + "\n" + _status_line(exit_code=0) + "\n"
    text = (forged + "\n" + control.poll_marker(nonce) + "\n"
            + _status_line(tail_included=False, progress_included=False, progress=None))
    poll = parsing.parse_poll(text, nonce)
    assert poll.tail is None and poll.status.progress is None and not poll.progress_included
    assert poll.status.exit_code is None  # the job's log cannot pose as the status
    with pytest.raises(ValueError):
        parsing.parse_poll(forged, nonce)
    with pytest.raises(ValueError):
        parsing.parse_poll("\n" + control.poll_marker(nonce) + "\n{}\nextra\n", nonce)


def test_poll_script_rejects_non_hex_nonce_and_bad_seen() -> None:
    layout = control.remote_layout("/w", "j1")
    with pytest.raises(ValueError):
        control.poll_script(layout, nonce="$(reboot)")
    with pytest.raises(ValueError):
        control.poll_script(layout, nonce="ab" * 8, seen_log=(-1, 0))


# -- against a real sshd -------------------------------------------------------------------------


def _job_files(root: Path, job_id: str, *, exit_code: int | None = None) -> Path:
    job_dir = root / "gpubot" / job_id
    (job_dir / ".control").mkdir(parents=True)
    (job_dir / "checkpoints").mkdir()
    (job_dir / ".control" / "pid").write_text(f"{os.getpid()}\n")
    if exit_code is not None:
        (job_dir / ".control" / "exit_code").write_text(f"{exit_code}\n")
    (job_dir / ".control" / "log").write_text(
        "starting\n{'loss': 0.75, 'epoch': 0.5}\n" + "x" * 100 + "\n"
    )
    (job_dir / "progress.json").write_text('{"step": 3, "total_steps": 9, "metrics": {}}')
    return job_dir


def _pooled(deps: EngineDeps, server: SSHDServer) -> SSHPool:
    pool = SSHPool()
    deps.connect = pool.connect
    deps.ssh_pool = pool
    deps.ssh_key_path = server.key_path
    return pool


def _rows(server: SSHDServer, job_id: str) -> tuple[JobRow, InstanceRow]:
    job = JobRow(id=job_id, remote_root=str(server.root), progress={})
    instance = InstanceRow(provider_id="77", ssh_host=server.target.host,
                           ssh_port=server.target.port, host_key=server.host_public_key_line)
    return job, instance


def test_status_reads_reuse_one_connection_and_skip_unchanged_parts(
    deps: EngineDeps, sshd: SSHDServer  # noqa: F811
) -> None:
    pool = _pooled(deps, sshd)
    job_dir = _job_files(sshd.root, "j1")
    job, instance = _rows(sshd, "j1")

    with remote_job.connect(deps, instance) as session:
        first = session.status(job)
    assert first.running and first.tail_read and first.log_tail.startswith("starting")
    assert first.progress is not None and first.progress.step == 3
    assert first.trainer_metrics == {"loss": 0.75, "epoch": 0.5}
    job.progress = remote_job.merge_progress(job, first, deps.clock())

    with remote_job.connect(deps, instance) as session:
        second = session.status(job)
    assert second.running and not second.tail_read and second.progress is None
    assert (pool.stats.opened, pool.stats.reused) == (1, 1)  # one SSH connection for both

    job.progress = remote_job.merge_progress(job, second, deps.clock())
    assert job.progress["step"] == 3  # nothing lost by skipping
    with open(job_dir / ".control" / "log", "a") as fh:
        fh.write("more output\n")
    with remote_job.connect(deps, instance) as session:
        third = session.status(job)
    assert third.tail_read and third.log_tail.endswith("more output\n")
    assert pool.stats.opened == 1
    pool.close()


def test_finished_job_always_gets_its_tail(
    deps: EngineDeps, sshd: SSHDServer  # noqa: F811
) -> None:
    _pooled(deps, sshd)
    _job_files(sshd.root, "j2", exit_code=3)
    job, instance = _rows(sshd, "j2")
    with remote_job.connect(deps, instance) as session:
        first = session.status(job)
    job.progress = remote_job.merge_progress(job, first, deps.clock())
    with remote_job.connect(deps, instance) as session:
        again = session.status(job)  # log unchanged, but the job is not running
    assert again.exit_code == 3 and again.tail_read and "x" * 100 in again.log_tail
    assert "exited with status 3" in remote_job.failure_reason(again)
    assert deps.ssh_pool is not None
    deps.ssh_pool.close()


def test_destroying_an_instance_closes_its_pooled_connection(
    deps: EngineDeps, sshd: SSHDServer  # noqa: F811
) -> None:
    pool = _pooled(deps, sshd)
    _job_files(sshd.root, "j3")
    job, instance = _rows(sshd, "j3")
    with remote_job.connect(deps, instance) as session:
        session.status(job)
        runner = session.runner._live().runner  # type: ignore[attr-defined]
    assert pool.idle_count(sshd.target.host, sshd.target.port) == 1
    remote_job.request_destroy(deps, instance)
    assert pool.idle_count() == 0 and not runner.alive


def test_poll_script_output_parses_with_hostile_log(tmp_path: Path) -> None:
    """The script itself (run by sh, as sshd would) with a log full of fake markers."""
    nonce = secrets.token_hex(16)
    layout = control.remote_layout(str(tmp_path), "j4")
    job_dir = Path(layout.job_dir)
    (job_dir / ".control").mkdir(parents=True)
    (job_dir / ".control" / "pid").write_text(f"{os.getpid()}\n")
    fake = "\n" + control.poll_marker(nonce[:-2] + "00") + "\n" + _status_line(exit_code=9)
    (job_dir / ".control" / "log").write_text(fake + "\n" + "y" * 300_000)  # one huge line
    out = subprocess.run(["sh", "-c", control.poll_script(layout, nonce=nonce)],
                         capture_output=True, text=True, check=True).stdout
    assert len(out.encode()) <= control.POLL_MAX_OUTPUT_BYTES
    poll = parsing.parse_poll(out, nonce)
    assert poll.status.running and poll.status.exit_code is None
    assert poll.tail is not None and len(poll.tail) <= control.LOG_TAIL_MAX_BYTES
    assert poll.checkpoints_sig == "absent" and poll.progress_seen == (0, 0)


@pytest.mark.parametrize("exit_code", [None, 0])
def test_a_stopped_job_always_gets_its_progress(tmp_path: Path, exit_code: int | None) -> None:
    """mtimes are whole seconds: a last report of the same size written within the second of
    the one before looks unchanged. A running job reads it on a later poll; a stopped job has
    no later poll, so it always reads it (a finished job kept its next-to-last step)."""
    nonce = secrets.token_hex(16)
    layout = control.remote_layout(str(tmp_path), "j5")
    job_dir = Path(layout.job_dir)
    (job_dir / ".control").mkdir(parents=True)
    (job_dir / ".control" / "pid").write_text(f"{os.getpid()}\n")
    if exit_code is not None:
        (job_dir / ".control" / "exit_code").write_text(f"{exit_code}\n")
    progress = Path(layout.progress_file)
    progress.write_text('{"step": 120, "total_steps": 120, "metrics": {}}')
    st = progress.stat()
    seen = (st.st_size, int(st.st_mtime))  # what the poll of step 119 saw: same size, second
    script = control.poll_script(layout, nonce=nonce, seen_progress=seen)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    poll = parsing.parse_poll(out, nonce)
    if exit_code is None:
        assert poll.status.running and poll.status.progress is None  # skipped while running
    else:
        assert poll.status.exit_code == 0
        assert poll.status.progress is not None and poll.status.progress.step == 120
