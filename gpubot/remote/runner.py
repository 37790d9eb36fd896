"""The remote-execution port: run commands and move files on a rented instance. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
"""Default bound of :meth:`Runner.exec` output kept in memory, per stream (stdout, stderr)."""

DEFAULT_MAX_FILE_BYTES = 1024 * 1024
"""Default bound of :meth:`Runner.get_bytes`: bigger files are refused."""


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What a remote command did.

    Job output is untrusted, so each stream is bounded: when a stream was longer than the
    bound, only its newest bytes are kept (the text may then start mid-line, even
    mid-character) and ``*_dropped_bytes`` says how many older bytes were discarded.
    """

    exit_status: int
    stdout: str
    stderr: str
    stdout_dropped_bytes: int = 0
    """Bytes of stdout discarded (the oldest ones) because it exceeded the bound."""
    stderr_dropped_bytes: int = 0
    """Bytes of stderr discarded (the oldest ones) because it exceeded the bound."""

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def stdout_truncated(self) -> bool:
        return self.stdout_dropped_bytes > 0

    @property
    def stderr_truncated(self) -> bool:
        return self.stderr_dropped_bytes > 0

    @property
    def truncated(self) -> bool:
        """True when either stream lost its oldest bytes to the bound."""
        return self.stdout_truncated or self.stderr_truncated


@dataclass(frozen=True, slots=True)
class SSHTarget:
    """Where and how to log in. ``private_key_path`` is the bot's key (never sent anywhere)."""

    host: str
    port: int
    user: str = "root"
    private_key_path: Path | None = None


class Runner(Protocol):
    """A connection to one instance. Methods raise SSHConnectError when the link is lost."""

    def exec(
        self,
        command: str,
        *,
        timeout_seconds: float = 60.0,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> ExecResult:
        """Run ``command`` (a shell string built with shlex.quote for every value).

        At most ``max_output_bytes`` of stdout and as many of stderr are kept (the newest;
        see :class:`ExecResult`); the rest is read and discarded, so the remote side never
        blocks on a full pipe and memory stays bounded whatever the command prints.

        Raises:
            ValueError: ``max_output_bytes`` is not a positive int.
        """
        ...

    def put_file(self, local_path: Path, remote_path: str) -> None:
        """Upload one file, creating nothing but the file itself."""
        ...

    def put_bytes(self, data: bytes, remote_path: str, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote_path``."""
        ...

    def get_bytes(
        self, remote_path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES
    ) -> bytes | None:
        """Read a remote regular file whole, or None when it does not exist.

        Raises:
            RemoteError: the file is larger than ``max_bytes`` (refused without reading it;
                callers treat it as unreadable).
            ValueError: ``max_bytes`` is negative.
        """
        ...

    def close(self) -> None:
        ...
