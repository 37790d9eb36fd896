"""Data staging: put a job's input data under its workspace before setup.

Sources (``[templates.<t>.data] inputs``, plus the per-child list of a sharded run stored in
``job.params["_inputs"]``, whose entries name an operator-declared input (``[inputs.<name>]``,
see :func:`resolve_input`); a user never supplies a path or a bucket):

* ``s3://bucket/prefix/``: listed with the bot's own credentials (sizes, and the ``sha256``
  metadata when the uploader set it; otherwise the bot streams the object once to compute it).
* a local folder on the bot's machine (the worker running the step must see it). Symlinks are
  skipped while listing and refused while reading.

Listing a declared input is bounded: it stops with an error as soon as it sees more than the
input's ``max_files`` files (or entries walked, for a local folder) or ``max_total_gb``.

Transfer: many small files travel as one archive (per-file requests dominate otherwise). When an S3
input has more than :data:`PACK_MIN_FILES` files or their average size is below
:data:`PACK_MAX_AVG_BYTES`, and always for a local folder, the bot builds a deterministic
tar.gz, uploads it to ``jobs/<job_id>/staging/`` and the instance downloads it with a
presigned GET (sha256 verified) and extracts it. Otherwise every file is downloaded by the
instance from its own presigned GET URL. The instance never holds a credential.

Verification: after the transfer, every staged file's size and sha256 on the instance are
compared with the source listing. Any mismatch raises :class:`~gpubot.errors.StorageError`
naming the file (``data file corrupted in transit: x.pdf: sha256 mismatch``); so does a
missing source, an empty input or a source whose bytes disagree with its own ``sha256``
metadata. The engine fails the job on a StorageError here (and destroys the instance). A
failed download (network) raises :class:`~gpubot.errors.RemoteError`: try again next tick.

Re-running is safe: archives are keyed by a digest of the source listing and reused when
already uploaded (a resumed shard does not rebuild its archive); files are overwritten.

Why one module over 500 lines: listing, packing, transfer and verification are one pipeline
over one data type (the source listing with sizes and sha256); every stage's bound and error
rule refers to the same listing, and each is only a few functions long.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shlex
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpubot.db.tables import JobRow
from gpubot.deps import EngineDeps
from gpubot.engine.remote_job import RemoteSession
from gpubot.errors import CommandError, RemoteError, StorageError
from gpubot.remote import control
from gpubot.templates import (
    DATA_DEST_RE,
    INPUT_NAME_RE,
    S3_SCHEME,
    NamedInput,
    Template,
    local_input_conflict,
    parse_s3_url,
)

PACK_MIN_FILES = 50
"""More files than this in one input travel as one archive."""
PACK_MAX_AVG_BYTES = 1024 * 1024
"""Files averaging less than this travel as one archive."""
INPUTS_PARAM = "_inputs"
"""``job.params`` key of the per-job staging list (see :class:`StagingInput`)."""
URL_TTL_SECONDS = 3600
_CHUNK = 1024 * 1024
_HEREDOC = "GPUBOT_STAGING_EOF"
_BAD_NAME_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class StagingInput:
    """One source to place under ``GPUBOT_WORKSPACE/<dest>``.

    ``files`` (relative names under the source) restricts the input to those files, each of
    which must exist; None means every file under the source.
    """

    src: str
    dest: str
    files: tuple[str, ...] | None = None
    declared: NamedInput | None = None
    """The operator's ``[inputs.<name>]`` this came from (its limits apply), or None for a
    template's own ``data`` input."""

    @property
    def is_s3(self) -> bool:
        return self.src.startswith(S3_SCHEME)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"src": self.src, "dest": self.dest}
        if self.declared is not None:
            out = {"input": self.declared.name, "dest": self.dest}
        if self.files is not None:
            out["files"] = list(self.files)
        return out


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file of a source: its name relative to the source, size and (maybe) sha256."""

    name: str
    size_bytes: int
    sha256: str | None = None


@dataclass
class StagingReport:
    """What staging moved. JSON-safe (the engine stores it in ``job.progress["staging"]``)."""

    bytes: int = 0
    files: int = 0
    seconds: float = 0.0
    archives: int = 0
    """Inputs that travelled as one tar.gz."""
    downloads: int = 0
    """Files the instance downloaded one by one."""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    """Per input: ``{"src", "dest", "files", "bytes", "method": "archive"|"files"}``."""


# -- pure helpers -----------------------------------------------------------------------------


def should_pack(files: list[SourceFile]) -> bool:
    """True when the files should travel as one archive (many, or small on average)."""
    if not files:
        return False
    total = sum(f.size_bytes for f in files)
    return len(files) > PACK_MIN_FILES or total / len(files) < PACK_MAX_AVG_BYTES


def input_usage(inputs: Mapping[str, NamedInput]) -> str:
    """The usage line for ``src=``: what it takes and the names the operator declared."""
    if not inputs:
        return (
            "src= takes the name of an input the operator declared; none is declared yet "
            "(an operator adds [inputs.<name>] with src = \"s3://bucket/prefix/\" or a folder "
            "to gpubot.toml)."
        )
    names = ", ".join(
        f"`{n}`" + (f" ({i.description})" if i.description else "")
        for n, i in sorted(inputs.items())
    )
    return f"src= takes the name of a declared input: {names}. Usage: src=<input name> shards=N"


def input_problem(deps: EngineDeps, declared: NamedInput) -> str | None:
    """Why ``declared`` may not be staged here, or None when it may.

    A local folder may not be, lie inside or contain GPUBOT_HOME or the bot's SSH key; an S3
    prefix may not overlap the bot's own object-store prefix (other jobs' results live there).
    Reads the file system only to resolve paths.
    """
    if declared.is_s3:
        try:
            bucket, prefix = parse_s3_url(declared.src)
        except ValueError as e:
            return f"input {declared.name!r} has a bad s3:// source: {e}"
        own_bucket = getattr(deps.store, "bucket", None)
        own_prefix = str(getattr(deps.store, "prefix", "") or "")
        if own_bucket == bucket and (
            prefix.startswith(own_prefix) or own_prefix.startswith(prefix)
        ):
            return (f"input {declared.name!r} overlaps the bot's own storage prefix "
                    f"(s3://{bucket}/{own_prefix}), where other jobs' results live")
        return None
    folder = Path(declared.src)
    if not folder.is_absolute():
        return f"input {declared.name!r} is not an absolute folder"
    protected = [deps.settings.home, deps.ssh_key_path]
    hit = local_input_conflict(folder, protected)
    if hit is not None:
        return (f"input {declared.name!r} is, lies inside or contains the bot's own files "
                f"({'GPUBOT_HOME' if hit == deps.settings.home else 'its SSH key'})")
    return None


def resolve_input(deps: EngineDeps, name: object) -> NamedInput:
    """The declared input a user named with ``src=<name>``; checked for use here.

    Raises:
        CommandError: ``name`` is not a declared input name (a path, a URL, ``..``, unknown),
            or the declared input may not be used (see :func:`input_problem`). The message
            carries the usage line with the declared names; the value is never opened.
    """
    inputs = deps.config.inputs
    text = name if isinstance(name, str) else ""
    if not INPUT_NAME_RE.match(text) or text not in inputs:
        shown = str(name)[:40]
        raise CommandError(f"{shown!r} is not a declared input. {input_usage(inputs)}")
    declared = inputs[text]
    problem = input_problem(deps, declared)
    if problem is not None:
        raise CommandError(f"{problem}; ask an operator to fix [inputs.{declared.name}].")
    return declared


def inputs_for(
    job: JobRow, template: Template, inputs: Mapping[str, NamedInput] | None = None
) -> list[StagingInput]:
    """The template's ``data`` inputs followed by the job's own ``_inputs`` list.

    Each ``_inputs`` entry names a declared input (``{"input": name, "dest", "files"}``),
    resolved through ``inputs`` (the config's ``[inputs]``). An entry from before named
    inputs (``{"src": ...}``) is accepted only when ``src`` is exactly a declared input's.

    Raises:
        StorageError: a malformed ``_inputs`` entry (bad dest, not a list, ...) or one that
            names no declared input.
    """
    declared_inputs = dict(inputs or {})
    out = [StagingInput(src=d.src, dest=d.dest) for d in template.data]
    raw = (job.params or {}).get(INPUTS_PARAM) or []
    if not isinstance(raw, list):
        raise StorageError(f"job {job.id}: {INPUTS_PARAM} must be a list")
    for entry in raw:
        if not isinstance(entry, dict):
            raise StorageError(f"job {job.id}: malformed staging input {entry!r}"[:300])
        declared: NamedInput | None = None
        if isinstance(entry.get("input"), str):
            declared = declared_inputs.get(entry["input"])
        elif isinstance(entry.get("src"), str):
            declared = next(
                (i for i in declared_inputs.values() if i.src == entry["src"]), None
            )
        else:
            raise StorageError(f"job {job.id}: malformed staging input {entry!r}"[:300])
        if declared is None:
            raise StorageError(
                f"job {job.id}: its input is not (or no longer) declared in [inputs]"
            )
        dest = str(entry.get("dest") or ".").strip().rstrip("/") or "."
        if not DATA_DEST_RE.match(dest):
            raise StorageError(f"job {job.id}: staging dest {dest!r} is not a safe relative path")
        files = entry.get("files")
        names = None if files is None else tuple(str(f) for f in files)
        out.append(StagingInput(src=declared.src, dest=dest, files=names, declared=declared))
    return out


def listing_digest(files: list[SourceFile]) -> str:
    """A digest of a listing (names, sizes, checksums): names a reusable archive."""
    body = json.dumps([[f.name, f.size_bytes, f.sha256] for f in files], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _check_name(name: str) -> str:
    parts = name.split("/")
    if not name or _BAD_NAME_RE.search(name) or any(p in {"", ".", ".."} for p in parts):
        raise StorageError(f"unsupported input file name {name!r}"[:300])
    if name == _HEREDOC:
        raise StorageError(f"unsupported input file name {name!r}")
    return name


# -- sources ----------------------------------------------------------------------------------


class _S3Source:
    """An ``s3://bucket/prefix/`` source read with the bot's credentials (boto3 client)."""

    def __init__(self, deps: EngineDeps, src: str) -> None:
        try:
            self.bucket, self.prefix = parse_s3_url(src)
        except ValueError as e:
            raise StorageError(f"bad data source {src!r}: {e}") from e
        self.src = src
        client = getattr(deps.store, "_client", None)
        if client is None:
            raise StorageError("s3:// data sources need the S3 object store (GPUBOT_S3_BUCKET)")
        self.client = client

    def _error(self, op: str, key: str, e: Exception) -> StorageError:
        from botocore.exceptions import ClientError

        code = type(e).__name__
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code") or code)
        return StorageError(f"S3 {op} failed for s3://{self.bucket}/{key}: {code}")

    def list(
        self,
        only: tuple[str, ...] | None,
        *,
        with_sha256: bool = True,
        limits: NamedInput | None = None,
    ) -> list[SourceFile]:
        from botocore.exceptions import BotoCoreError, ClientError

        sizes: dict[str, int] = {}
        total = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix) :]
                    if name and not name.endswith("/"):
                        sizes[name] = int(obj["Size"])
                        total += sizes[name]
                        _check_limits(limits, len(sizes), total)
        except (BotoCoreError, ClientError) as e:
            raise self._error("list", self.prefix, e) from e
        names = sorted(sizes) if only is None else list(only)
        out = []
        for name in names:
            if name not in sizes:
                raise StorageError(f"input file missing at the source: {self.src}{name}")
            sha = self._sha_meta(name) if with_sha256 else None
            out.append(SourceFile(_check_name(name), sizes[name], sha))
        return out

    def _sha_meta(self, name: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + name
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as e:
            raise self._error("head", key, e) from e
        sha = (head.get("Metadata") or {}).get("sha256")
        return sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) else None

    def presign_get(self, name: str) -> str:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.prefix + name},
                ExpiresIn=URL_TTL_SECONDS,
            )
        )

    def chunks(self, name: str) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + name
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            yield from body.iter_chunks(_CHUNK)
        except (BotoCoreError, ClientError) as e:
            raise self._error("get", key, e) from e


