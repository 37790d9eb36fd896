"""Many short execs on one SSH connection to a simulated instance, with the CPUs kept busy.

Guards the ordering contract of :mod:`gpubot.sim.sshd`: a command's process starts only after
the server has answered the exec request, so a fast command (``true``) can never send its exit
status and close the channel before the client has seen the request accepted (the client then
fails with ``SSHException: Channel closed``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko
import pytest
from vastai import VastAI

from gpubot.sim.server import SimServer
from tests.fixtures.sim import SshKey, run_until_running, ssh_connect

BUSY_LOOP_LIMIT_S = 120
"""A busy-loop child ends by itself after this long even if the test process dies."""

BUSY_LOOP = (
    "import time\n"
    f"end = time.monotonic() + {BUSY_LOOP_LIMIT_S}\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)


@contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    """Keep ``processes`` busy-loop children running for the duration; kill them on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(processes)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=10)


def _exec(client: paramiko.SSHClient, command: str) -> tuple[int, bytes]:
    """(exit status, stdout) of ``command`` on a fresh channel of ``client``'s connection."""
    stdin, stdout, _stderr = client.exec_command(command, timeout=20)
    stdin.channel.shutdown_write()
    out = stdout.read()
    return stdout.channel.recv_exit_status(), out


def _hammer(client: paramiko.SSHClient, count: int, failures: list[str]) -> None:
    """Run ``count`` short execs in turn, appending a line to ``failures`` for each bad one."""
    for i in range(count):
        command, want = ("true", b"") if i % 2 else ("echo x", b"x\n")
        try:
            result = _exec(client, command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            failures.append(f"{command!r} #{i}: {type(e).__name__}: {e}")
            continue
        if result != (0, want):
            failures.append(f"{command!r} #{i}: got {result!r}")


def _stress(sim: SimServer, vast: VastAI, key: SshKey, *, sequential: int, parallel: int,
            per_thread: int) -> None:
    instance_id = int(sim.control.create_instance("ssh-stress"))
    vast.attach_ssh(instance_id, key.public)
    run_until_running(sim, vast, instance_id)
    client = ssh_connect(vast, instance_id, key)
    transport = client.get_transport()
    assert transport is not None
    # Without this the client's small packets wait on delayed ACKs (Nagle): ~45 ms an exec.
    transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    failures: list[str] = []
    try:
        with cpu_load(min(3, (os.cpu_count() or 1) + 1)):
            _hammer(client, sequential, failures)
            threads = [threading.Thread(target=_hammer, args=(client, per_thread, failures))
                       for _ in range(parallel)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not any(t.is_alive() for t in threads), "exec threads hung"
    finally:
        client.close()
        vast.destroy_instance(instance_id)
    total = sequential + parallel * per_thread
    assert not failures, f"{len(failures)} of {total} execs failed: {failures[:5]}"


def test_many_short_execs_on_one_connection_under_load(sim: SimServer, vast: VastAI,
                                                       ssh_key: SshKey) -> None:
    _stress(sim, vast, ssh_key, sequential=120, parallel=3, per_thread=30)


@pytest.mark.slow
def test_many_short_execs_on_one_connection_under_load_long(sim: SimServer, vast: VastAI,
                                                            ssh_key: SshKey) -> None:
    _stress(sim, vast, ssh_key, sequential=2000, parallel=4, per_thread=500)


def test_shell_env_per_channel_and_one_command_per_channel(sim: SimServer, vast: VastAI,
                                                           ssh_key: SshKey) -> None:
    instance_id = int(sim.control.create_instance("ssh-channels"))
    vast.attach_ssh(instance_id, ssh_key.public)
    run_until_running(sim, vast, instance_id)
    client = ssh_connect(vast, instance_id, ssh_key)
    try:
        transport = client.get_transport()
        assert transport is not None
        shell = transport.open_session(timeout=10)
        shell.settimeout(20)
        shell.invoke_shell()
        shell.sendall(b'echo "in shell $GPUBOT_SIM_INSTANCE"; exit 7\n')
        out = b""
        while chunk := shell.recv(4096):
            out += chunk
        assert (shell.recv_exit_status(), out) == (7, f"in shell {instance_id}\n".encode())
        # An env request belongs to its own channel, not to the channels opened after it.
        _, stdout, _ = client.exec_command('printf %s "$STRESS_VAR"', timeout=20,
                                           environment={"STRESS_VAR": "first"})
        assert stdout.read() == b"first"
        assert _exec(client, 'printf %s "${STRESS_VAR-unset}"') == (0, b"unset")
        # A second exec on a channel whose command is running is refused, as OpenSSH does.
        chan = transport.open_session(timeout=10)
        chan.exec_command("cat")
        with pytest.raises(paramiko.SSHException):
            chan.exec_command("echo second")
        assert _exec(client, "echo still-usable") == (0, b"still-usable\n")
    finally:
        client.close()
        vast.destroy_instance(instance_id)
