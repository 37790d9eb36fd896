"""The SSH adapter: :class:`ParamikoRunner` implements :class:`gpubot.remote.runner.Runner`.

Host-key policy (trust on first use, pinned per instance):
    vast.ai instances are fresh containers with freshly generated host keys, so no key can be
    known in advance. The first connection to an instance is made with ``known_host_key=None``:
    the key the server presents is accepted and exposed as :attr:`ParamikoRunner.host_key`
    (``"<type> <base64>"``) and :attr:`ParamikoRunner.host_key_fingerprint` (``"SHA256:…"``).
    The caller stores it with the instance record and passes it as ``known_host_key`` on every
    later connection; a server presenting any other key then raises :class:`SSHConnectError`
    before authentication. ``known_host_key`` may be given either as the key line or as the
    ``SHA256:`` fingerprint.

Errors:
    Everything paramiko or the socket layer raises is translated into
    :class:`gpubot.errors.SSHConnectError` (could not connect, authentication refused, host key
    mismatch, connection dropped). A command that does not finish within its timeout raises
    :class:`gpubot.errors.RemoteCommandFailed` with ``exit_status=124`` (like coreutils
    ``timeout``); the remote process may keep running. Messages contain host, port, user and
    the error class only: never key material or command text (commands may carry presigned
    URLs).

Bounded reads:
    What an instance sends is untrusted (a job can print a multi-GB line). :meth:`exec` keeps
    at most ``max_output_bytes`` per stream (the newest bytes, with the dropped count in the
    result) while still draining the channel; :meth:`get_bytes` refuses files larger than
    ``max_bytes``. Neither ever holds more than its bound plus one read chunk.

Why one module over 500 lines: the host-key pinning, the bounded and deadline-checked exec
loop and SFTP share one paramiko transport and one error translation; split, each part would
re-open or re-wrap the same transport.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import select
import socket
import stat
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpubot.errors import RemoteCommandFailed, RemoteError, SSHConnectError
from gpubot.remote.runner import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_OUTPUT_BYTES,
    ExecResult,
    SSHTarget,
)

__all__ = [
    "ChannelOpenError",
    "ParamikoRunner",
    "fingerprint_of",
    "host_key_matches",
    "load_or_create_key",
]

_TIMEOUT_EXIT_STATUS = 124
_READ_CHUNK = 65536
_LINK_CHECK_SECONDS = 0.5
_T = TypeVar("_T")


class ChannelOpenError(SSHConnectError):
    """The connection could not open a channel: the command was never started (so running it
    again on a fresh connection is safe). Typical of a pooled connection whose peer is gone."""


def host_key_matches(pinned: str, key_line: str, fingerprint: str) -> bool:
    """True when ``pinned`` (a ``"<type> <base64>"`` line or a ``SHA256:`` fingerprint) names
    the key ``key_line`` / ``fingerprint``."""
    pinned = pinned.strip()
    if pinned.startswith("SHA256:"):
        return pinned == fingerprint
    return " ".join(pinned.split()[:2]) == " ".join(key_line.split()[:2])


def fingerprint_of(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:<base64, no padding>`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def load_or_create_key(path: Path) -> tuple[paramiko.PKey, str]:
    """Load the bot's private key from ``path``, generating an ed25519 key when it is absent.

    A new key is written in OpenSSH private-key format with mode 0600 (the parent directory is
    created with mode 0700 if missing). Returns ``(key, public_line)`` where ``public_line`` is
    ``"ssh-ed25519 AAAA… gpubot"``, ready for ``authorized_keys`` or a vast.ai rental.

    Raises:
        SSHConnectError: the existing file is not a usable unencrypted private key.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.OpenSSH,
            encryption_algorithm=serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it meanwhile: load theirs
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
    key = _load_private_key(path)
    return key, f"{key.get_name()} {key.get_base64()} gpubot"


