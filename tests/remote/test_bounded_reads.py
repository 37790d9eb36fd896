"""Bounded reads from the instance: job output is untrusted, so no read may grow without limit.

Real OpenSSH sshd and the simulator's own SSH server (paramiko), through ``ParamikoRunner``.
The remote is this machine, so big remote files are made locally (sparse with ``truncate``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpubot.errors import RemoteCommandFailed, RemoteError, SSHConnectError
from gpubot.remote import control
from gpubot.remote.control import RemoteLayout
from gpubot.remote.parsing import parse_status
from gpubot.remote.runner import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_OUTPUT_BYTES,
    ExecResult,
    SSHTarget,
)
from gpubot.remote.ssh import ParamikoRunner, load_or_create_key
from gpubot.sim.sshd import InstanceSSHServer
from tests.fixtures.sshd import SSHDServer

GIB = 1024**3
MIB = 1024**2
BIG_LINE_BYTES = 50_000_000


@pytest.fixture(params=["openssh", "sim"])
def endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SSHTarget, Path]]:
    """``(target, remote root)`` of a real OpenSSH sshd or of the simulator's SSH server."""
    if request.param == "openssh":
        server: SSHDServer = request.getfixturevalue("sshd")
        yield server.target, server.root
        return
    key_path = tmp_path / "client_key"
    _, public_line = load_or_create_key(key_path)
    host_key, _ = load_or_create_key(tmp_path / "host_key")
    root = tmp_path / "sim-root"
    root.mkdir()
    sim = InstanceSSHServer(
        instance_id=1,
        root=root,
        host_key=host_key,
        authorized_keys=lambda: [public_line],
        env={},
        on_bytes=lambda down, up: None,
    )
    try:
        yield SSHTarget(host="127.0.0.1", port=sim.port, user="root",
                        private_key_path=key_path), root
    finally:
        sim.stop()


