"""Pooled SSH connections sleep while idle: their paramiko thread wakes every
``IDLE_WAKEUP_SECONDS``, not 10 times a second, and still answers and closes at once."""

from __future__ import annotations

import time

from gpubot.remote.pool import IDLE_WAKEUP_SECONDS, SSHPool
from tests.fixtures.sshd import SSHDServer


def test_pooled_connection_wakes_rarely_while_idle_and_still_answers_at_once(
    sshd: SSHDServer,
) -> None:
    pool = SSHPool()
    lease = pool.connect(sshd.target, known_host_key=sshd.host_public_key_line)
    transport = lease._live().runner._transport()
    assert transport.sock.gettimeout() == IDLE_WAKEUP_SECONDS
    lease.close()
    time.sleep(0.3)  # idle: the transport thread is waiting on its socket
    again = pool.connect(sshd.target, known_host_key=sshd.host_public_key_line)
    assert again.reused
    started = time.monotonic()
    assert again.exec("echo hi").stdout == "hi\n"
    assert time.monotonic() - started < IDLE_WAKEUP_SECONDS  # data wakes it, not the timeout
    again.close()
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < IDLE_WAKEUP_SECONDS
    assert not transport.is_active()
