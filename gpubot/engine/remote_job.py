"""The job's life on its instance: what the engine asks of SSH and the object store.

Each method makes a few short SSH commands and returns; long work (setup, the job itself)
runs detached on the instance and is polled on later ticks. Cloud credentials never reach the
instance: it gets presigned URLs only, per file, valid for an hour.

Object-store layout below ``GPUBOT_S3_PREFIX``::

    jobs/<job_id>/checkpoints/<checkpoint-N>/...     files + MANIFEST.jsonl (written last)
    jobs/<job_id>/results/...                        files + MANIFEST.jsonl

Why one module over 500 lines: every operation here shares one session (a pooled SSH
connection, the job's remote layout and the store's key scheme) and one rule set (bounded
reads, presigned URLs only, manifests written last); splitting checkpoints, results and the
status read apart would pass that session state through three modules.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.errors import RemoteCommandFailed, RemoteError, StorageError
from gpubot.lifecycle import InstanceVerdict, instance_verdict
from gpubot.models import InstanceObservation, ProviderStatus
from gpubot.remote import control, parsing
from gpubot.remote.runner import Runner, SSHTarget
from gpubot.templates import Template, param_env

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.jsonl"
RESULT_LINK_TTL_SECONDS = 7 * 24 * 3600
"""SigV4 presigned URLs live at most 7 days."""
MAX_HISTORY_POINTS = 500
LISTING_MAX_OUTPUT_BYTES = 16 * 1024 * 1024
"""Bound of a checkpoint/results listing read (about 100,000 files); a longer listing is an
error, never a silently shortened one (a backup must not miss files)."""


def verdict_of(instance: InstanceRow) -> InstanceVerdict:
    """What the newest listing says about the instance (see lifecycle.instance_verdict)."""
    if instance.provider_status == "gone":
        return InstanceVerdict.LOST
    if instance.provider_status is None:
        return InstanceVerdict.PENDING
    try:
        status = ProviderStatus(instance.provider_status)
    except ValueError:
        status = ProviderStatus.UNKNOWN
    obs = InstanceObservation(
        provider_id=instance.provider_id or "",
        status=status,
        label=instance.label,
        is_bid=instance.rental_type == "interruptible",
        price_per_hour_usd=instance.price_per_hour_usd,
        ssh_host=instance.ssh_host,
        ssh_port=instance.ssh_port,
    )
    return instance_verdict(obs, listed_ok=True)


REMOTE_ROOT_MAX = JobRow.__table__.c.remote_root.type.length  # type: ignore[attr-defined]
"""``jobs.remote_root`` is a VARCHAR of this length (512)."""


class BadRemoteRoot(RemoteError):
    """The instance reported a remote root the bot will not use (not a retryable SSH hiccup:
    the host itself answers this way)."""


def check_remote_root(root: str) -> str:
    """``root`` when it is an absolute path of printable characters, without ``..`` parts,
    at most :data:`REMOTE_ROOT_MAX` characters. Pure.

    Raises:
        BadRemoteRoot: otherwise; the message says why and shows at most 60 characters.
    """
    shown = repr(root[:60]) + ("…" if len(root) > 60 else "")
    if len(root) > REMOTE_ROOT_MAX:
        why = f"is {len(root)} characters long (at most {REMOTE_ROOT_MAX})"
    elif not root.startswith("/"):
        why = "is not an absolute path"
    elif not root.isprintable():
        why = "contains control characters"
    elif ".." in root.split("/"):
        why = "contains a '..' part"
    else:
        return root
    raise BadRemoteRoot(f"the instance reported an unusable remote root {shown}: it {why}")


def loss_reason(instance: InstanceRow) -> str:
    status = instance.provider_status or "unknown"
    if status == "outbid":
        return f"instance {instance.provider_id} was outbid"
    if status == "gone":
        return f"instance {instance.provider_id} disappeared from the provider"
    if status == "offline":
        return f"instance {instance.provider_id}'s host went offline"
    return f"instance {instance.provider_id} is {status}"


def request_destroy(deps: EngineDeps, instance: InstanceRow) -> None:
    """Ask the provider to destroy (idempotent); verification happens on later ticks.

    Pooled SSH connections to the instance are closed too (none is reused for whatever
    server later takes its address)."""
    if instance.provider_id:
        deps.provider.destroy(instance.provider_id)
    if deps.ssh_pool is not None and instance.ssh_host and instance.ssh_port:
        deps.ssh_pool.discard(instance.ssh_host, int(instance.ssh_port))


def kill_quietly(deps: EngineDeps, instance: InstanceRow, job: JobRow) -> None:
    """Best effort: stop the job's processes before the destroy (logs flushed)."""
    if not (instance.ssh_host and instance.ssh_port and job.remote_root):
        return
    try:
        with connect(deps, instance, timeout_seconds=5) as session:
            session.kill(job)
    except RemoteError as exc:
        logger.info("job %s: kill before destroy skipped: %s", job.id, exc)


