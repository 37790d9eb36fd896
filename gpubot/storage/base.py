"""The object-storage port (checkpoints, results, staged data). Pure.

The bot hands rented instances only presigned URLs; no credential ever reaches a host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size_bytes: int
    sha256: str | None = None
    """From the object's ``sha256`` metadata when the uploader set it."""


class ObjectStore(Protocol):
    """A bucket below a prefix. Keys passed in and returned are relative to the prefix."""

    def presign_put(
        self, key: str, *, expires_seconds: int = 3600, sha256: str | None = None
    ) -> str:
        """A URL the instance can PUT bytes to (Content-Type: application/octet-stream).

        With ``sha256`` the upload must send ``x-amz-meta-sha256`` with that value."""
        ...

    def presign_get(self, key: str, *, expires_seconds: int = 3600) -> str:
        """A URL anyone holding it can GET the object from until it expires."""
        ...

    def list(self, prefix: str) -> list[StoredObject]:
        """Objects under ``prefix`` (relative), sorted by key.

        Raises:
            StorageError: the listing failed.
        """
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        ...

    def get_bytes(self, key: str) -> bytes:
        ...

    def url_for_display(self, key: str) -> str:
        """``s3://bucket/prefix/key`` (no signature) for messages."""
        ...