def _sparse_file(path: Path, size_bytes: int, tail: bytes = b"") -> None:
    """A file of ``size_bytes`` NUL bytes (sparse: instant, no disk) followed by ``tail``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size_bytes)
        fh.seek(size_bytes)
        fh.write(tail)


def _layout(root: Path) -> RemoteLayout:
    layout = control.remote_layout(str(root), "job-big")
    Path(layout.control_dir).mkdir(parents=True, exist_ok=True)
    Path(layout.workspace).mkdir(parents=True, exist_ok=True)
    return layout


# -- Runner.exec -------------------------------------------------------------------------------


def test_exec_keeps_only_the_newest_bytes_of_a_50mb_line(
    endpoint: tuple[SSHTarget, Path],
) -> None:
    # given a command printing one 50 MB line on stdout (and a little on stderr)
    target, _ = endpoint
    command = (
        f"head -c {BIG_LINE_BYTES} /dev/zero | tr '\\0' x; printf END; printf small-err >&2"
    )
    with ParamikoRunner(target=target) as runner:
        # when it runs with the default bound
        result = runner.exec(command, timeout_seconds=120)
        # then stdout holds exactly the newest DEFAULT_MAX_OUTPUT_BYTES bytes, marked truncated
        assert result.ok
        assert len(result.stdout) == DEFAULT_MAX_OUTPUT_BYTES
        assert result.stdout.endswith("xxxEND")
        assert result.truncated and result.stdout_truncated
        assert result.stdout_dropped_bytes == BIG_LINE_BYTES + 3 - DEFAULT_MAX_OUTPUT_BYTES
        # and stderr, under its own bound, is complete
        assert result.stderr == "small-err"
        assert not result.stderr_truncated and result.stderr_dropped_bytes == 0
        # and the connection is still usable
        assert runner.exec("echo next").stdout == "next\n"


def test_exec_bounds_stderr_separately(endpoint: tuple[SSHTarget, Path]) -> None:
    target, _ = endpoint
    with ParamikoRunner(target=target) as runner:
        result = runner.exec(
            "echo out; head -c 5000000 /dev/zero | tr '\\0' e >&2; printf LAST >&2; exit 3",
            max_output_bytes=4096,
        )
    assert result.exit_status == 3
    assert result.stdout == "out\n" and not result.stdout_truncated
    assert len(result.stderr) == 4096 and result.stderr.endswith("eLAST")
    assert result.stderr_dropped_bytes == 5_000_004 - 4096


def test_exec_short_output_is_not_marked_truncated(endpoint: tuple[SSHTarget, Path]) -> None:
    target, _ = endpoint
    with ParamikoRunner(target=target) as runner:
        result = runner.exec("printf 12345678", max_output_bytes=8)
    assert result.stdout == "12345678" and not result.truncated
    assert ExecResult(0, "", "").truncated is False  # defaults: nothing dropped


def test_exec_rejects_a_non_positive_bound(sshd: SSHDServer) -> None:
    with ParamikoRunner(target=sshd.target) as runner:
        with pytest.raises(ValueError):
            runner.exec("true", max_output_bytes=0)


@pytest.mark.timeout(90)
def test_endless_output_still_times_out(endpoint: tuple[SSHTarget, Path]) -> None:
    # given a command that floods stdout (for 30 s at most, so the old code ends too)
    target, _ = endpoint
    with ParamikoRunner(target=target) as runner:
        started = time.monotonic()
        # when it runs with a 2 s timeout, then the timeout fires on time despite the flood
        with pytest.raises(RemoteCommandFailed) as info:
            runner.exec("timeout 30 yes", timeout_seconds=2)
        assert info.value.exit_status == 124
        assert time.monotonic() - started < 15
        # and the connection is still usable
        assert runner.exec("echo alive", timeout_seconds=30).stdout == "alive\n"


# -- get_bytes ---------------------------------------------------------------------------------


def test_get_bytes_refuses_files_over_the_bound(endpoint: tuple[SSHTarget, Path]) -> None:
    target, root = endpoint
    _sparse_file(root / "huge.bin", GIB)
    (root / "small.json").write_bytes(b'{"ok": true}')
    (root / "edge.bin").write_bytes(b"y" * 1000)
    with ParamikoRunner(target=target) as runner:
        started = time.monotonic()
        with pytest.raises(RemoteError) as info:
            runner.get_bytes(f"{root}/huge.bin")  # default bound
        assert not isinstance(info.value, SSHConnectError)
        assert str(DEFAULT_MAX_FILE_BYTES) in str(info.value)
        assert time.monotonic() - started < 10  # refused without reading the file
        with pytest.raises(RemoteError):
            runner.get_bytes(f"{root}/edge.bin", max_bytes=999)
        assert runner.get_bytes(f"{root}/edge.bin", max_bytes=1000) == b"y" * 1000
        assert runner.get_bytes(f"{root}/small.json", max_bytes=64) == b'{"ok": true}'
        assert runner.get_bytes(f"{root}/missing", max_bytes=64) is None
        assert runner.exec("true").ok  # the link survived the refusal


# -- log and progress reads in the control scripts ---------------------------------------------


def test_log_tail_of_a_1gb_single_line_log_is_bounded(endpoint: tuple[SSHTarget, Path]) -> None:
    # given a 1 GiB log that is one single line ending in a marker
    target, root = endpoint
    layout = _layout(root)
    _sparse_file(Path(layout.log_file()), GIB, b"NEWEST")
    with ParamikoRunner(target=target) as runner:
        started = time.monotonic()
        # when the log's last 60 lines are read (a runner bound far above the script's)
        result = runner.exec(
            control.tail_log_script(layout, 60), timeout_seconds=60, max_output_bytes=64 * MIB
        )
        elapsed = time.monotonic() - started
    # then the script itself sent at most LOG_TAIL_MAX_BYTES: the newest part of that line
    assert result.ok and not result.truncated
    assert 0 < len(result.stdout) <= control.LOG_TAIL_MAX_BYTES
    assert result.stdout.endswith("NEWEST")
    assert elapsed < 20


def test_log_tail_returns_whole_newest_lines_after_a_huge_line(
    endpoint: tuple[SSHTarget, Path],
) -> None:
    target, root = endpoint
    layout = _layout(root)
    log = Path(layout.log_file())
    newest = "".join(f"line-{i}\n" for i in range(100))
    _sparse_file(log, GIB, b"\n" + newest.encode())
    small = Path(layout.log_file("setup"))
    small.write_text("a\nb\nc\n")
    with ParamikoRunner(target=target) as runner:
        tail = runner.exec(control.tail_log_script(layout, 60)).stdout
        three = runner.exec(control.tail_log_script(layout, 3)).stdout
        whole = runner.exec(control.tail_log_script(layout, 60, stage="setup")).stdout
        # the byte window falls inside the lines: the partial first line is dropped
        window = runner.exec(control.tail_log_script(layout, 60, max_bytes=30)).stdout
        missing = runner.exec(control.tail_log_script(
            control.remote_layout(str(root), "nobody"), 60))
    assert tail == "".join(f"line-{i}\n" for i in range(40, 100))
    assert three == "line-97\nline-98\nline-99\n"
    assert whole == "a\nb\nc\n"
    assert window == "line-97\nline-98\nline-99\n"
    assert missing.ok and missing.stdout == ""


def test_setup_failure_tail_is_bounded(endpoint: tuple[SSHTarget, Path]) -> None:
    # given a setup command that prints a 5 MB line and fails
    target, root = endpoint
    layout = _layout(root)
    script = control.setup_script(
        layout, ["head -c 5000000 /dev/zero | tr '\\0' s; echo; echo last words; exit 5"]
    )
    with ParamikoRunner(target=target) as runner:
        result = runner.exec(script, timeout_seconds=60, max_output_bytes=64 * MIB)
    # then stderr carries only the log's newest bytes, whole lines
    assert result.exit_status == 5
    assert len(result.stderr) <= control.SETUP_FAILURE_TAIL_MAX_BYTES
    assert "last words" in result.stderr
    assert "setup command failed with exit status 5" in result.stderr


def test_status_reads_of_huge_progress_and_control_files_are_bounded(
    endpoint: tuple[SSHTarget, Path],
) -> None:
    # given a job that overwrote its progress file (1 GiB, one line) and pid file (50 MB of
    # digits), and wrote a 1 GiB single-line log
    target, root = endpoint
    layout = _layout(root)
    _sparse_file(Path(layout.progress_file), GIB, b'{"step": 5}')
    Path(layout.pid_file()).write_bytes(b"7" * 50_000_000)
    _sparse_file(Path(layout.log_file()), GIB)
    with ParamikoRunner(target=target) as runner:
        result = runner.exec(
            control.status_script(layout), timeout_seconds=60, max_output_bytes=64 * MIB
        )
    # then the status line is small and parses; an oversized progress file reads as unreadable
    assert result.ok and not result.truncated
    assert len(result.stdout) < 2 * control.PROGRESS_MAX_BYTES + 4096
    status = parse_status(result.stdout)
    assert status.progress is None
    assert status.log_size == GIB
    assert not status.running
    assert status.pid is not None and len(str(status.pid)) <= control.CONTROL_FILE_MAX_BYTES


def test_progress_within_the_bound_still_parses(endpoint: tuple[SSHTarget, Path]) -> None:
    target, root = endpoint
    layout = _layout(root)
    Path(layout.progress_file).write_text('{"step": 5, "total_steps": 10, "metrics": {}}')
    with ParamikoRunner(target=target) as runner:
        status = parse_status(runner.exec(control.status_script(layout)).stdout)
    assert status.progress is not None and status.progress.step == 5


def test_start_and_kill_read_only_a_bounded_pid(endpoint: tuple[SSHTarget, Path]) -> None:
    # a pid file stuffed with 50 MB of digits must not be echoed back whole
    target, root = endpoint
    layout = _layout(root)
    Path(layout.pid_file()).write_bytes(b"9" * 50_000_000)
    with ParamikoRunner(target=target) as runner:
        killed = runner.exec(control.kill_script(layout, grace_seconds=0.2),
                             max_output_bytes=64 * MIB)
        Path(layout.pid_file()).write_bytes(b"9" * 50_000_000)
        Path(layout.exit_code_file()).unlink(missing_ok=True)
        started = runner.exec(control.start_detached_script(layout, "sleep 0", ""),
                              max_output_bytes=64 * MIB)
    assert killed.ok and len(killed.stdout) < 4096
    assert started.ok and started.stdout.startswith("started ") and len(started.stdout) < 4096


def test_module_bounds_are_documented_constants() -> None:
    assert control.LOG_TAIL_MAX_BYTES <= DEFAULT_MAX_OUTPUT_BYTES
    assert 2 * control.PROGRESS_MAX_BYTES + 4096 <= DEFAULT_MAX_OUTPUT_BYTES


def test_listing_reads_refuse_a_partial_result(sshd: SSHDServer) -> None:
    # a listing must be complete (a backup must not miss files): over its bound it is an error
    from gpubot.engine.remote_job import RemoteSession

    with ParamikoRunner(target=sshd.target) as runner:
        session = RemoteSession(runner, None)  # type: ignore[arg-type]  # no store needed
        with pytest.raises(RemoteCommandFailed) as info:
            session._run("head -c 5000 /dev/zero | tr '\\0' l", "listing", max_output_bytes=100)
        assert "more than 100 bytes" in str(info.value)
        assert session._run("printf ok", "listing", max_output_bytes=100) == "ok"
        # without an explicit bound, output keeps its newest bytes (log-like reads)
        assert session._run("printf 'x%.0s' $(seq 1 10); printf END", "log").endswith("END")