@contextmanager
def connect(
    deps: EngineDeps, instance: InstanceRow, *, timeout_seconds: float = 10
) -> Iterator[RemoteSession]:
    """An SSH session to the instance, with its host key pinned after first use."""
    if not instance.ssh_host or not instance.ssh_port:
        raise RemoteError(f"instance {instance.provider_id} has no SSH address yet")
    target = SSHTarget(
        host=instance.ssh_host,
        port=int(instance.ssh_port),
        user="root",
        private_key_path=deps.ssh_key_path,
    )
    runner = deps.connect(target, known_host_key=instance.host_key)
    try:
        yield RemoteSession(runner, deps)
    finally:
        runner.close()


@dataclass
class JobStatus:
    running: bool
    exit_code: int | None
    vanished: bool
    progress: parsing.Progress | None
    trainer_metrics: dict[str, float] | None
    diagnosis: str | None
    log_tail: str = ""
    """The log's last 60 lines as read for this status, at most
    ``control.LOG_TAIL_MAX_BYTES`` bytes (failure reasons quote it)."""
    disk_free_mb: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    poll_seen: dict[str, Any] | None = None
    """What this poll saw of the log, progress file and checkpoint dir; stored in the job's
    progress (``poll_seen``) so the next poll skips what did not change."""
    tail_read: bool = True
    """False when the log was unchanged and its tail not re-read (``log_tail`` is then empty,
    ``diagnosis`` the previous poll's)."""


@dataclass
class StartResult:
    phase: str
    """``setup`` (running), ``run`` (the job started), or ``failed`` (setup failed)."""
    message: str = ""


