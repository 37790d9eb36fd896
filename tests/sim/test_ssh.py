"""Real SSH per instance: exec, stdin, SFTP confinement, isolation, teardown."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest
from vastai import VastAI

from gpubot.sim.server import SimServer
from tests.fixtures.sim import (
    SshKey,
    make_ssh_key,
    run_until_running,
    ssh_connect,
    ssh_run,
    wait_for,
)


def _running_instance(sim: SimServer, vast: VastAI, key: SshKey, label: str) -> int:
    instance_id = int(sim.control.create_instance(label))
    vast.attach_ssh(instance_id, key.public)
    run_until_running(sim, vast, instance_id)
    return instance_id


def test_exec_streams_status_and_stdin(sim: SimServer, vast: VastAI, ssh_key: SshKey,
                                       tmp_path: Path) -> None:
    instance_id = _running_instance(sim, vast, ssh_key, "ssh-exec")
    client = ssh_connect(vast, instance_id, ssh_key)
    try:
        assert ssh_run(client, "echo out; echo err >&2; exit 3") == (3, "out\n", "err\n")
        assert ssh_run(client, "wc -c", stdin_data=b"x" * 100_000)[1].strip() == "100000"
        status, out, _ = ssh_run(client, 'pwd; echo "$HOME"; command -v nvidia-smi')
        root, home, smi = out.split()
        assert root == home and smi == f"{root}/.sim/bin/nvidia-smi"
    finally:
        client.close()
    other = make_ssh_key(tmp_path)
    with pytest.raises(paramiko.AuthenticationException):
        ssh_connect(vast, instance_id, other)
    vast.destroy_instance(instance_id)


def test_sftp_is_confined_and_instances_are_isolated(sim: SimServer, vast: VastAI,
                                                     ssh_key: SshKey) -> None:
    a = _running_instance(sim, vast, ssh_key, "iso-a")
    b = _running_instance(sim, vast, ssh_key, "iso-b")
    ca, cb = ssh_connect(vast, a, ssh_key), ssh_connect(vast, b, ssh_key)
    try:
        root_a = ssh_run(ca, 'printf %s "$GPUBOT_REMOTE_ROOT"')[1]
        root_b = ssh_run(cb, 'printf %s "$GPUBOT_REMOTE_ROOT"')[1]
        assert root_a != root_b
        sftp = ca.open_sftp()
        sftp.mkdir("data")
        with sftp.open("data/secret.txt", "w") as fh:
            fh.write("only a")
        with sftp.open(f"{root_a}/data/secret.txt") as fh:
            assert fh.read() == b"only a"
        for outside in (f"{root_b}/x.txt", "/etc/passwd", "../../../x.txt"):
            with pytest.raises(PermissionError):
                sftp.open(outside, "w" if outside.endswith("x.txt") else "r")
        assert sftp.normalize(".") == root_a
        sftp.close()
        sftp_b = cb.open_sftp()
        with pytest.raises(OSError):
            sftp_b.stat(f"{root_a}/data/secret.txt")
        assert sftp_b.listdir(".") == [".sim"]
        sftp_b.close()
        # a detached process survives its ssh session but not destroy
        ssh_run(ca, "nohup setsid sleep 300 >/dev/null 2>&1 & echo started")
        pids = wait_for(lambda: sim.control.instance_processes(a), what="detached sleep")
        assert sim.control.instance_processes(b) == []
        ca.close()
        vast.destroy_instance(a)
        assert not Path(root_a).exists()
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
        assert Path(root_b).is_dir()
    finally:
        ca.close()
        cb.close()
        vast.destroy_instance(b)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def test_drop_ssh_closes_connections(sim: SimServer, vast: VastAI, ssh_key: SshKey) -> None:
    instance_id = _running_instance(sim, vast, ssh_key, "drop")
    client = ssh_connect(vast, instance_id, ssh_key)
    transport = client.get_transport()
    assert transport is not None and transport.is_active()
    assert sim.control.drop_ssh(instance_id) == 1
    wait_for(lambda: not transport.is_active(), what="connection dropped")
    client.close()
    again = ssh_connect(vast, instance_id, ssh_key)  # the server itself still listens
    assert ssh_run(again, "true")[0] == 0
    again.close()
    vast.destroy_instance(instance_id)
