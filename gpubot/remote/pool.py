"""A per-process pool of SSH connections, reused across ticks (paramiko, via :mod:`ssh`).

Why: the running step reads every running job's status every tick. Opening a connection is a
TCP + SSH handshake (key exchange, host-key check, public-key auth): several round trips and
tens of ms of CPU on both sides, repeated for every job on every tick. A connection kept open
between ticks costs one idle socket and one paramiko thread instead.

Contract:
- :meth:`SSHPool.connect` is a :class:`gpubot.ports.RunnerFactory`. It returns a *lease*
  (:class:`PooledRunner`): a Runner used by one thread at a time, whose ``close()`` gives the
  connection back instead of closing it. Two threads never share a connection at once.
- Keyed by ``(host, port, user, client key path)``. A pooled connection is handed out only
  when the caller pins a host key (``known_host_key``) and that pin names the key the pooled
  connection's server presented; an idle connection whose key does not match is closed (the
  address now belongs to another server). ``known_host_key=None`` (trust on first use, the
  connecting step of a new rental) always opens a fresh connection, so a new instance that
  reuses an old address never inherits the old instance's connection or key.
- Liveness: a connection whose transport is down is never handed out; one idle longer than
  ``idle_expiry_seconds`` is closed. A reused connection that fails to open a channel
  (the peer vanished while it sat idle) is replaced by a fresh connection once, transparently
  (the command had not started, so running it on the new connection is safe).
- Bounded: at most ``max_idle`` idle connections in all (the least recently used is closed
  first) and ``max_idle_per_address`` per address.
- :meth:`SSHPool.discard` closes every connection to an address (idle at once, leased ones
  when given back): call it when the instance is destroyed.
- Thread-safe (one lock, never held during network I/O). Fork-safe: a process that inherited
  the pool from its parent (Celery prefork) starts with an empty pool and never touches the
  parent's sockets.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpubot.errors import SSHConnectError
from gpubot.remote.runner import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_OUTPUT_BYTES,
    ExecResult,
    SSHTarget,
)
from gpubot.remote.ssh import ChannelOpenError, ParamikoRunner, host_key_matches

__all__ = ["PoolStats", "PooledRunner", "SSHPool", "shared_pool"]

DEFAULT_IDLE_EXPIRY_SECONDS = 120.0
"""Idle connections older than this are closed (a job polled every 10 s tick stays warm)."""
DEFAULT_KEEPALIVE_SECONDS = 30
IDLE_WAKEUP_SECONDS = 2.0
"""How often a pooled connection's paramiko thread wakes while nothing arrives (paramiko's
own 0.1 s means 10 wakeups a second per connection: ~0.25 % of a core each, a tenth of a core
for 500 idle pooled connections; bench/running_jobs.py). Arriving data wakes it at once, and
neither the keepalive (every :data:`DEFAULT_KEEPALIVE_SECONDS`) nor ``close()`` waits on it."""
DEFAULT_MAX_IDLE = 2048
DEFAULT_MAX_IDLE_PER_ADDRESS = 2

_Key = tuple[str, int, str, str]
Opener = Callable[[SSHTarget, str | None], ParamikoRunner]


def _open(target: SSHTarget, known_host_key: str | None) -> ParamikoRunner:
    runner = ParamikoRunner(target=target, known_host_key=known_host_key)
    runner.connect()
    return runner


def _quiet_when_idle(runner: ParamikoRunner) -> None:
    """Let ``runner``'s transport thread sleep :data:`IDLE_WAKEUP_SECONDS` between checks
    while idle (its socket's timeout). A runner without a live transport is left alone."""
    try:
        transport = runner._transport()  # noqa: SLF001 - the pool owns its runners' sockets
    except Exception:  # noqa: BLE001 - no transport: nothing to tune
        return
    sock = getattr(transport, "sock", None)
    if sock is not None and hasattr(sock, "settimeout"):
        sock.settimeout(IDLE_WAKEUP_SECONDS)


@dataclass
class PoolStats:
    """Counters since the pool was made (or the process forked)."""

    opened: int = 0
    reused: int = 0
    closed: int = 0
    replaced_stale: int = 0


@dataclass
class _Conn:
    runner: ParamikoRunner
    key: _Key
    host_key: str
    fingerprint: str
    serial: int
    generation: int
    last_used: float = field(default=0.0)


class PooledRunner:
    """A leased connection (a :class:`gpubot.remote.runner.Runner`); ``close()`` returns it.

    Not thread-safe, like the runner it wraps; after ``close()`` it must not be used.
    """

    def __init__(self, pool: SSHPool, conn: _Conn, *, reused: bool, target: SSHTarget,
                 known_host_key: str | None) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self.reused = reused
        """True when this lease got a connection opened by an earlier lease."""
        self._target = target
        self._known_host_key = known_host_key

    def _live(self) -> _Conn:
        if self._conn is None:
            raise SSHConnectError("SSH lease used after close()")
        return self._conn

    @property
    def host_key(self) -> str:
        """The server's host key as ``"<type> <base64>"`` (no network call)."""
        return self._live().host_key

    @property
    def host_key_fingerprint(self) -> str:
        return self._live().fingerprint

    def exec(
        self,
        command: str,
        *,
        timeout_seconds: float = 60.0,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> ExecResult:
        """:meth:`ParamikoRunner.exec` on the leased connection (same bounds and errors).

        On a reused connection that cannot open a channel, one fresh connection is opened
        (same target, same pinned key) and the command runs there instead.
        """
        conn = self._live()
        try:
            return conn.runner.exec(
                command, timeout_seconds=timeout_seconds, max_output_bytes=max_output_bytes
            )
        except ChannelOpenError:
            if not self.reused:
                raise
        self._conn = self._pool._replace(conn, self._target, self._known_host_key)
        self.reused = False
        return self._conn.runner.exec(
            command, timeout_seconds=timeout_seconds, max_output_bytes=max_output_bytes
        )

    def put_file(self, local_path: Path, remote_path: str) -> None:
        self._live().runner.put_file(local_path, remote_path)

    def put_bytes(self, data: bytes, remote_path: str, *, mode: int = 0o644) -> None:
        self._live().runner.put_bytes(data, remote_path, mode=mode)

    def get_bytes(
        self, remote_path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES
    ) -> bytes | None:
        return self._live().runner.get_bytes(remote_path, max_bytes=max_bytes)

    def close(self) -> None:
        """Give the connection back to the pool (closed instead when it is dead, discarded,
        or over a bound). Safe to call more than once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn)


class SSHPool:
    """See the module docstring. ``opener(target, known_host_key)`` opens a connection
    (default: :class:`ParamikoRunner` + ``connect()``); ``clock`` is monotonic seconds."""

    def __init__(
        self,
        *,
        idle_expiry_seconds: float = DEFAULT_IDLE_EXPIRY_SECONDS,
        max_idle: int = DEFAULT_MAX_IDLE,
        max_idle_per_address: int = DEFAULT_MAX_IDLE_PER_ADDRESS,
        keepalive_seconds: int = DEFAULT_KEEPALIVE_SECONDS,
        opener: Opener = _open,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_idle < 0 or max_idle_per_address < 0 or idle_expiry_seconds < 0:
            raise ValueError("pool bounds must be non-negative")
        self.idle_expiry_seconds = idle_expiry_seconds
        self.max_idle = max_idle
        self.max_idle_per_address = max_idle_per_address
        self.keepalive_seconds = keepalive_seconds
        self._opener = opener
        self._clock = clock
        self._lock = threading.Lock()
        self._serials = itertools.count(1)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._idle: OrderedDict[int, _Conn] = OrderedDict()
        """serial -> idle connection, least recently used first."""
        self._by_key: dict[_Key, dict[int, _Conn]] = {}
        self._generation: dict[tuple[str, int], int] = {}
        self.stats = PoolStats()

    def _check_fork(self) -> None:
        """Under the lock: a forked child forgets the parent's connections (without closing
        them: the sockets and transport threads belong to the parent)."""
        if os.getpid() != self._pid:
            self._reset()

    @staticmethod
    def _key(target: SSHTarget) -> _Key:
        return (target.host, int(target.port), target.user, str(target.private_key_path or ""))

    # -- leasing -------------------------------------------------------------------------------

    def connect(self, target: SSHTarget, *, known_host_key: str | None) -> PooledRunner:
        """A lease on a connection to ``target`` (pooled when ``known_host_key`` matches one).

        Raises:
            SSHConnectError: a fresh connection could not be made (refused, timed out,
                authentication failed, host key mismatch).
        """
        key = self._key(target)
        to_close: list[_Conn] = []
        found: _Conn | None = None
        now = self._clock()
        with self._lock:
            self._check_fork()
            self._expire(now, to_close)
            if known_host_key is not None:
                for serial, conn in list(self._by_key.get(key, {}).items()):
                    self._take(serial)
                    if not conn.runner.alive or not host_key_matches(
                        known_host_key, conn.host_key, conn.fingerprint
                    ):
                        to_close.append(conn)
                        continue
                    found = conn
                    self.stats.reused += 1
                    break
        self._close_all(to_close)
        if found is not None:
            return PooledRunner(self, found, reused=True, target=target,
                                known_host_key=known_host_key)
        return PooledRunner(self, self._new(target, known_host_key), reused=False,
                            target=target, known_host_key=known_host_key)

    def _new(self, target: SSHTarget, known_host_key: str | None) -> _Conn:
        runner = self._opener(target, known_host_key)
        try:
            host_key = runner.host_key
            fingerprint = runner.host_key_fingerprint
            if self.keepalive_seconds:
                runner.set_keepalive(self.keepalive_seconds)
            _quiet_when_idle(runner)
        except BaseException:
            runner.close()
            raise
        key = self._key(target)
        with self._lock:
            self._check_fork()
            self.stats.opened += 1
            return _Conn(runner=runner, key=key, host_key=host_key, fingerprint=fingerprint,
                         serial=next(self._serials),
                         generation=self._generation.get((key[0], key[1]), 0))

    def _replace(self, stale: _Conn, target: SSHTarget, known_host_key: str | None) -> _Conn:
        stale.runner.close()
        with self._lock:
            self.stats.closed += 1
            self.stats.replaced_stale += 1
        return self._new(target, known_host_key)

    def _release(self, conn: _Conn) -> None:
        to_close: list[_Conn] = []
        now = self._clock()
        with self._lock:
            self._check_fork()
            address = (conn.key[0], conn.key[1])
            same = self._by_key.get(conn.key, {})
            if (
                not conn.runner.alive
                or conn.generation != self._generation.get(address, 0)
                or len(same) >= self.max_idle_per_address
                or self.max_idle == 0
            ):
                to_close.append(conn)
            else:
                conn.last_used = now
                self._idle[conn.serial] = conn
                self._by_key.setdefault(conn.key, {})[conn.serial] = conn
                while len(self._idle) > self.max_idle:
                    to_close.append(self._take(next(iter(self._idle))))
            self._expire(now, to_close)
        self._close_all(to_close)

    # -- housekeeping ---------------------------------------------------------------------------

    def _take(self, serial: int) -> _Conn:
        """Under the lock: remove an idle connection from both indexes."""
        conn = self._idle.pop(serial)
        same = self._by_key.get(conn.key)
        if same is not None:
            same.pop(serial, None)
            if not same:
                del self._by_key[conn.key]
        return conn

    def _expire(self, now: float, to_close: list[_Conn]) -> None:
        """Under the lock: take out idle connections older than the expiry (LRU order)."""
        while self._idle:
            serial, oldest = next(iter(self._idle.items()))
            if now - oldest.last_used <= self.idle_expiry_seconds:
                break
            to_close.append(self._take(serial))

    def _close_all(self, conns: list[_Conn]) -> None:
        for conn in conns:
            conn.runner.close()
        if conns:
            with self._lock:
                self.stats.closed += len(conns)

    def discard(self, host: str, port: int) -> int:
        """Close every connection to ``host:port``: idle ones now, leased ones when given
        back. Call when the instance there is destroyed. Returns how many idle ones closed."""
        to_close: list[_Conn] = []
        with self._lock:
            self._check_fork()
            address = (host, int(port))
            self._generation[address] = self._generation.get(address, 0) + 1
            for key in [k for k in self._by_key if (k[0], k[1]) == address]:
                for serial in list(self._by_key.get(key, {})):
                    to_close.append(self._take(serial))
        self._close_all(to_close)
        return len(to_close)

    def idle_count(self, host: str | None = None, port: int | None = None) -> int:
        """Idle connections held (to ``host:port`` when given)."""
        with self._lock:
            self._check_fork()
            if host is None:
                return len(self._idle)
            return sum(1 for c in self._idle.values() if (c.key[0], c.key[1]) == (host, port))

    def close(self) -> None:
        """Close every idle connection (the pool stays usable)."""
        with self._lock:
            self._check_fork()
            to_close = [self._take(s) for s in list(self._idle)]
        self._close_all(to_close)


_SHARED: SSHPool | None = None
_SHARED_LOCK = threading.Lock()


def shared_pool() -> SSHPool:
    """The process's pool (made on first use; bounded by the open-file limit)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            max_idle = DEFAULT_MAX_IDLE
            try:
                import resource

                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                if soft != resource.RLIM_INFINITY:
                    max_idle = max(0, min(max_idle, soft // 2 - 64))
            except (ImportError, ValueError, OSError):
                pass
            _SHARED = SSHPool(max_idle=max_idle)
        return _SHARED
