"""A real SSH server (paramiko) for one simulated instance: public-key auth, exec, shell, SFTP.

Commands run as real processes (``/bin/bash -c CMD``) with cwd = the instance root and an
environment naming the instance (see :mod:`gpubot.sim.procs`). SFTP paths are confined to the
root: relative paths resolve against it, absolute paths must lie inside it (symlinks included).
Bytes sent to the instance count as download, bytes sent back as upload (``on_bytes``).

Ordering guarantee (what a real sshd gives and clients rely on): a command's process is started
only after the reply accepting its ``exec``/``shell`` request is on the wire, and on one channel
the server sends, in this order, all stdout/stderr, the exit status, EOF, then CLOSE. Without
the first half a fast command could close its channel before the client saw the request
accepted, and the client failed with ``SSHException: Channel closed``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from paramiko.channel import Channel
from paramiko.common import MSG_CHANNEL_REQUEST
from paramiko.sftp_server import SFTPServer

log = logging.getLogger(__name__)

ByteCounter = Callable[[int, int], None]
"""``on_bytes(down, up)``: bytes to the instance, bytes from it."""


class _ServerIface(paramiko.ServerInterface):
    """Auth and channel-request checks for one connection.

    ``check_channel_exec_request``/``check_channel_shell_request`` only record the request
    (they run before paramiko has sent the reply); :meth:`start_pending` starts the process once
    the reply is sent (see :class:`_SessionTransport`). Environment variables are per channel.
    """

    def __init__(self, owner: InstanceSSHServer) -> None:
        self.owner = owner
        self._env: dict[int, dict[str, str]] = {}
        self._pending: dict[int, tuple[str | None, dict[str, str]]] = {}
        self._started: set[int] = set()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        offered = f"{key.get_name()} {key.get_base64()}"
        for allowed in self.owner.authorized_keys():
            parts = allowed.split()
            if len(parts) >= 2 and f"{parts[0]} {parts[1]}" == offered:
                return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED_REQUEST

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes | str,
                                  value: bytes | str) -> bool:
        key = name.decode() if isinstance(name, bytes) else name
        val = value.decode() if isinstance(value, bytes) else value
        self._env.setdefault(channel.get_id(), {})[key] = val
        return True

    def check_channel_pty_request(self, *args: Any) -> bool:
        return True

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return self._defer(channel, command.decode(errors="replace"))

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return self._defer(channel, None)

    def _defer(self, channel: paramiko.Channel, command: str | None) -> bool:
        """Record ``command`` (None: a shell) for :meth:`start_pending`.

        A second exec/shell on one channel is refused, as OpenSSH does.
        """
        chanid = channel.get_id()
        if chanid in self._pending or chanid in self._started:
            return False
        self._pending[chanid] = (command, self._env.pop(chanid, {}))
        return True

    def start_pending(self, channel: paramiko.Channel) -> None:
        """Start the process recorded for ``channel``, if any; called after the reply is sent.

        Runs on the transport thread. Nothing starts if the connection died meanwhile.
        """
        pending = self._pending.pop(channel.get_id(), None)
        if pending is None:
            return
        self._started.add(channel.get_id())
        transport = channel.get_transport()
        if channel.closed or transport is None or not transport.is_active():
            return
        command, env = pending
        self.owner.run(channel, command, env)


def _handle_request_then_start(channel: Channel, m: paramiko.Message) -> None:
    """paramiko's channel-request handler, then the deferred start of an accepted exec/shell.

    ``Channel._handle_request`` calls the ``check_channel_*_request`` method and then writes
    the SUCCESS/FAILURE reply to the socket before returning, so a process started here cannot
    send output, exit status or CLOSE ahead of that reply.
    """
    Channel._handle_request(channel, m)
    server = channel.get_transport().server_object
    if isinstance(server, _ServerIface):
        server.start_pending(channel)


IDLE_WAKEUP_SECONDS = 2.0
"""How often a connected transport's thread wakes while nothing arrives. paramiko's own 0.1 s
is 10 wakeups a second per connection: 200 idle connections (the bot pools one per instance)
cost the simulator 6.2 % of a core doing nothing, 0.6 % with this (measured on the 2-core
development machine; 1000 connections, a third of a core)."""


class _SessionTransport(paramiko.Transport):
    """A server transport whose channel requests go through :func:`_handle_request_then_start`.

    paramiko has no public hook that runs after a request's reply is sent; its transport looks
    channel messages up in the class attribute ``_channel_handler_table`` (paramiko 1.x-5.x).
    """

    _channel_handler_table = {
        **paramiko.Transport._channel_handler_table,
        MSG_CHANNEL_REQUEST: _handle_request_then_start,
    }


if paramiko.Transport._channel_handler_table.get(MSG_CHANNEL_REQUEST) is not (
        Channel._handle_request):  # pragma: no cover - a paramiko upgrade changed the internals
    raise ImportError("paramiko's channel request dispatch changed; fix gpubot.sim.sshd")


class _ConfinedSFTP(paramiko.SFTPServerInterface):
    """SFTP confined to the instance root."""

    def __init__(self, server: _ServerIface, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.owner = server.owner
        self.root = os.path.realpath(self.owner.root)

    def _path(self, path: str) -> str:
        if not path.startswith("/"):
            path = os.path.join(self.root, path)
        real = os.path.realpath(path)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise PermissionError(path)
        return real

    def _wrap(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except PermissionError:
            return paramiko.SFTP_PERMISSION_DENIED
        except OSError as e:
            return SFTPServer.convert_errno(e.errno)

    def canonicalize(self, path: str) -> str:
        try:
            return self._path(path)
        except PermissionError:
            return self.root

    def list_folder(self, path: str) -> Any:
        def go() -> list[paramiko.SFTPAttributes]:
            real = self._path(path)
            out = []
            for name in os.listdir(real):
                attr = paramiko.SFTPAttributes.from_stat(os.lstat(os.path.join(real, name)))
                attr.filename = name
                out.append(attr)
            return out
        return self._wrap(go)

    def stat(self, path: str) -> Any:
        return self._wrap(lambda: paramiko.SFTPAttributes.from_stat(os.stat(self._path(path))))

    def lstat(self, path: str) -> Any:
        return self._wrap(lambda: paramiko.SFTPAttributes.from_stat(os.lstat(self._path(path))))

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        def go() -> paramiko.SFTPHandle:
            real = self._path(path)
            mode = getattr(attr, "st_mode", None) or 0o666
            fd = os.open(real, flags | getattr(os, "O_BINARY", 0), mode & 0o7777)
            if flags & os.O_WRONLY:
                fmode = "ab" if flags & os.O_APPEND else "wb"
            elif flags & os.O_RDWR:
                fmode = "a+b" if flags & os.O_APPEND else "r+b"
            else:
                fmode = "rb"
            fobj = os.fdopen(fd, fmode)
            handle = _CountingHandle(flags, self.owner.on_bytes)
            handle.filename = real
            handle.readfile = fobj
            handle.writefile = fobj
            return handle
        return self._wrap(go)

    def remove(self, path: str) -> int:
        return self._wrap(lambda: (os.remove(self._path(path)), paramiko.SFTP_OK)[1])

    def rename(self, oldpath: str, newpath: str) -> int:
        return self._wrap(
            lambda: (os.rename(self._path(oldpath), self._path(newpath)), paramiko.SFTP_OK)[1])

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self._wrap(
            lambda: (os.replace(self._path(oldpath), self._path(newpath)), paramiko.SFTP_OK)[1])

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return self._wrap(lambda: (os.mkdir(self._path(path)), paramiko.SFTP_OK)[1])

    def rmdir(self, path: str) -> int:
        return self._wrap(lambda: (os.rmdir(self._path(path)), paramiko.SFTP_OK)[1])

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        def go() -> int:
            SFTPServer.set_file_attr(self._path(path), attr)
            return paramiko.SFTP_OK
        return self._wrap(go)

    def symlink(self, target_path: str, path: str) -> int:
        def go() -> int:
            target = target_path
            if target.startswith("/"):
                target = self._path(target)
            os.symlink(target, self._path(path))
            return paramiko.SFTP_OK
        return self._wrap(go)

    def readlink(self, path: str) -> Any:
        def go() -> str:
            real_link = os.path.join(self._path(os.path.dirname(path) or "."),
                                     os.path.basename(path))
            return os.readlink(real_link)
        return self._wrap(go)


class _CountingHandle(paramiko.SFTPHandle):
    def __init__(self, flags: int, on_bytes: ByteCounter) -> None:
        super().__init__(flags)
        self._on_bytes = on_bytes

    def read(self, offset: int, length: int) -> Any:
        data = super().read(offset, length)
        if isinstance(data, bytes):
            self._on_bytes(0, len(data))
        return data

    def write(self, offset: int, data: bytes) -> int:
        self._on_bytes(len(data), 0)
        return super().write(offset, data)


class InstanceSSHServer:
    """The SSH endpoint of one running instance, on 127.0.0.1 and an OS-chosen port.

    ``authorized_keys`` is called at each login, so keys attached later work at once.
    ``stop()`` closes the listener and every connection (processes keep running: killing them
    is the caller's decision). ``drop_connections()`` closes connections only.
    """

    def __init__(self, *, instance_id: int, root: Path, host_key: paramiko.PKey,
                 authorized_keys: Callable[[], list[str]], env: dict[str, str],
                 on_bytes: ByteCounter, host: str = "127.0.0.1") -> None:
        self.instance_id = instance_id
        self.root = root
        self.host_key = host_key
        self.authorized_keys = authorized_keys
        self.env = env
        self.on_bytes = on_bytes
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._transports: set[paramiko.Transport] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"sim-ssh-{instance_id}")
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            try:
                # One small packet per SSH message: without NODELAY each waits on a delayed ACK.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                transport = _SessionTransport(conn)
                transport.add_server_key(self.host_key)
                transport.set_subsystem_handler("sftp", SFTPServer, _ConfinedSFTP)
                with self._lock:
                    if self._closed:
                        transport.close()
                        return
                    self._transports.add(transport)
                transport.start_server(server=_ServerIface(self))
                # Connected: let the transport thread sleep while nothing arrives (arriving
                # data and close() still wake it at once).
                conn.settimeout(IDLE_WAKEUP_SECONDS)
            except Exception:  # a broken client must not kill the listener
                log.debug("ssh handshake failed", exc_info=True)

    def process_env(self, extra: dict[str, str]) -> dict[str, str]:
        root = str(self.root)
        env = {
            "PATH": f"{root}/.sim/bin:" + os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "SHELL": "/bin/bash",
            "USER": "root",
            "LOGNAME": "root",
        }
        env.update(self.env)
        env.update(extra)
        env.update({"HOME": root, "GPUBOT_REMOTE_ROOT": root,
                    "GPUBOT_SIM_INSTANCE": str(self.instance_id)})
        return env

    def run(self, channel: paramiko.Channel, command: str | None,
            extra_env: dict[str, str]) -> None:
        """Start ``command`` (None: an interactive bash) wired to ``channel``; returns at once.

        Call only once the exec/shell request has been answered (the process may finish and
        close ``channel`` at once). The channel then gets all of stdout/stderr, the exit status
        (128+N for a signal N), EOF and CLOSE, in that order.
        """
        argv = ["/bin/bash", "-c", command] if command is not None else ["/bin/bash"]
        try:
            proc = subprocess.Popen(argv, cwd=str(self.root), env=self.process_env(extra_env),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            channel.sendall_stderr(f"cannot start: {e}\n".encode())
            channel.send_exit_status(127)
            channel.close()
            return
        threading.Thread(target=self._pump, args=(channel, proc), daemon=True).start()

    def _pump(self, channel: paramiko.Channel, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin and proc.stdout and proc.stderr

        def feed_stdin() -> None:
            try:
                while True:
                    data = channel.recv(32768)
                    if not data:
                        break
                    self.on_bytes(len(data), 0)
                    proc.stdin.write(data)  # type: ignore[union-attr]
                    proc.stdin.flush()  # type: ignore[union-attr]
            except (OSError, EOFError, ValueError):
                pass
            finally:
                try:
                    proc.stdin.close()  # type: ignore[union-attr]
                except OSError:
                    pass

        def copy(stream: Any, send: Callable[[bytes], None]) -> None:
            try:
                while True:
                    data = stream.read1(32768)
                    if not data:
                        break
                    self.on_bytes(0, len(data))
                    send(data)
            except (OSError, EOFError):
                pass

        threads = [
            threading.Thread(target=feed_stdin, daemon=True),
            threading.Thread(target=copy, args=(proc.stdout, channel.sendall), daemon=True),
            threading.Thread(target=copy, args=(proc.stderr, channel.sendall_stderr),
                             daemon=True),
        ]
        for t in threads:
            t.start()
        threads[1].join()
        threads[2].join()
        status = proc.wait()
        try:
            channel.send_exit_status(status if status >= 0 else 128 - status)
            channel.shutdown_write()
            channel.close()
        except (OSError, EOFError):
            pass

    def drop_connections(self) -> int:
        """Close every open SSH connection; returns how many were closed."""
        with self._lock:
            transports = list(self._transports)
            self._transports.clear()
        for t in transports:
            t.close()
        return len(transports)

    def stop(self) -> None:
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass
        self.drop_connections()
