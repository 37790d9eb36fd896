"""ParamikoRunner against a real OpenSSH sshd."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import paramiko
import pytest

from gpubot.errors import RemoteCommandFailed, SSHConnectError
from gpubot.remote.runner import Runner, SSHTarget
from gpubot.remote.ssh import ParamikoRunner, fingerprint_of, load_or_create_key
from tests.fixtures.sshd import SSHDServer, free_port


def test_load_or_create_key_generates_ed25519_0600_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "home" / "id_ed25519"
    key, public = load_or_create_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.startswith("ssh-ed25519 ") and public.split()[1] == key.get_base64()
    again, public_again = load_or_create_key(path)
    assert public_again == public
    assert fingerprint_of(again) == fingerprint_of(key)


def test_load_or_create_key_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_text("not a key")
    with pytest.raises(SSHConnectError) as info:
        load_or_create_key(path)
    assert "not a key" not in str(info.value)


def test_exec_returns_output_and_exit_status(sshd: SSHDServer) -> None:
    with ParamikoRunner(target=sshd.target) as runner:
        as_port: Runner = runner  # structural: ParamikoRunner satisfies the port
        assert as_port is runner
        ok = runner.exec("printf 'out\\n'; printf 'err\\n' >&2")
        assert (ok.exit_status, ok.stdout, ok.stderr, ok.ok) == (0, "out\n", "err\n", True)
        failed = runner.exec("exit 7")
        assert failed.exit_status == 7 and not failed.ok
        big = runner.exec("head -c 300000 /dev/zero | tr '\\0' x")
        assert len(big.stdout) == 300000


def test_the_connection_sends_small_packets_at_once(sshd: SSHDServer) -> None:
    # Nagle's algorithm held each command's second small packet for the server's delayed
    # ACK: ~45 ms more per exec against OpenSSH on this machine (110 vs 160 ms)
    with ParamikoRunner(target=sshd.target) as runner:
        runner.connect()
        transport = runner._transport()  # noqa: SLF001 - the socket option is the contract
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert runner.exec("echo hi").stdout == "hi\n"


def test_exec_timeout_raises_and_connection_stays_usable(sshd: SSHDServer) -> None:
    with ParamikoRunner(target=sshd.target) as runner:
        # 3 s, not less: under load the session and bash start can take over a second before
        # "started" reaches stderr (a 0.5 s timeout failed on a loaded 2-core machine).
        with pytest.raises(RemoteCommandFailed) as info:
            runner.exec("echo started >&2; sleep 30", timeout_seconds=3.0)
        assert info.value.exit_status == 124
        assert "started" in info.value.stderr_tail
        assert runner.exec("echo still-here").stdout == "still-here\n"


def test_put_and_get_over_sftp(sshd: SSHDServer, tmp_path: Path) -> None:
    remote = sshd.root.as_posix()
    local = tmp_path / "local.bin"
    payload = os.urandom(200_000)
    local.write_bytes(payload)
    with ParamikoRunner(target=sshd.target) as runner:
        runner.put_file(local, f"{remote}/a.bin")
        runner.put_bytes(b"#!/bin/sh\necho hi\n", f"{remote}/run.sh", mode=0o755)
        assert runner.get_bytes(f"{remote}/a.bin") == payload
        assert runner.exec(f"{remote}/run.sh").stdout == "hi\n"
        assert runner.get_bytes(f"{remote}/missing") is None
        assert runner.get_bytes(f"{remote}/no/such/dir/file") is None
        assert runner.get_bytes(remote) is None  # a directory is not a file
    assert (sshd.root / "a.bin").read_bytes() == payload
    assert stat.S_IMODE((sshd.root / "run.sh").stat().st_mode) == 0o755


def test_wrong_key_is_refused(sshd: SSHDServer, tmp_path: Path) -> None:
    other, _ = load_or_create_key(tmp_path / "other_key")
    target = SSHTarget(
        host=sshd.target.host,
        port=sshd.target.port,
        user=sshd.target.user,
        private_key_path=tmp_path / "other_key",
    )
    with pytest.raises(SSHConnectError) as info:
        ParamikoRunner(target=target).connect()
    assert "authentication" in str(info.value)
    assert other.get_base64() not in str(info.value)


def test_nothing_listening_is_a_connect_error(tmp_path: Path) -> None:
    load_or_create_key(tmp_path / "k")
    target = SSHTarget(host="127.0.0.1", port=free_port(), private_key_path=tmp_path / "k")
    with pytest.raises(SSHConnectError):
        ParamikoRunner(target=target, connect_timeout_seconds=2).exec("true")


def test_trust_on_first_use_then_pinned(sshd: SSHDServer) -> None:
    with ParamikoRunner(target=sshd.target) as first:
        recorded = first.host_key
        fingerprint = first.host_key_fingerprint
    assert recorded == sshd.host_public_key_line
    assert fingerprint.startswith("SHA256:")
    for pinned in (recorded, fingerprint):
        with ParamikoRunner(target=sshd.target, known_host_key=pinned) as again:
            assert again.exec("true").ok


def test_host_key_mismatch_is_refused(sshd: SSHDServer) -> None:
    impostor = paramiko.Ed25519Key.from_private_key_file(str(sshd.key_path))
    pinned = f"{impostor.get_name()} {impostor.get_base64()}"
    with pytest.raises(SSHConnectError) as info:
        ParamikoRunner(target=sshd.target, known_host_key=pinned).connect()
    assert "host key" in str(info.value)
    with pytest.raises(SSHConnectError):
        ParamikoRunner(target=sshd.target, known_host_key=fingerprint_of(impostor)).connect()


def test_dropped_connection_raises_connect_error_then_reconnects(sshd: SSHDServer) -> None:
    runner = ParamikoRunner(target=sshd.target)
    try:
        assert runner.exec("true").ok
        # kill the per-connection sshd process: the TCP connection drops under the runner
        with pytest.raises(SSHConnectError):
            runner.exec("kill -9 $PPID; sleep 5", timeout_seconds=10)
        assert runner.exec("echo back").stdout == "back\n"  # next call reconnects
    finally:
        runner.close()


def test_sftp_refusal_is_a_remote_error_not_a_dropped_link(sshd: SSHDServer) -> None:
    from gpubot.errors import RemoteError

    with ParamikoRunner(target=sshd.target) as runner:
        with pytest.raises(RemoteError) as info:
            runner.put_bytes(b"x", f"{sshd.root}/no/such/dir/file")
        assert not isinstance(info.value, SSHConnectError)
        assert runner.exec("true").ok
