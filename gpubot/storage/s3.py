"""The S3 adapter: :class:`S3Store` implements :class:`gpubot.storage.base.ObjectStore`.

Configuration is boto3's own: credentials and region from the usual ``AWS_*`` variables, the
endpoint from ``AWS_ENDPOINT_URL`` (R2, MinIO, moto). Path-style addressing is used so any
S3-compatible endpoint works.

Presigned PUT URLs are signed for ``Content-Type: application/octet-stream``; the uploader
must send exactly that header (``curl -T FILE -H 'Content-Type: application/octet-stream'``).
When a sha256 is given to :meth:`S3Store.presign_put`, ``x-amz-meta-sha256`` is signed too
and the uploader must send it (``control.upload_files_script`` does).

Errors: every botocore failure becomes :class:`gpubot.errors.StorageError` whose message
names the operation, the ``s3://`` location and the S3 error code only, never credentials or
URL signatures.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gpubot.errors import StorageError
from gpubot.storage.base import StoredObject

__all__ = ["OCTET_STREAM", "S3Store", "write_manifest"]

OCTET_STREAM = "application/octet-stream"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def _code(e: Exception) -> str:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return str(err.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return type(e).__name__


class S3Store:
    """A bucket below a prefix. Keys in and out are relative to the prefix.

    ``prefix`` is normalised to end with ``/`` (empty means the bucket root). ``client`` is a
    boto3 S3 client; by default one is made from the environment (see module docstring).
    """

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None) -> None:
        if not bucket:
            raise ValueError("bucket is required")
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self._client = client or boto3.client(
            "s3",
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    # -- helpers --------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        key = key.lstrip("/")
        if not key or ".." in key.split("/"):
            raise ValueError("object key must be a non-empty relative path without '..'")
        return self.prefix + key

    def url_for_display(self, key: str) -> str:
        """``s3://bucket/prefix/key`` (no signature) for messages."""
        return f"s3://{self.bucket}/{self.prefix}{key.lstrip('/')}"

    def _error(self, op: str, key: str, e: Exception) -> StorageError:
        return StorageError(f"S3 {op} failed for {self.url_for_display(key)}: {_code(e)}")

    # -- bucket ---------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (idempotent).

        Raises:
            StorageError: the bucket could not be checked or created (e.g. owned by someone
                else, or the credentials are refused).
        """
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if _code(e) not in _NOT_FOUND:
                raise self._error("head_bucket", "", e) from e
        except BotoCoreError as e:
            raise self._error("head_bucket", "", e) from e
        region = self._client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as e:
            if _code(e) in {"BucketAlreadyOwnedByYou"}:
                return
            raise self._error("create_bucket", "", e) from e
        except BotoCoreError as e:
            raise self._error("create_bucket", "", e) from e

    # -- presigned URLs -------------------------------------------------------------------

    def presign_put(
        self, key: str, *, expires_seconds: int = 3600, sha256: str | None = None
    ) -> str:
        """A URL accepting one PUT with ``Content-Type: application/octet-stream``.

        With ``sha256`` (64 lowercase hex) the upload must also send
        ``x-amz-meta-sha256: <sha256>``, which :meth:`list` then reports. Presigning is local
        (no request is made).
        """
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._full(key),
            "ContentType": OCTET_STREAM,
        }
        if sha256 is not None:
            if not _SHA256_RE.match(sha256):
                raise ValueError("sha256 must be 64 lowercase hex digits")
            params["Metadata"] = {"sha256": sha256}
        try:
            return str(
                self._client.generate_presigned_url(
                    "put_object", Params=params, ExpiresIn=expires_seconds, HttpMethod="PUT"
                )
            )
        except (BotoCoreError, ClientError) as e:
            raise self._error("presign_put", key, e) from e

    def presign_get(self, key: str, *, expires_seconds: int = 3600) -> str:
        """A URL anyone holding it can GET the object from until it expires (local call)."""
        try:
            return str(
                self._client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": self._full(key)},
                    ExpiresIn=expires_seconds,
                )
            )
        except (BotoCoreError, ClientError) as e:
            raise self._error("presign_get", key, e) from e

    # -- objects --------------------------------------------------------------------------

    def list(self, prefix: str = "", *, with_sha256: bool = True) -> list[StoredObject]:
        """Objects under ``prefix`` (relative), sorted by key, with sizes.

        With ``with_sha256`` (default) each object's ``sha256`` metadata is read (one HEAD
        per object; keep listings to a checkpoint's or a job's files). An object deleted
        between the listing and its HEAD is left out.

        Raises:
            StorageError: the listing failed.
        """
        full_prefix = self.prefix + prefix.lstrip("/")
        out: list[StoredObject] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix) :]
                    out.append(StoredObject(key=key, size_bytes=int(obj["Size"])))
        except (BotoCoreError, ClientError) as e:
            raise self._error("list", prefix, e) from e
        if with_sha256:
            with_meta: list[StoredObject] = []
            for obj in out:
                try:
                    head = self._client.head_object(Bucket=self.bucket, Key=self.prefix + obj.key)
                except ClientError as e:
                    if _code(e) in _NOT_FOUND:
                        continue
                    raise self._error("head", obj.key, e) from e
                except BotoCoreError as e:
                    raise self._error("head", obj.key, e) from e
                sha = (head.get("Metadata") or {}).get("sha256")
                with_meta.append(
                    StoredObject(
                        key=obj.key,
                        size_bytes=obj.size_bytes,
                        sha256=sha if isinstance(sha, str) and _SHA256_RE.match(sha) else None,
                    )
                )
            out = with_meta
        return sorted(out, key=lambda o: o.key)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` (replacing it) with ``sha256`` metadata."""
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._full(key),
                Body=data,
                ContentType=OCTET_STREAM,
                Metadata={"sha256": hashlib.sha256(data).hexdigest()},
            )
        except (BotoCoreError, ClientError) as e:
            raise self._error("put", key, e) from e

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes.

        Raises:
            StorageError: missing object (message says "not found") or any other failure.
        """
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            return bytes(resp["Body"].read())
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise StorageError(f"object not found: {self.url_for_display(key)}") from e
            raise self._error("get", key, e) from e
        except BotoCoreError as e:
            raise self._error("get", key, e) from e

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing object succeeds."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except (BotoCoreError, ClientError) as e:
            raise self._error("delete", key, e) from e


def write_manifest(store: S3Store, key: str, entries: Iterable[Mapping[str, Any]]) -> str:
    """Write ``entries`` as JSON lines (sorted keys) to ``key``; returns its sha256."""
    body = "".join(json.dumps(dict(e), sort_keys=True) + "\n" for e in entries).encode()
    store.put_bytes(key, body)
    return hashlib.sha256(body).hexdigest()