class RemoteSession:
    """Commands for one job over one SSH connection."""

    def __init__(self, runner: Runner, deps: EngineDeps) -> None:
        self.runner = runner
        self.deps = deps
        self.last_poll: parsing.Poll | None = None
        """The newest :meth:`status` poll of this session (its checkpoint signature lets
        :meth:`backup_checkpoints` skip an unchanged checkpoint dir)."""

    @property
    def host_key(self) -> str | None:
        return getattr(self.runner, "host_key", None)

    def _run(
        self,
        script: str,
        what: str,
        *,
        timeout_seconds: float = 120,
        max_output_bytes: int | None = None,
    ) -> str:
        """Run ``script``; return its stdout (bounded by the runner: the newest bytes).

        ``max_output_bytes`` given: the output must be complete, so more than that many bytes
        raises RemoteCommandFailed instead of returning a shortened text. Otherwise the
        runner's default bound applies and a longer output keeps its newest bytes.

        Raises:
            RemoteCommandFailed: non-zero exit, or output over an explicit bound.
            SSHConnectError: the link failed.
        """
        if max_output_bytes is None:
            result = self.runner.exec(script, timeout_seconds=timeout_seconds)
        else:
            result = self.runner.exec(
                script, timeout_seconds=timeout_seconds, max_output_bytes=max_output_bytes
            )
        if not result.ok:
            tail = (result.stderr or result.stdout)[-800:]
            raise RemoteCommandFailed(
                f"{what} failed with exit status {result.exit_status}",
                exit_status=result.exit_status,
                stderr_tail=tail,
            )
        if max_output_bytes is not None and result.stdout_truncated:
            raise RemoteCommandFailed(
                f"{what} printed more than {max_output_bytes} bytes; refusing a partial result",
                exit_status=result.exit_status,
                stderr_tail=result.stderr[-800:],
            )
        return result.stdout

    def discover_root(self) -> str:
        """The instance's working root (``/workspace`` when it reports none), checked with
        :func:`check_remote_root`.

        Raises:
            BadRemoteRoot: the host reported a root that is not a short absolute printable
                path (the connecting step gives up on that host at once).
            RemoteCommandFailed, SSHConnectError: as :meth:`_run` (try again).
        """
        root = self._run(control.DISCOVER_ROOT_COMMAND, "discovering the remote root").strip()
        return check_remote_root(root or "/workspace")

    def layout(self, job: JobRow) -> control.RemoteLayout:
        if not job.remote_root:
            job.remote_root = self.discover_root()
        return control.remote_layout(job.remote_root, job.id)

    def prepare(self, job_id: str) -> None:
        root = self.discover_root()
        self._run(control.prepare_dirs_script(control.remote_layout(root, job_id)), "mkdir")

    # -- deploy -------------------------------------------------------------------------

    def deploy(self, job: JobRow, template: Template) -> None:
        layout = self.layout(job)
        if template.repo:
            self._run(
                control.git_clone_script(layout, template.repo, template.ref or "HEAD"),
                "git clone",
                timeout_seconds=600,
            )
            return
        workdir = template.resolve_workdir()
        if workdir is None:
            return
        # Secrets never travel, whatever the template's exclude list says.
        archive = control.pack_workdir(workdir, (*template.exclude, ".env", "*.pem"))
        self.runner.put_bytes(archive, layout.archive_path())
        self._run(
            control.unpack_archive_script(layout, layout.archive_path()), "unpacking the code"
        )

    def restore_checkpoint(self, job: JobRow, key_prefix: str) -> str:
        """Download the checkpoint under ``key_prefix`` (verified); return its remote path."""
        layout = self.layout(job)
        name = key_prefix.rstrip("/").rsplit("/", 1)[-1]
        store = self.deps.store
        manifest = store.get_bytes(key_prefix.rstrip("/") + "/" + MANIFEST).decode()
        items = []
        for line in manifest.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            key = key_prefix.rstrip("/") + "/" + entry["path"]
            items.append(
                control.DownloadItem(
                    url=store.presign_get(key, expires_seconds=3600),
                    remote_path=f"{layout.checkpoint_dir}/{name}/{entry['path']}",
                    sha256=entry["sha256"],
                )
            )
        if items:
            self._run(
                control.download_files_script(items),
                "restoring the checkpoint",
                timeout_seconds=1800,
            )
        return f"{layout.checkpoint_dir}/{name}"

    # -- run ----------------------------------------------------------------------------

    def _env(self, job: JobRow, template: Template) -> str:
        layout = self.layout(job)
        params = param_env(template, dict(job.params or {}))
        plain = {
            k[len("GPUBOT_PARAM_") :].lower(): v for k, v in params.items()
        }
        resume = (job.progress or {}).get("resume_from")
        return control.env_exports(layout, plain, resume)

    def start(self, job: JobRow, template: Template) -> StartResult:
        """Advance setup → run, detached and idempotent; never blocks on setup."""
        layout = self.layout(job)
        env = self._env(job, template)
        setup_commands = template.rendered_setup()
        if setup_commands:
            setup = parsing.parse_status(
                self._run(control.status_script(layout, stage="setup"), "setup status")
            )
            if setup.exit_code is None and not setup.running:
                script = env + control.setup_script(layout, setup_commands)
                self._run(
                    control.start_detached_script(layout, script, env, stage="setup"),
                    "starting setup",
                )
                return StartResult("setup")
            if setup.running:
                return StartResult("setup")
            if setup.exit_code != 0:
                tail = self._run(
                    control.tail_log_script(layout, 20, stage="setup"), "setup log"
                )
                message = parsing.diagnose(tail, setup.exit_code, False, stage="setup")
                return StartResult("failed", message or f"setup failed:\n{tail}")
        self._run(
            control.start_detached_script(layout, template.rendered_run(), env),
            "starting the job",
        )
        return StartResult("run")

    def status(self, job: JobRow) -> JobStatus:
        """The job's state in one round trip (``control.poll_script``): process state, exit
        code, progress, log tail, checkpoint-dir signature.

        Reads less when nothing changed since the previous poll (``job.progress["poll_seen"]``,
        written by :func:`merge_progress`): an unchanged log's tail is not re-read while the
        job runs (``tail_read`` False; the previous diagnosis is kept), an unchanged progress
        file is not re-read (``progress`` None: nothing advanced). A stopped job always gets
        its tail.

        Raises:
            RemoteCommandFailed: the poll script failed or printed no status.
            SSHConnectError: the link failed.
        """
        layout = self.layout(job)
        previous = job.progress or {}
        seen = previous.get("poll_seen") or {}
        nonce = secrets.token_hex(16)
        script = control.poll_script(
            layout,
            nonce=nonce,
            seen_log=_seen_pair(seen.get("log")),
            seen_progress=_seen_pair(seen.get("progress")),
        )
        out = self._run(script, "job status", max_output_bytes=control.POLL_MAX_OUTPUT_BYTES)
        try:
            poll = parsing.parse_poll(out, nonce)
        except ValueError as e:
            raise RemoteCommandFailed(f"job status printed no status: {e}", exit_status=0) from e
        raw = poll.status
        self.last_poll = poll
        vanished = not raw.running and raw.exit_code is None and raw.pid is not None
        if poll.tail is not None:
            tail = poll.tail
            diagnosis = parsing.diagnose(tail, raw.exit_code, raw.running)
            trainer_metrics = parsing.latest_trainer_metrics(tail)
        else:
            tail = ""
            diagnosis = previous.get("diagnosis")
            trainer_metrics = None
        return JobStatus(
            running=raw.running,
            exit_code=raw.exit_code,
            vanished=vanished,
            progress=raw.progress,
            trainer_metrics=trainer_metrics,
            diagnosis=diagnosis if isinstance(diagnosis, str) or diagnosis is None else None,
            log_tail=tail,
            disk_free_mb=raw.disk_free_mb,
            poll_seen={
                "log": list(poll.log_seen),
                "progress": list(poll.progress_seen),
                "checkpoints": poll.checkpoints_sig,
            },
            tail_read=poll.tail is not None,
        )

    def tail(self, job: JobRow, lines: int) -> str:
        return self._run(control.tail_log_script(self.layout(job), lines), "job log")

    def kill(self, job: JobRow) -> None:
        self._run(control.kill_script(self.layout(job), grace_seconds=3), "stopping the job")

    # -- checkpoints and results -----------------------------------------------------------

    def backup_checkpoints(self, job: JobRow, *, final: bool = False) -> str | None:
        """Upload the newest complete checkpoint if it is new; returns its key prefix.

        Not final and polled in this session with the checkpoint dir's signature unchanged
        since the previous (applied) poll: nothing appeared or completed, so the hashing
        listing is skipped and ``job.checkpoint_key`` returned."""
        layout = self.layout(job)
        sig = self.last_poll.checkpoints_sig if self.last_poll is not None else None
        previous_sig = ((job.progress or {}).get("poll_seen") or {}).get("checkpoints")
        if not final and sig is not None and sig == previous_sig:
            return job.checkpoint_key
        files = parsing.parse_checkpoint_listing(
            self._run(
                control.list_checkpoints_script(layout),
                "listing checkpoints",
                max_output_bytes=LISTING_MAX_OUTPUT_BYTES,
            )
        )
        newest = parsing.newest_complete_checkpoint(files, job_exited=final)
        if newest is None:
            return job.checkpoint_key
        prefix = f"jobs/{job.id}/checkpoints/{newest}/"
        if job.checkpoint_key == prefix:
            return prefix
        members = parsing.checkpoint_files(files, newest)
        entries = [
            {"path": _relative(f.path, newest), "size": f.size, "sha256": f.sha256}
            for f in members
        ]
        # A step whose result was lost (claim taken over, worker killed after the upload) is
        # re-run from the same stored state: what is already stored is not uploaded again.
        stored = {o.key: o for o in self.deps.store.list(prefix)}
        if self._manifest_matches(prefix, stored, entries):
            return prefix
        self._upload(
            [
                (f"{layout.checkpoint_dir}/{f.path}", prefix + e["path"], f.sha256)
                for f, e in zip(members, entries, strict=True)
                if not _stored_intact(stored.get(prefix + e["path"]), e)
            ]
        )
        self._verify_and_manifest(prefix, entries)
        return prefix

    def _manifest_matches(
        self, prefix: str, stored: dict[str, Any], entries: list[dict[str, Any]]
    ) -> bool:
        """True when ``prefix`` already holds a complete checkpoint with exactly ``entries``:
        its manifest lists the same paths, sizes and sha256 and every file is stored with that
        size and sha256. Anything else (no manifest, a different one, a file missing or
        different) is False: the caller uploads what is missing and rewrites the manifest."""
        if prefix + MANIFEST not in stored:
            return False
        try:
            body = self.deps.store.get_bytes(prefix + MANIFEST).decode()
            listed = [json.loads(line) for line in body.splitlines() if line.strip()]
        except (StorageError, ValueError):
            return False

        def key(e: dict[str, Any]) -> tuple[str, int, str]:
            return (str(e.get("path")), int(e.get("size", -1)), str(e.get("sha256")))

        if sorted(map(key, listed)) != sorted(map(key, entries)):
            return False
        return all(_stored_intact(stored.get(prefix + e["path"]), e) for e in entries)

    def collect_results(self, job: JobRow) -> list[dict[str, Any]]:
        """Upload every file under the results dir; return links with sizes and checksums."""
        layout = self.layout(job)
        listing = self._run(
            _list_files_script(layout.results_dir),
            "listing results",
            max_output_bytes=LISTING_MAX_OUTPUT_BYTES,
        )
        files = parsing.parse_checkpoint_listing(listing)
        prefix = f"jobs/{job.id}/results/"
        self._upload(
            [(f"{layout.results_dir}/{f.path}", prefix + f.path, f.sha256) for f in files]
        )
        entries = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files]
        self._verify_and_manifest(prefix, entries)
        store = self.deps.store
        return [
            {
                "name": e["path"],
                "key": prefix + e["path"],
                "size_bytes": e["size"],
                "sha256": e["sha256"],
                "url": store.presign_get(
                    prefix + e["path"], expires_seconds=RESULT_LINK_TTL_SECONDS
                ),
                "location": store.url_for_display(prefix + e["path"]),
            }
            for e in entries
        ]

    def _upload(self, items: list[tuple[str, str, str]]) -> None:
        if not items:
            return
        store = self.deps.store
        uploads = [
            control.UploadItem(
                remote_path=path,
                url=store.presign_put(key, expires_seconds=3600, sha256=sha),
                sha256=sha,
            )
            for path, key, sha in items
        ]
        self._run(control.upload_files_script(uploads), "uploading files", timeout_seconds=1800)

    def _verify_and_manifest(self, prefix: str, entries: list[dict[str, Any]]) -> None:
        """Check sizes in the store, then write the manifest (its presence marks completeness)."""
        store = self.deps.store
        stored = {o.key: o for o in store.list(prefix)}
        for entry in entries:
            obj = stored.get(prefix + entry["path"])
            if obj is None or obj.size_bytes != entry["size"]:
                raise StorageError(f"upload of {prefix}{entry['path']} did not arrive intact")
        body = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
        store.put_bytes(prefix + MANIFEST, body)