def _check_limits(limits: NamedInput | None, files: int, total_bytes: int) -> None:
    if limits is None:
        return
    if files > limits.max_files:
        raise StorageError(
            f"input {limits.name!r} holds more than its limit of {limits.max_files} files"
        )
    if total_bytes > limits.max_total_bytes:
        raise StorageError(
            f"input {limits.name!r} holds more than its limit of {limits.max_total_gb:g} GB"
        )


class _LocalSource:
    """A folder on the bot's machine. Symlinks are never listed nor read through."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.root = Path(src)
        if not self.root.is_dir():
            raise StorageError(f"data folder not found on the bot's machine: {src}")
        self.real_root = self.root.resolve()

    def _walk(self, limits: NamedInput | None) -> list[tuple[str, int]]:
        """``(name, size)`` of every regular file, without following symlinks; stops with
        StorageError once the input's limits are passed (files, bytes, or entries walked:
        ``10 * max_files``, so a tree of empty folders cannot keep it busy either)."""
        found: list[tuple[str, int]] = []
        total = 0
        walked = 0
        max_walked = None if limits is None else 10 * limits.max_files + 1000
        stack = [""]
        while stack:
            rel = stack.pop()
            try:
                with os.scandir(self.root / rel if rel else self.root) as it:
                    entries = list(it)
            except OSError as e:
                raise StorageError(
                    f"cannot list {self.src}/{rel}: {type(e).__name__}"
                ) from e
            for entry in entries:
                walked += 1
                if limits is not None and max_walked is not None and walked > max_walked:
                    raise StorageError(
                        f"input {limits.name!r} has more than {max_walked} files and folders"
                    )
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(name)
                elif entry.is_file(follow_symlinks=False):
                    size = entry.stat(follow_symlinks=False).st_size
                    found.append((name, size))
                    total += size
                    _check_limits(limits, len(found), total)
        return found

    def _path(self, name: str) -> Path:
        """The file ``name`` under the root; refused when it is (or passes through) a
        symlink, or resolves outside the root."""
        path = self.root / _check_name(name)
        real = path.resolve()
        if path.is_symlink() or not real.is_relative_to(self.real_root) or (
            real != self.real_root / name
        ):
            raise StorageError(f"input file is a symlink or outside the input: {name}"[:300])
        return path

    def list(
        self,
        only: tuple[str, ...] | None,
        *,
        with_sha256: bool = False,
        limits: NamedInput | None = None,
    ) -> list[SourceFile]:
        if only is None:
            return [
                SourceFile(_check_name(name), size, None)
                for name, size in sorted(self._walk(limits))
            ]
        out = []
        for name in only:
            path = self._path(name)
            if not path.is_file():
                raise StorageError(f"input file missing at the source: {self.src}/{name}")
            out.append(SourceFile(name, path.stat().st_size, None))
        _check_limits(limits, len(out), sum(f.size_bytes for f in out))
        return out

    def chunks(self, name: str) -> Iterator[bytes]:
        fd = os.open(self._path(name), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk


def list_source(deps: EngineDeps, declared: NamedInput) -> list[SourceFile]:
    """Every file of the operator-declared input with its size, sorted by name; no
    checksums (one listing call for S3). Bounded: stops early past the input's limits.

    Raises:
        StorageError: the input may not be used here (:func:`input_problem`), is missing,
            cannot be listed, or holds more than its ``max_files``/``max_total_gb``.
    """
    problem = input_problem(deps, declared)
    if problem is not None:
        raise StorageError(problem)
    source = _S3Source(deps, declared.src) if declared.is_s3 else _LocalSource(declared.src)
    return source.list(None, with_sha256=False, limits=declared)


def _digest_of(source: _S3Source | _LocalSource, name: str) -> str:
    h = hashlib.sha256()
    for chunk in source.chunks(name):
        h.update(chunk)
    return h.hexdigest()


# -- the step ---------------------------------------------------------------------------------


def stage_inputs(
    session: RemoteSession, deps: EngineDeps, job: JobRow, template: Template
) -> StagingReport:
    """Place every input of ``job`` under its workspace on the instance, verified.

    Makes a bounded number of S3 calls and SSH commands (downloads run in the foreground of
    one SSH command per input, up to 30 min). Returns bytes, files and seconds.

    Raises:
        StorageError: a source is missing/empty, or a file's bytes disagree with the source
            listing (message names the file). The job should fail.
        RemoteError: an SSH command or a download failed: try again next tick.
    """
    started = time.monotonic()
    report = StagingReport()
    layout = session.layout(job)
    for index, spec in enumerate(inputs_for(job, template, deps.config.inputs)):
        if spec.declared is not None:
            problem = input_problem(deps, spec.declared)
            if problem is not None:
                raise StorageError(problem)
        source: _S3Source | _LocalSource = (
            _S3Source(deps, spec.src) if spec.is_s3 else _LocalSource(spec.src)
        )
        files = source.list(spec.files, limits=spec.declared)
        if not files:
            raise StorageError(f"no input files under {spec.src}")
        dest_dir = layout.workspace if spec.dest == "." else f"{layout.workspace}/{spec.dest}"
        if isinstance(source, _LocalSource) or should_pack(files):
            files = _stage_archive(session, deps, job, index, source, files, dest_dir)
            method = "archive"
            report.archives += 1
        else:
            files = _stage_files(session, source, files, dest_dir)
            method = "files"
            report.downloads += len(files)
        _verify_on_instance(session, files, dest_dir)
        size = sum(f.size_bytes for f in files)
        report.bytes += size
        report.files += len(files)
        report.inputs.append(
            {"src": spec.src, "dest": spec.dest, "files": len(files), "bytes": size,
             "method": method}
        )
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _stage_files(
    session: RemoteSession, source: _S3Source | _LocalSource, files: list[SourceFile],
    dest_dir: str,
) -> list[SourceFile]:
    assert isinstance(source, _S3Source)
    complete = [
        f if f.sha256 else SourceFile(f.name, f.size_bytes, _digest_of(source, f.name))
        for f in files
    ]
    items = [
        control.DownloadItem(
            url=source.presign_get(f.name), remote_path=f"{dest_dir}/{f.name}",
            sha256=str(f.sha256),
        )
        for f in complete
    ]
    _download(session, items, dest_dir, what="downloading the input files")
    return complete


def _stage_archive(
    session: RemoteSession,
    deps: EngineDeps,
    job: JobRow,
    index: int,
    source: _S3Source | _LocalSource,
    files: list[SourceFile],
    dest_dir: str,
) -> list[SourceFile]:
    """Build (or reuse) the input's tar.gz in the store; the instance fetches and extracts it.

    Returns the files with the sha256 the bot computed while packing."""
    store = deps.store
    key = f"jobs/{job.id}/staging/{index}-{listing_digest(files)[:16]}.tar.gz"
    sidecar = key + ".files.json"
    existing = {o.key: o for o in store.list(f"jobs/{job.id}/staging/")}
    archive = existing.get(key)
    if archive is not None and archive.sha256 and sidecar in existing:
        entries = json.loads(store.get_bytes(sidecar).decode())
        packed = [SourceFile(e["name"], int(e["size"]), e["sha256"]) for e in entries]
        archive_sha = archive.sha256
    else:
        data, packed = build_archive(source, files)
        store.put_bytes(key, data)
        store.put_bytes(
            sidecar,
            json.dumps(
                [{"name": f.name, "size": f.size_bytes, "sha256": f.sha256} for f in packed]
            ).encode(),
        )
        archive_sha = hashlib.sha256(data).hexdigest()
    remote_archive = f"{session.layout(job).control_dir}/staging-{index}.tar.gz"
    item = control.DownloadItem(
        url=store.presign_get(key, expires_seconds=URL_TTL_SECONDS),
        remote_path=remote_archive,
        sha256=archive_sha,
    )
    _download(session, [item], dest_dir, what="downloading the input archive")
    script = (
        "set -e\n"
        f"mkdir -p {control.q(dest_dir)}\n"
        f"tar -xzf {control.q(remote_archive)} --no-same-owner -C {control.q(dest_dir)}\n"
        f"rm -f {control.q(remote_archive)}\n"
    )
    result = session.runner.exec(script, timeout_seconds=1800)
    if not result.ok:
        raise StorageError(
            f"the input archive for {dest_dir} could not be extracted "
            f"(exit {result.exit_status}): {(result.stderr or '')[-300:]}"
        )
    return packed


def build_archive(
    source: _S3Source | _LocalSource, files: list[SourceFile]
) -> tuple[bytes, list[SourceFile]]:
    """A deterministic tar.gz of ``files`` read from ``source`` (streamed, hashed on the way).

    Returns the archive bytes and the files with their computed sha256.

    Raises:
        StorageError: a file's bytes disagree with its listed size or sha256.
    """
    packed: list[SourceFile] = []
    with tempfile.TemporaryFile() as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for f in files:
                reader = _HashingReader(source.chunks(f.name))
                info = tarfile.TarInfo(f.name)
                info.size = f.size_bytes
                info.mode = 0o644
                info.mtime = 0
                try:
                    tar.addfile(info, reader)
                except OSError as e:  # tarfile: "unexpected end of data"
                    raise StorageError(
                        f"data file corrupted in transit: {f.name}: shorter than the "
                        f"{f.size_bytes} bytes listed"
                    ) from e
                if reader.has_more():
                    raise StorageError(
                        f"data file corrupted in transit: {f.name}: longer than the "
                        f"{f.size_bytes} bytes listed"
                    )
                digest = reader.hexdigest()
                if f.sha256 and digest != f.sha256:
                    raise StorageError(
                        f"data file corrupted in transit: {f.name}: sha256 mismatch "
                        f"(listed {f.sha256[:12]}…, read {digest[:12]}…)"
                    )
                packed.append(SourceFile(f.name, f.size_bytes, digest))
        raw.seek(0)
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
            while chunk := raw.read(_CHUNK):
                gz.write(chunk)
    return out.getvalue(), packed


class _HashingReader(io.RawIOBase):
    """A file-like reader over chunks that hashes what it hands out."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def _fill(self, n: int) -> None:
        while len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            self._buffer += chunk

    def read(self, size: int = -1) -> bytes:
        self._fill(size if size >= 0 else 1 << 62)
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        self._hash.update(data)
        return data

    def has_more(self) -> bool:
        self._fill(1)
        return bool(self._buffer)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _download(
    session: RemoteSession, items: list[control.DownloadItem], dest_dir: str, *, what: str
) -> None:
    result = session.runner.exec(control.download_files_script(items), timeout_seconds=1800)
    if result.ok:
        return
    stderr = result.stderr or ""
    if result.exit_status == control.DOWNLOAD_SHA_MISMATCH_EXIT:
        m = re.search(r"sha256 mismatch for (.*?): expected", stderr)
        path = m.group(1) if m else "?"
        name = path[len(dest_dir) + 1 :] if path.startswith(dest_dir + "/") else path
        if path.endswith(".tar.gz") and "/.control/staging-" in path:
            name = "the input archive"
        raise StorageError(f"data file corrupted in transit: {name}: sha256 mismatch")
    raise RemoteError(f"{what} failed (exit {result.exit_status}): {stderr[-200:]}")


