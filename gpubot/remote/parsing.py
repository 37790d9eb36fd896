"""Pure parsers for what the control scripts print and what jobs write. Stdlib only.

Everything here takes text captured from an instance and returns plain data; nothing raises
on odd job output except :func:`parse_status` (whose input our own script produces).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "CheckpointFile",
    "Progress",
    "RemoteStatus",
    "checkpoint_files",
    "checkpoint_name",
    "diagnose",
    "newest_complete_checkpoint",
    "Poll",
    "parse_checkpoint_listing",
    "parse_poll",
    "parse_progress",
    "parse_status",
    "parse_trainer_log",
    "latest_trainer_metrics",
]


@dataclass(frozen=True, slots=True)
class Progress:
    """A job's progress report (the job contract's progress JSON)."""

    step: int | None
    total_steps: int | None
    epoch: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    at: datetime | None = None
    """The report's timestamp (UTC-aware; naive timestamps are taken as UTC)."""

    @property
    def fraction(self) -> float | None:
        """step / total_steps in [0, 1], or None when either is unknown."""
        if self.step is None or not self.total_steps:
            return None
        return max(0.0, min(1.0, self.step / self.total_steps))


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    """One stage's state as printed by ``control.status_script``."""

    stage: str
    running: bool
    pid: int | None
    exit_code: int | None
    log_size: int
    disk_free_mb: int | None
    oom_hint: str | None
    dmesg_readable: bool
    cancelled: bool
    now: int | None
    progress_text: str | None
    progress: Progress | None

    @property
    def gone(self) -> bool:
        """Started, not running, and no exit code: died without a word."""
        return self.pid is not None and not self.running and self.exit_code is None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _as_int(value: Any) -> int | None:
    f = _as_float(value)
    return int(f) if f is not None else None


def parse_status(text: str) -> RemoteStatus:
    """Parse the last JSON line of ``status_script`` output.

    Raises:
        ValueError: no JSON object line was found (the script did not run to the end).
    """
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or "running" not in data:
            continue
        progress_text = data.get("progress")
        if not isinstance(progress_text, str):
            progress_text = None
        oom = data.get("oom_hint")
        return RemoteStatus(
            stage=str(data.get("stage", "job")),
            running=data.get("running") is True,
            pid=_as_int(data.get("pid")),
            exit_code=_as_int(data.get("exit_code")),
            log_size=_as_int(data.get("log_size")) or 0,
            disk_free_mb=_as_int(data.get("disk_free_mb")),
            oom_hint=oom if isinstance(oom, str) and oom else None,
            dmesg_readable=data.get("dmesg_readable") is True,
            cancelled=data.get("cancelled") is True,
            now=_as_int(data.get("now")),
            progress_text=progress_text,
            progress=parse_progress(progress_text) if progress_text is not None else None,
        )
    raise ValueError("no status line in the remote output")


@dataclass(frozen=True, slots=True)
class Poll:
    """One running-job poll as printed by ``control.poll_script``."""

    status: RemoteStatus
    """Process state, exit code, progress (None when not re-read or absent), disk, cancel."""
    log_seen: tuple[int, int]
    """``(size, mtime)`` of the log now (``(0, 0)`` when absent): pass back as ``seen_log``."""
    progress_seen: tuple[int, int]
    """``(size, mtime)`` of the progress file now: pass back as ``seen_progress``."""
    tail: str | None
    """The log tail, or None when it was skipped because the log had not changed."""
    progress_included: bool
    """False when the progress file was unchanged (or absent) and so not read."""
    checkpoints_sig: str | None
    """Changes whenever a checkpoint appears, grows or completes (None when not printed)."""


def parse_poll(text: str, nonce: str) -> Poll:
    """Split ``poll_script`` output at its marker: the log tail before, the status after.

    Only the *last* marker counts, and the status must be the JSON line right after it, so
    nothing the job printed in its log can pose as the status.

    Raises:
        ValueError: the marker or the status line is missing (the script did not run to the
            end, or the output was cut).
    """
    marker = "\n===gpubot-status-" + nonce + "===\n"
    cut = text.rfind(marker)
    if cut < 0:
        raise ValueError("no poll marker in the remote output")
    after = text[cut + len(marker):].strip()
    if "\n" in after:
        raise ValueError("unexpected output after the poll status line")
    status = parse_status(after)
    try:
        data = json.loads(after)
    except json.JSONDecodeError as e:  # parse_status accepted it, so this cannot happen
        raise ValueError("unparseable poll status") from e
    tail_included = data.get("tail_included") is True
    return Poll(
        status=status,
        log_seen=(max(0, status.log_size), max(0, _as_int(data.get("log_mtime")) or 0)),
        progress_seen=(
            max(0, _as_int(data.get("progress_size")) or 0),
            max(0, _as_int(data.get("progress_mtime")) or 0),
        ),
        tail=text[:cut] if tail_included else None,
        progress_included=data.get("progress_included") is True,
        checkpoints_sig=sig if isinstance(sig := data.get("checkpoints_sig"), str) and sig
        else None,
    )


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _metrics(raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, float] = {}
    for key, value in raw.items():
        f = _as_float(value)
        if isinstance(key, str) and f is not None:
            out[key] = f
    return out


