"""The remote-execution port: run commands and move files on a rented instance. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What a remote command did."""

    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass(frozen=True, slots=True)
class SSHTarget:
    """Where and how to log in. ``private_key_path`` is the bot's key (never sent anywhere)."""

    host: str
    port: int
    user: str = "root"
    private_key_path: Path | None = None


class Runner(Protocol):
    """A connection to one instance. Methods raise SSHConnectError when the link is lost."""

    def exec(self, command: str, *, timeout_seconds: float = 60.0) -> ExecResult:
        """Run ``command`` (a shell string built with shlex.quote for every value)."""
        ...

    def put_file(self, local_path: Path, remote_path: str) -> None:
        """Upload one file, creating nothing but the file itself."""
        ...

    def put_bytes(self, data: bytes, remote_path: str, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote_path``."""
        ...

    def get_bytes(self, remote_path: str) -> bytes | None:
        """Read a remote file, or None when it does not exist."""
        ...

    def close(self) -> None:
        ...