def _seen_pair(value: Any) -> tuple[int, int] | None:
    """A stored ``[size, mtime]`` back as a tuple; None when absent or malformed."""
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    return None


def _stored_intact(obj: Any, entry: dict[str, Any]) -> bool:
    """The stored object (a StoredObject or None) has the entry's size and sha256."""
    return (
        obj is not None
        and obj.size_bytes == entry["size"]
        and obj.sha256 is not None
        and obj.sha256 == entry["sha256"]
    )


def _relative(path: str, name: str) -> str:
    parts = path.strip("/").split("/", 1)
    return parts[1] if len(parts) == 2 and parts[0] == name else parts[0]


def _list_files_script(directory: str) -> str:
    layout = control.RemoteLayout(root="/", job_id="x")
    script = control.list_checkpoints_script(layout)
    return script.replace(control.q(layout.checkpoint_dir), control.q(directory), 1)


# -- progress bookkeeping (pure helpers over the stored JSON) ----------------------------------


def merge_progress(job: JobRow, status: JobStatus, now: datetime) -> dict[str, Any]:
    progress = dict(job.progress or {})
    metrics = dict(progress.get("metrics") or {})
    if status.trainer_metrics:
        metrics.update(status.trainer_metrics)
    p = status.progress
    if p is not None:
        metrics.update(p.metrics)
        if p.step is not None:
            if progress.get("step") != p.step:
                progress["last_advance_at"] = now.isoformat()
                progress["polls_with_advance"] = int(progress.get("polls_with_advance", 0)) + 1
            progress["step"] = p.step
            point = [p.step, now.isoformat()]
            if "first" not in progress or (progress.get("first") or [0])[0] > p.step:
                progress["first"] = point
            progress["latest"] = point
        if p.total_steps is not None:
            progress["total_steps"] = p.total_steps
        if p.epoch is not None:
            progress["epoch"] = p.epoch
    progress["metrics"] = metrics
    progress["diagnosis"] = status.diagnosis
    progress["running"] = status.running
    if status.poll_seen is not None:
        progress["poll_seen"] = status.poll_seen
    return progress


def merge_history(job: JobRow, status: JobStatus) -> dict[str, Any]:
    history = dict(job.metrics_history or {})
    points = list(history.get("points") or [])
    p = status.progress
    loss = None
    if p is not None:
        loss = p.metrics.get("loss", p.metrics.get("train_loss"))
    if loss is None and status.trainer_metrics:
        loss = status.trainer_metrics.get("loss")
    if p is not None and p.step is not None and loss is not None:
        if not points or points[-1][0] != p.step:
            points.append([p.step, float(loss)])
    if len(points) > MAX_HISTORY_POINTS:
        points = points[:: max(2, len(points) // MAX_HISTORY_POINTS)]
    history["points"] = points
    return history


def failure_reason(status: JobStatus) -> str:
    if status.diagnosis:
        return status.diagnosis
    last = "\n".join(status.log_tail.strip().splitlines()[-10:])
    return f"the job exited with status {status.exit_code}. Last log lines:\n{last}"

