"""The SSH connection pool against a real OpenSSH sshd and the simulator's SSH server."""

from __future__ import annotations

import threading
from pathlib import Path

import paramiko
import pytest

from gpubot.errors import SSHConnectError
from gpubot.remote.pool import SSHPool
from gpubot.remote.runner import SSHTarget
from gpubot.remote.ssh import ParamikoRunner, load_or_create_key
from gpubot.sim.sshd import InstanceSSHServer
from tests.fixtures.sshd import SSHDServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_successive_leases_reuse_one_connection(sshd: SSHDServer) -> None:
    pool = SSHPool()
    pinned = sshd.host_public_key_line
    first = pool.connect(sshd.target, known_host_key=pinned)
    assert first.exec("echo one").stdout == "one\n"
    first.close()
    second = pool.connect(sshd.target, known_host_key=pinned)
    assert second.reused
    assert second.exec("echo two").stdout == "two\n"
    second.close()
    assert (pool.stats.opened, pool.stats.reused) == (1, 1)
    assert pool.idle_count() == 1
    pool.close()
    assert pool.idle_count() == 0


def test_first_use_without_a_pinned_key_never_reuses(sshd: SSHDServer) -> None:
    pool = SSHPool()
    lease = pool.connect(sshd.target, known_host_key=None)
    assert lease.host_key == sshd.host_public_key_line
    lease.close()
    again = pool.connect(sshd.target, known_host_key=None)
    assert not again.reused
    again.close()
    assert pool.stats.opened == 2
    pool.close()


def test_a_changed_host_key_is_never_reused(sshd: SSHDServer, tmp_path: Path) -> None:
    pool = SSHPool()
    lease = pool.connect(sshd.target, known_host_key=sshd.host_public_key_line)
    runner = lease._live().runner
    lease.close()
    other = paramiko.Ed25519Key.from_private_key_file(_keygen(tmp_path / "other"))
    other_line = f"{other.get_name()} {other.get_base64()}"
    with pytest.raises(SSHConnectError) as info:
        pool.connect(sshd.target, known_host_key=other_line)
    assert "host key" in str(info.value)
    assert not runner.alive  # the idle connection to the old key was closed, not handed out
    assert pool.stats.reused == 0 and pool.idle_count() == 0


def test_discard_closes_idle_and_leased_connections(sshd: SSHDServer) -> None:
    pool = SSHPool()
    pinned = sshd.host_public_key_line
    idle = pool.connect(sshd.target, known_host_key=pinned)
    busy = pool.connect(sshd.target, known_host_key=pinned)
    idle_runner, busy_runner = idle._live().runner, busy._live().runner
    idle.close()
    assert pool.discard(sshd.target.host, sshd.target.port) == 1
    assert not idle_runner.alive
    busy.close()  # given back after the destroy: closed, not pooled
    assert not busy_runner.alive and pool.idle_count() == 0


def test_idle_expiry_and_bounds(sshd: SSHDServer) -> None:
    clock = Clock()
    pool = SSHPool(idle_expiry_seconds=60, max_idle_per_address=1, clock=clock)
    pinned = sshd.host_public_key_line
    a = pool.connect(sshd.target, known_host_key=pinned)
    b = pool.connect(sshd.target, known_host_key=pinned)
    a.close()
    b.close()  # over the per-address bound: closed
    assert pool.idle_count() == 1 and pool.stats.closed == 1
    clock.now += 61
    c = pool.connect(sshd.target, known_host_key=pinned)
    assert not c.reused  # the idle one had expired
    c.close()
    assert pool.stats.opened == 3
    pool.close()


def test_a_dead_pooled_connection_is_replaced_transparently(sshd: SSHDServer) -> None:
    pool = SSHPool()
    pinned = sshd.host_public_key_line
    lease = pool.connect(sshd.target, known_host_key=pinned)
    lease.close()
    # the transport dies while idle (instance restarted): it is not handed out again
    runner: ParamikoRunner = next(iter(pool._idle.values())).runner
    runner.close()
    again = pool.connect(sshd.target, known_host_key=pinned)
    assert not again.reused
    assert again.exec("echo ok").stdout == "ok\n"
    again.close()
    pool.close()


def test_threads_never_share_a_connection(sshd: SSHDServer) -> None:
    pool = SSHPool(max_idle_per_address=8)
    pinned = sshd.host_public_key_line
    errors: list[BaseException] = []
    in_use: set[int] = set()
    guard = threading.Lock()

    def work() -> None:
        try:
            for _ in range(5):
                lease = pool.connect(sshd.target, known_host_key=pinned)
                ident = id(lease._live().runner)
                with guard:
                    assert ident not in in_use
                    in_use.add(ident)
                assert lease.exec("echo x").stdout == "x\n"
                with guard:
                    in_use.discard(ident)
                lease.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pool.stats.opened <= 4 and pool.stats.reused >= 16
    pool.close()


def test_same_address_new_server_key_on_the_simulator(tmp_path: Path) -> None:
    """An address taken over by another instance (new host key): the pool never hands the
    old connection to a caller pinning the new key, and the old key's pin fails."""
    key_path = tmp_path / "client"
    _, public = load_or_create_key(key_path)
    root = tmp_path / "root"
    root.mkdir()
    old_key = paramiko.Ed25519Key.from_private_key_file(_keygen(tmp_path / "old"))
    server = InstanceSSHServer(instance_id=1, root=root, host_key=old_key,
                               authorized_keys=lambda: [public], env={},
                               on_bytes=lambda down, up: None)
    target = SSHTarget(host="127.0.0.1", port=server.port, user="root",
                       private_key_path=key_path)
    pool = SSHPool()
    old_line = f"{old_key.get_name()} {old_key.get_base64()}"
    try:
        lease = pool.connect(target, known_host_key=old_line)
        assert lease.exec("echo hi").stdout == "hi\n"
        lease.close()
        new_key = paramiko.Ed25519Key.from_private_key_file(_keygen(tmp_path / "new"))
        server.host_key = new_key  # later handshakes present the new key
        new_line = f"{new_key.get_name()} {new_key.get_base64()}"
        fresh = pool.connect(target, known_host_key=new_line)
        assert not fresh.reused and fresh.host_key == new_line
        fresh.close()
        assert pool.stats.reused == 0
    finally:
        pool.close()
        server.stop()


def _keygen(path: Path) -> str:
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True)
    return str(path)