def _load_private_key(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except (paramiko.SSHException, OSError, ValueError) as e:
        raise SSHConnectError(
            f"cannot load SSH private key {path.name}: {type(e).__name__}"
        ) from e


class _PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accepts the server's key when nothing is pinned, else demands an exact match."""

    def __init__(self, pinned: str | None) -> None:
        self.pinned = pinned.strip() if pinned else None
        self.seen: paramiko.PKey | None = None

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        self.seen = key
        if self.pinned is None:
            return
        line = f"{key.get_name()} {key.get_base64()}"
        if not host_key_matches(self.pinned, line, fingerprint_of(key)):
            raise _HostKeyMismatch(fingerprint_of(key))


class _HostKeyMismatch(paramiko.SSHException):
    def __init__(self, fingerprint: str) -> None:
        super().__init__(f"host key mismatch (server presented {fingerprint})")
        self.fingerprint = fingerprint


def _no_delay(client: paramiko.SSHClient) -> None:
    """Send small packets at once (TCP_NODELAY, as OpenSSH's own client does for sessions):
    with Nagle's algorithm, a command's second small packet waits for the ACK of the first,
    which the server delays (up to 40 ms on Linux)."""
    transport = client.get_transport()
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a proxy's socket pair): nothing to tune
            pass


class ParamikoRunner:
    """One SSH connection to one instance (paramiko). Not thread-safe; use one per task.

    Connects lazily on first use (or explicitly with :meth:`connect`); use as a context
    manager to close it. See the module docstring for the host-key policy and error contract.
    """

    def __init__(
        self,
        *,
        target: SSHTarget,
        connect_timeout_seconds: float = 10,
        known_host_key: str | None = None,
    ) -> None:
        self.target = target
        self.connect_timeout_seconds = connect_timeout_seconds
        self._policy = _PinnedHostKeyPolicy(known_host_key)
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # -- connection -----------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.target.user}@{self.target.host}:{self.target.port}"

    def connect(self) -> None:
        """Open the connection now (idempotent while it is alive).

        Raises:
            SSHConnectError: refused, timed out, authentication failed or host key mismatch.
        """
        if self._client is not None and self._transport_alive():
            return
        self._drop()
        pkey = (
            _load_private_key(self.target.private_key_path)
            if self.target.private_key_path is not None
            else None
        )
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(self._policy)
        try:
            client.connect(
                self.target.host,
                port=self.target.port,
                username=self.target.user,
                pkey=pkey,
                timeout=self.connect_timeout_seconds,
                banner_timeout=self.connect_timeout_seconds,
                auth_timeout=self.connect_timeout_seconds,
                channel_timeout=self.connect_timeout_seconds,
                look_for_keys=False,
                allow_agent=False,
            )
        except _HostKeyMismatch as e:
            client.close()
            raise SSHConnectError(
                f"SSH host key of {self._where()} changed: the server presented {e.fingerprint},"
                " not the key pinned for this instance",
                user_message="The instance's SSH host key changed; refusing to connect.",
            ) from e
        except paramiko.AuthenticationException as e:
            client.close()
            raise SSHConnectError(
                f"SSH authentication to {self._where()} failed ({type(e).__name__})"
            ) from e
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            raise SSHConnectError(
                f"SSH connection to {self._where()} failed: {_describe(e)}"
            ) from e
        _no_delay(client)
        self._client = client

    @property
    def alive(self) -> bool:
        """True while the connection is open (no network round trip: a peer that vanished
        without a word still reads as alive until the next command fails)."""
        return self._transport_alive()

    def set_keepalive(self, interval_seconds: int) -> None:
        """Send an SSH keepalive every ``interval_seconds`` while idle (0 disables): an idle
        pooled connection then notices a dead peer and NAT state stays warm."""
        if self._client is not None and (transport := self._client.get_transport()):
            transport.set_keepalive(interval_seconds)

    def _transport_alive(self) -> bool:
        if self._client is None:
            return False
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def _transport(self) -> paramiko.Transport:
        self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            self._drop()
            raise SSHConnectError(f"SSH connection to {self._where()} dropped")
        return transport

    @property
    def host_key(self) -> str:
        """The server's host key as ``"<type> <base64>"`` (connects if needed). Store it."""
        key = self._transport().get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"

    @property
    def host_key_fingerprint(self) -> str:
        """``SHA256:…`` fingerprint of the server's host key (connects if needed)."""
        return fingerprint_of(self._transport().get_remote_server_key())

    def _drop(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # noqa: BLE001 - closing a dead link must not raise
                pass
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        """Close the connection. Safe to call more than once."""
        self._drop()

    def __enter__(self) -> ParamikoRunner:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- commands -------------------------------------------------------------------------

    def exec(
        self,
        command: str,
        *,
        timeout_seconds: float = 60.0,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> ExecResult:
        """Run ``command`` through the remote user's shell and collect its output.

        Returns the exit status (``-1`` when the process died from a signal and the server
        reported none) with stdout/stderr decoded as UTF-8 (invalid bytes replaced). A non-zero
        exit is returned, not raised.

        Output is untrusted: each stream keeps only its newest ``max_output_bytes`` bytes
        (``ExecResult.*_dropped_bytes`` counts the rest). The channel is drained to the end
        either way, so the remote command never blocks on a full window; memory held is at
        most ``max_output_bytes`` plus one read chunk per stream (and paramiko's window).

        Raises:
            ValueError: ``max_output_bytes`` is not a positive int.
            SSHConnectError: the connection could not be made or dropped meanwhile.
            RemoteCommandFailed: not finished within ``timeout_seconds`` (exit_status 124;
                the partial stderr is in ``stderr_tail``), however fast it prints.
        """
        if (
            not isinstance(max_output_bytes, int)
            or isinstance(max_output_bytes, bool)
            or max_output_bytes <= 0
        ):
            raise ValueError("max_output_bytes must be a positive int")
        transport = self._transport()
        deadline = time.monotonic() + timeout_seconds
        out = _TailBuffer(max_output_bytes)
        err = _TailBuffer(max_output_bytes)
        try:
            try:
                chan = transport.open_session(timeout=self.connect_timeout_seconds)
            except (paramiko.SSHException, OSError, EOFError) as e:
                self._drop()
                raise ChannelOpenError(
                    f"SSH connection to {self._where()} failed opening a channel: "
                    f"{_describe(e)}"
                ) from e
            try:
                chan.exec_command(command)
                while True:
                    got = False
                    if chan.recv_ready():
                        out.add(chan.recv(_READ_CHUNK))
                        got = True
                    if chan.recv_stderr_ready():
                        err.add(chan.recv_stderr(_READ_CHUNK))
                        got = True
                    if (
                        not got
                        and chan.exit_status_ready()
                        and not chan.recv_ready()
                        and not chan.recv_stderr_ready()
                        # drain whatever arrived with the exit status, until EOF
                        and (chan.eof_received or chan.closed)
                    ):
                        break
                    # checked on every read, so a command that floods output still times out
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise RemoteCommandFailed(
                            f"command on {self._where()} did not finish within "
                            f"{timeout_seconds:g}s",
                            exit_status=_TIMEOUT_EXIT_STATUS,
                            stderr_tail=err.newest(2000).decode("utf-8", "replace"),
                        )
                    if not transport.is_active():
                        raise SSHConnectError(f"SSH connection to {self._where()} dropped")
                    if not got:
                        _wait_readable(chan, min(remaining, 0.5))
                status = chan.recv_exit_status()
                if status == -1 and self._link_died(transport):
                    raise SSHConnectError(f"SSH connection to {self._where()} dropped")
            finally:
                chan.close()
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._drop()
            raise SSHConnectError(
                f"SSH connection to {self._where()} failed during a command: {_describe(e)}"
            ) from e
        return ExecResult(
            exit_status=status,
            stdout=out.text(),
            stderr=err.text(),
            stdout_dropped_bytes=out.dropped_bytes,
            stderr_dropped_bytes=err.dropped_bytes,
        )

    @staticmethod
    def _link_died(transport: paramiko.Transport) -> bool:
        """True when the transport is going down (it closes channels just before it reads
        as inactive, so give it a moment); False when only the session lost its status."""
        deadline = time.monotonic() + _LINK_CHECK_SECONDS
        while transport.is_active():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)  # polling interval, bounded by the deadline
        return True

    # -- files ----------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        transport = self._transport()
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(transport)
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise SSHConnectError(
                    f"SFTP to {self._where()} failed: {_describe(e)}"
                ) from e
            if self._sftp is None:
                raise SSHConnectError(f"SFTP to {self._where()} could not be opened")
        return self._sftp

    def put_file(self, local_path: Path, remote_path: str) -> None:
        """Upload one file to ``remote_path`` (its directory must exist).

        Raises:
            SSHConnectError: the link failed. RemoteError: the remote side refused the write.
        """
        self._sftp_op(lambda s: s.put(str(local_path), remote_path), "upload", remote_path)

    def put_bytes(self, data: bytes, remote_path: str, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote_path`` (replacing it) and set ``mode``."""

        def op(s: paramiko.SFTPClient) -> None:
            with s.open(remote_path, "wb") as fh:
                fh.set_pipelined(True)
                fh.write(data)
            s.chmod(remote_path, mode)

        self._sftp_op(op, "write", remote_path)

    def get_bytes(
        self, remote_path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES
    ) -> bytes | None:
        """Read a remote regular file whole, or None when it does not exist (or is no file).

        A file larger than ``max_bytes`` is refused from its size before any byte is read;
        one that grows past the bound while being read is refused too (at most
        ``max_bytes + 1`` bytes are ever held).

        Raises:
            ValueError: ``max_bytes`` is negative.
            RemoteError: the file exceeds ``max_bytes`` (the link stays usable), or the
                remote side refused the read.
            SSHConnectError: the link failed.
        """
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError("max_bytes must be a non-negative int")

        def too_big() -> RemoteError:
            return RemoteError(
                f"{remote_path} on {self._where()} is larger than {max_bytes} bytes; "
                "refusing to read it"
            )

        def op(s: paramiko.SFTPClient) -> bytes | None:
            try:
                attrs = s.stat(remote_path)
                if not stat.S_ISREG(attrs.st_mode or 0):
                    return None
                if (attrs.st_size or 0) > max_bytes:
                    raise too_big()
                with s.open(remote_path, "rb") as fh:
                    fh.prefetch(attrs.st_size or 0)
                    data = fh.read(max_bytes + 1)
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return None
                raise
            if len(data) > max_bytes:
                raise too_big()
            return data

        return self._sftp_op(op, "read", remote_path)

    def _sftp_op(self, op: Callable[[paramiko.SFTPClient], _T], what: str, remote_path: str) -> _T:
        sftp = self._sftp_client()
        try:
            return op(sftp)
        except (paramiko.SSHException, EOFError, OSError) as e:
            link_error = isinstance(e, paramiko.SSHException | EOFError | socket.timeout)
            if not link_error and self._transport_alive():
                raise RemoteError(
                    f"cannot {what} {remote_path} on {self._where()}: {_describe(e)}"
                ) from e
            self._drop()
            raise SSHConnectError(
                f"SSH connection to {self._where()} failed during {what}: {_describe(e)}"
            ) from e


class _TailBuffer:
    """The newest ``limit_bytes`` bytes of a stream, counting what was dropped before them.

    Holds whole chunks in a deque and drops a chunk once the newer ones alone cover the limit,
    so appending costs O(1) and memory stays under ``limit_bytes`` plus one chunk.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._chunks: deque[bytes] = deque()
        self._held_bytes = 0
        self._dropped_chunk_bytes = 0

    def add(self, data: bytes) -> None:
        """Append ``data``, then drop the oldest chunks no longer needed for the limit."""
        if not data:
            return
        self._chunks.append(data)
        self._held_bytes += len(data)
        while self._held_bytes - len(self._chunks[0]) >= self.limit_bytes:
            old = self._chunks.popleft()
            self._held_bytes -= len(old)
            self._dropped_chunk_bytes += len(old)

    @property
    def dropped_bytes(self) -> int:
        """How many of the stream's oldest bytes are not kept."""
        return self._dropped_chunk_bytes + max(0, self._held_bytes - self.limit_bytes)

    def newest(self, n_bytes: int) -> bytes:
        return b"".join(self._chunks)[-n_bytes:]

    def text(self) -> str:
        """The kept bytes (at most ``limit_bytes``) decoded as UTF-8, invalid bytes replaced."""
        data = b"".join(self._chunks)
        return data[max(0, len(data) - self.limit_bytes) :].decode("utf-8", "replace")


def _wait_readable(chan: paramiko.Channel, timeout_seconds: float) -> None:
    """Wait until ``chan`` has data (or the timeout). ``poll``, not ``select``: a worker
    holding many pooled connections has file descriptors above select's limit of 1024."""
    poller = select.poll()
    poller.register(chan.fileno(), select.POLLIN)
    poller.poll(max(0, int(timeout_seconds * 1000)))


def _describe(e: BaseException) -> str:
    """Error class plus a short, secret-free description (errno text, not arguments)."""
    if isinstance(e, OSError) and e.strerror:
        return f"{type(e).__name__}: {e.strerror}"
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
