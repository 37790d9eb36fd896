"""S3Store against moto's server mode over real HTTP."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.parse
from pathlib import Path

import boto3
import pytest

from gpubot.errors import StorageError
from gpubot.storage.s3 import S3Store, write_manifest
from tests.fixtures.s3 import DUMMY_KEY_ID, DUMMY_SECRET


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--noproxy", "*", *args], capture_output=True,
                          text=True, timeout=30)


def test_put_get_list_with_sha256_metadata(s3_store: S3Store) -> None:
    s3_store.put_bytes("job-1/results/b.txt", b"bbb")
    s3_store.put_bytes("job-1/results/a.txt", b"a")
    s3_store.put_bytes("job-2/other.txt", b"x")
    assert s3_store.get_bytes("job-1/results/b.txt") == b"bbb"
    listed = s3_store.list("job-1/")
    assert [(o.key, o.size_bytes) for o in listed] == [
        ("job-1/results/a.txt", 1), ("job-1/results/b.txt", 3)]
    assert listed[1].sha256 == hashlib.sha256(b"bbb").hexdigest()
    assert [o.sha256 for o in s3_store.list("job-1/", with_sha256=False)] == [None, None]
    # keys are relative to the prefix: the raw bucket holds them below gpubot/
    raw = boto3.client("s3").list_objects_v2(Bucket=s3_store.bucket)
    assert sorted(o["Key"] for o in raw["Contents"])[0] == "gpubot/job-1/results/a.txt"
    assert s3_store.url_for_display("job-1/x") == f"s3://{s3_store.bucket}/gpubot/job-1/x"


def test_missing_object_is_a_storage_error(s3_store: S3Store) -> None:
    with pytest.raises(StorageError) as info:
        s3_store.get_bytes("nope")
    assert "not found" in str(info.value)
    assert s3_store.list("nothing-here/") == []


def test_presigned_put_with_curl_stores_the_exact_bytes(s3_store: S3Store,
                                                        tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000 + b"a=1&b=2"  # would be mangled if parsed as a form
    f = tmp_path / "ckpt.bin"
    f.write_bytes(payload)
    url = s3_store.presign_put("job-1/checkpoints/ckpt.bin", expires_seconds=300)
    assert "X-Amz-Signature=" in url and DUMMY_SECRET not in url
    done = curl("-f", "-T", str(f), "-H", "Content-Type: application/octet-stream", url)
    assert done.returncode == 0, done.stderr
    assert s3_store.get_bytes("job-1/checkpoints/ckpt.bin") == payload
    # the content type is part of the signature (moto does not enforce signatures, S3 does)
    assert "SignedHeaders=content-type%3Bhost" in url or "SignedHeaders=content-type;host" in url


def test_presigned_put_with_signed_sha256_metadata(s3_store: S3Store, tmp_path: Path) -> None:
    f = tmp_path / "m.bin"
    f.write_bytes(b"model")
    sha = hashlib.sha256(b"model").hexdigest()
    url = s3_store.presign_put("k/m.bin", sha256=sha)
    done = curl("-f", "-T", str(f), "-H", "Content-Type: application/octet-stream",
                "-H", f"x-amz-meta-sha256: {sha}", url)
    assert done.returncode == 0, done.stderr
    assert [(o.key, o.sha256) for o in s3_store.list("k/")] == [("k/m.bin", sha)]
    with pytest.raises(ValueError):
        s3_store.presign_put("k/x", sha256="nothex")


def test_presigned_get_serves_the_object(s3_store: S3Store) -> None:
    s3_store.put_bytes("r/metrics.json", b'{"accuracy": 0.9}')
    url = s3_store.presign_get("r/metrics.json", expires_seconds=60)
    done = curl("-f", url)
    assert done.returncode == 0 and json.loads(done.stdout) == {"accuracy": 0.9}
    assert urllib.parse.urlsplit(url).path.endswith("/gpubot/r/metrics.json")


def test_write_manifest(s3_store: S3Store) -> None:
    sha = write_manifest(s3_store, "job-1/manifest.jsonl",
                         [{"path": "b", "size": 2}, {"size": 1, "path": "a"}])
    body = s3_store.get_bytes("job-1/manifest.jsonl")
    assert hashlib.sha256(body).hexdigest() == sha
    assert body.decode().splitlines() == ['{"path": "b", "size": 2}', '{"path": "a", "size": 1}']


def test_ensure_bucket_is_idempotent_and_errors_carry_no_secrets(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3Store("gpubot-ensure-twice", "p")
    store.ensure_bucket()
    store.ensure_bucket()
    store.put_bytes("x", b"1")
    assert store.prefix == "p/"
    missing = S3Store("gpubot-never-created", "")
    with pytest.raises(StorageError) as info:
        missing.list("")
    message = str(info.value)
    assert "NoSuchBucket" in message
    assert DUMMY_SECRET not in message and DUMMY_KEY_ID not in message


def test_unreachable_endpoint_is_a_storage_error(monkeypatch: pytest.MonkeyPatch,
                                                s3_env: str) -> None:
    from tests.fixtures.sshd import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError) as info:
        S3Store("b", "").put_bytes("k", b"v")
    assert DUMMY_SECRET not in str(info.value)


def test_invalid_keys_are_rejected(s3_store: S3Store) -> None:
    with pytest.raises(ValueError):
        s3_store.put_bytes("../escape", b"")
    with pytest.raises(ValueError):
        s3_store.presign_get("")