def _verify_on_instance(session: RemoteSession, files: list[SourceFile], dest_dir: str) -> None:
    """Compare each staged file's size and sha256 on the instance with the listing."""
    names = "\n".join(f.name for f in files)
    script = (
        f"cd {shlex.quote(dest_dir)} || exit 2\n"
        "while IFS= read -r f; do\n"
        '  if [ -f "$f" ]; then\n'
        '    printf \'%s %s %s\\n\' "$(stat -c %s "$f")" '
        '"$(sha256sum < "$f" | cut -d" " -f1)" "$f"\n'
        "  else printf 'missing - %s\\n' \"$f\"; fi\n"
        f"done <<'{_HEREDOC}'\n{names}\n{_HEREDOC}\n"
    )
    result = session.runner.exec(script, timeout_seconds=1800)
    if not result.ok:
        raise RemoteError(f"verifying the staged files failed (exit {result.exit_status})")
    seen: dict[str, tuple[str, str]] = {}
    for line in result.stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            seen[parts[2]] = (parts[0], parts[1])
    for f in files:
        size, sha = seen.get(f.name, ("missing", "-"))
        if size == "missing":
            raise StorageError(f"data file missing after transfer: {f.name}")
        if size != str(f.size_bytes):
            raise StorageError(
                f"data file corrupted in transit: {f.name}: size {size} instead of "
                f"{f.size_bytes} bytes"
            )
        if f.sha256 and sha != f.sha256:
            raise StorageError(f"data file corrupted in transit: {f.name}: sha256 mismatch")