def parse_progress(text: str | None) -> Progress | None:
    """Parse the progress file (``{"epoch", "step", "total_steps"?, "metrics", "timestamp"}``).

    Tolerant: returns None for empty, partial or non-object content (a job mid-write);
    non-numeric metrics are dropped; a missing field is None. A report needs at least one of
    ``step``, ``epoch`` or ``metrics``.
    """
    if not text or not text.strip():
        return None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    step = _as_int(data.get("step"))
    epoch = _as_float(data.get("epoch"))
    metrics = _metrics(data.get("metrics"))
    if step is None and epoch is None and not metrics:
        return None
    return Progress(
        step=step,
        total_steps=_as_int(data.get("total_steps")),
        epoch=epoch,
        metrics=metrics,
        at=_parse_time(data.get("timestamp")),
    )


_TRAINER_LINE_RE = re.compile(r"\{'[A-Za-z_][^{}]*\}")
_MAX_TRAINER_LINE = 4000


def parse_trainer_log(log_tail: str) -> list[dict[str, float]]:
    """Every Hugging Face Trainer metrics dict (``{'loss': 0.53, 'epoch': 0.5}``) in order.

    Lines are also split on carriage returns (tqdm bars). Each candidate is parsed with
    ``ast.literal_eval`` (never ``eval``); candidates that are not flat dicts of numbers
    (strings are dropped, e.g. ``'train_runtime'`` formatted values) are skipped.
    """
    found: list[dict[str, float]] = []
    for line in re.split(r"[\r\n]+", log_tail):
        if "{'" not in line:
            continue
        for match in _TRAINER_LINE_RE.finditer(line):
            candidate = match.group(0)
            if len(candidate) > _MAX_TRAINER_LINE:
                continue
            try:
                value = ast.literal_eval(candidate)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if not isinstance(value, dict):
                continue
            metrics = _metrics(value)
            if metrics:
                found.append(metrics)
    return found


def latest_trainer_metrics(log_tail: str) -> dict[str, float] | None:
    """The newest Trainer metrics in ``log_tail``, merged so a key's newest value wins.

    Training lines (``loss``) and evaluation lines (``eval_loss``) alternate in real logs;
    merging keeps both. None when there are no such lines.
    """
    merged: dict[str, float] = {}
    history = parse_trainer_log(log_tail)
    if not history:
        return None
    for metrics in history:
        merged.update(metrics)
    return merged


# -- diagnosis --------------------------------------------------------------------------------

# Searched over untrusted log text (up to control.LOG_TAIL_MAX_BYTES of one line): every
# repetition between two literals is bounded ({0,N}), never ``.*``, so a hostile line cannot
# make a search quadratic.
_PITFALLS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"CUDA out of memory|torch\.cuda\.OutOfMemoryError|CUDA error: out of memory|"
            r"CUBLAS_STATUS_ALLOC_FAILED|OutOfMemoryError: CUDA",
            re.I,
        ),
        "CUDA out of memory: the model or batch does not fit in GPU memory. Lower the batch "
        "size (or use gradient accumulation / gradient checkpointing), or pick a GPU with "
        "more VRAM (gpu_ram=).",
    ),
    (
        re.compile(r"No space left on device|\[Errno 28\]|disk quota exceeded", re.I),
        "Disk full (No space left on device): rent with a larger disk= or write less "
        "(fewer checkpoints kept, no caches in the workspace).",
    ),
    (
        re.compile(
            r"FlashAttention only supports Ampere|flash.?attn.{0,200}?(compute capability|sm_?8)|"
            r"compute capability.{0,40}(below|lower|less than).{0,10}8\.0",
            re.I,
        ),
        "The GPU's compute capability is below 8.0, which flash-attn needs (Ampere or newer: "
        "RTX 30xx/40xx, A100, H100). Pick one of those GPUs or disable flash attention.",
    ),
    (
        re.compile(
            r"CUDA is not available|cuda\.is_available\(\)\W*(is |returned )?False|"
            r"Found no NVIDIA driver|no CUDA-capable device|NVIDIA-SMI has failed|"
            r"CUDA driver version is insufficient|Torch not compiled with CUDA enabled",
            re.I,
        ),
        "CUDA is not available on the instance (no driver/GPU visible, or a CPU-only "
        "PyTorch build). Use a CUDA image matching the host driver (cuda_vers>=) and install "
        "torch from the CUDA wheel index.",
    ),
)


def _last_lines(text: str, n: int) -> str:
    lines = [ln for ln in text.rstrip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def diagnose(
    log_tail: str, exit_code: int | None, running: bool, *, stage: str = "job"
) -> str | None:
    """A clear, user-facing explanation of a known pitfall, or None when nothing is wrong.

    Checks, in order: known failures in ``log_tail`` (CUDA out of memory, disk full, GPU
    compute capability below 8.0 for flash-attn, CUDA not available) — reported even while
    the job still runs; then, for a stopped process: exit 137 / a final ``Killed`` line
    (SIGKILL, usually the kernel's OOM killer: host RAM), gone without an exit code, a
    failed setup (``stage="setup"``, with the log's last lines) or any other non-zero exit
    (with the last lines). Exit code 0 without a known pitfall in the log gives None.
    """
    for pattern, message in _PITFALLS:
        if pattern.search(log_tail):
            return message
    if running:
        return None
    last = _last_lines(log_tail, 10)
    if exit_code == 137 or (exit_code not in (None, 0) and last.endswith("Killed")):
        return (
            f"The process was killed (exit {exit_code}, SIGKILL), most likely by the kernel's "
            "OOM killer: the job ran out of host RAM. Lower dataloader workers/batch size or "
            "pick an offer with more RAM."
        )
    if exit_code is None:
        return (
            "The process is gone without recording an exit code (killed with SIGKILL, OOM "
            "killer, or the instance restarted)."
            + (f" Last log lines:\n{last}" if last else "")
        )
    if exit_code == 0:
        return None
    if stage == "setup":
        return f"Setup failed (exit {exit_code})." + (
            f" Last lines of the setup log:\n{last}" if last else ""
        )
    return f"The job exited with status {exit_code}." + (
        f" Last log lines:\n{last}" if last else ""
    )


# -- checkpoints ------------------------------------------------------------------------------

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)(\..+)?$")


@dataclass(frozen=True, slots=True)
class CheckpointFile:
    """One file under the checkpoint dir (``path`` relative to it, ``/``-separated)."""

    path: str
    size: int
    sha256: str
    mtime: int


def parse_checkpoint_listing(text: str) -> list[CheckpointFile]:
    """Parse ``list_checkpoints_script`` output; malformed lines are skipped."""
    out: list[CheckpointFile] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
            item = CheckpointFile(
                path=str(data["path"]),
                size=int(data["size"]),
                sha256=str(data["sha256"]),
                mtime=int(data["mtime"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if re.fullmatch(r"[0-9a-f]{64}", item.sha256) and item.path:
            out.append(item)
    return sorted(out, key=lambda f: f.path)


def checkpoint_name(path: str) -> tuple[str, int, bool] | None:
    """``(name, N, is_directory)`` when ``path`` belongs to a checkpoint, else None.

    ``checkpoint-300/model.bin`` → ``("checkpoint-300", 300, True)``;
    ``checkpoint-300.npz`` → ``("checkpoint-300.npz", 300, False)``.
    """
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if not parts:
        return None
    m = _CHECKPOINT_RE.match(parts[0])
    if not m:
        return None
    if len(parts) > 1:
        if m.group(2):  # "checkpoint-3.tmp/x": not a checkpoint directory
            return None
        return parts[0], int(m.group(1)), True
    return parts[0], int(m.group(1)), False


def newest_complete_checkpoint(
    files: Iterable[CheckpointFile | str], *, job_exited: bool = False
) -> str | None:
    """The name of the newest complete checkpoint, or None.

    Rule: a checkpoint is a directory ``checkpoint-<N>`` (N an integer) directly under the
    checkpoint dir, or a single file ``checkpoint-<N>.<ext>`` there. It is *complete* when
    (a) the directory contains a ``.complete`` marker file, or (b) a checkpoint with a larger
    N exists (the job moved on, so it finished writing this one), or (c) the job has exited
    (``job_exited=True``). Single-file checkpoints count as directories without a marker.
    Among complete checkpoints the largest N wins (ties: the directory). Anything else under
    the checkpoint dir (temp dirs such as ``.tmp-checkpoint-5``, logs) is ignored.
    """
    found: dict[str, tuple[int, bool]] = {}
    marked: set[str] = set()
    for f in files:
        path = f.path if isinstance(f, CheckpointFile) else f
        parsed = checkpoint_name(path)
        if parsed is None:
            continue
        name, n, is_dir = parsed
        found[name] = (n, is_dir)
        if is_dir and path.strip("/").split("/")[1:] == [".complete"]:
            marked.add(name)
    if not found:
        return None
    top = max(n for n, _ in found.values())
    complete = [
        (n, is_dir, name)
        for name, (n, is_dir) in found.items()
        if name in marked or n < top or job_exited
    ]
    if not complete:
        return None
    return max(complete)[2]


def checkpoint_files(files: Iterable[CheckpointFile], name: str) -> list[CheckpointFile]:
    """The files making up checkpoint ``name`` (the file itself, or everything in the dir)."""
    out = []
    for f in files:
        parsed = checkpoint_name(f.path)
        if parsed is not None and parsed[0] == name:
            out.append(f)
    return sorted(out, key=lambda f: f.path)
