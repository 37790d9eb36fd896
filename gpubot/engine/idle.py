"""Idle and stuck detection (in the spirit of dstack's utilization policy).

An instance is *idle* while its GPU utilisation is at or below the policy's threshold (a
missing sample is never idle, see :func:`gpu_sample_idle`), the
job's progress does not advance and (for jobs) no job process runs — or, for an interactive
rental, nobody works on it. Idle for ``window_minutes`` → a warning with Keep alive / Destroy
buttons; still idle ``grace_minutes`` later → destroyed. A running job whose GPU idles and
whose progress has not advanced for ``stuck_window_minutes`` is *stuck*: warned, then stopped
after the grace period. ``/gpu keep`` (or the button) sets ``keep_until`` and postpones both.

This module decides and writes nothing: :func:`decide` returns an :class:`IdleDecision` that the
running step applies through its ``StepResult`` (the changes with the job's guarded update,
the warning as an outbox reply in the same transaction).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.render import events as render
from gpubot.templates import IdlePolicy

if TYPE_CHECKING:
    from gpubot.engine.remote_job import JobStatus


def policy_for(deps: EngineDeps, job: JobRow) -> IdlePolicy:
    """The job's template idle policy, else the bot's ``[idle]`` policy."""
    template = deps.config.templates.get(job.template)
    if template is not None and template.idle is not None:
        return template.idle
    return deps.config.idle


def gpu_sample_idle(util_pct: float | None, threshold_pct: float) -> bool:
    """True only for a real sample at or below ``threshold_pct``.

    None means the host sent no sample (null ``gpu_util``, or the 0/0 util/temperature pair the
    adapter maps to None): unknown is never idle, so a box whose telemetry is missing is not
    reaped or called stuck on that alone.
    """
    return util_pct is not None and util_pct <= threshold_pct


@dataclass(frozen=True)
class IdleDecision:
    """What one poll of a running instance decided. At most one of ``warning`` and
    ``stop_reason`` is set; both None means "nothing to do but store ``changes``"."""

    changes: Mapping[str, Any] = field(default_factory=dict)
    """Job columns to store: ``idle_since`` (None once busy again) and ``idle_warned_at``
    (when the window elapsed). Only these keys; empty when nothing changed."""
    warning: str | None = None
    """mrkdwn warning to post in the job's thread (the window has just elapsed)."""
    stop_reason: str | None = None
    """Why to tear the job down now (the grace after the warning is over)."""


def decide(
    deps: EngineDeps, job: JobRow, instance: InstanceRow, status: JobStatus | None
) -> IdleDecision:
    """Apply the idle/stuck policy to one poll (``status`` None for interactive rentals).

    Busy (GPU above the threshold or without a sample, progress advancing, or kept alive)
    clears ``idle_since``/``idle_warned_at``. Idle for the window: ``idle_warned_at`` is set
    to when the window elapsed and ``warning`` is returned. Still idle ``grace_minutes``
    after that: ``stop_reason``. Reads ``deps.clock`` and the policy only; no I/O.
    """
    now = deps.clock()
    policy = policy_for(deps, job)
    changes, warn_now = _idle_changes(job, instance, status, policy, now)
    if warn_now:
        text = render.idle_warning(
            job_id=job.id,
            interactive=job.kind == "interactive",
            grace_minutes=policy.grace_minutes,
        )
        return IdleDecision(changes=changes, warning=text)
    return IdleDecision(changes=changes, stop_reason=_stop_reason(job, changes, policy, now))


def _idle_changes(
    job: JobRow,
    instance: InstanceRow,
    status: JobStatus | None,
    policy: IdlePolicy,
    now: datetime,
) -> tuple[dict[str, Any], bool]:
    """New ``idle_since`` (None when busy) and, when due, ``idle_warned_at``; True as the
    second item when the window has just elapsed (warn now)."""
    gpu_idle = gpu_sample_idle(instance.gpu_util_pct, policy.gpu_util_threshold_pct)
    advancing = False
    if status is not None:
        last_advance = (job.progress or {}).get("last_advance_at")
        if status.progress is not None and status.progress.step is not None:
            advancing = status.progress.step != (job.progress or {}).get("step")
        elif last_advance is None:
            advancing = False
    busy = not gpu_idle or advancing
    if job.keep_until is not None and job.keep_until > now:
        busy = True
    changes: dict[str, Any] = {}
    if busy:
        if job.idle_since is not None or job.idle_warned_at is not None:
            changes.update(idle_since=None, idle_warned_at=None)
        return changes, False
    since = job.idle_since
    if since is None:
        # The previous poll saw it busy (or kept); idle began after that poll, or when the
        # keep expired. Counting from there keeps the reaper within one tick of its window.
        since = job.last_processed_at or now
        if job.keep_until is not None and job.keep_until <= now:
            since = max(since, job.keep_until)
        since = min(since, now)
        changes["idle_since"] = since
    window = timedelta(
        minutes=policy.window_minutes if job.kind == "interactive" else policy.stuck_window_minutes
    )
    if job.idle_warned_at is None and now - since >= window:
        # The grace runs from when the window elapsed, not from this (later) poll.
        changes["idle_warned_at"] = since + window
        return changes, True
    return changes, False


def _stop_reason(
    job: JobRow, changes: Mapping[str, Any], policy: IdlePolicy, now: datetime
) -> str | None:
    """Why to stop now (grace over after a warning), else None."""
    warned_at = changes.get("idle_warned_at", job.idle_warned_at)
    if warned_at is None or "idle_since" in changes and changes["idle_since"] is None:
        return None
    if now - warned_at >= timedelta(minutes=policy.grace_minutes):
        if job.kind == "interactive":
            return (
                f"idle for {policy.window_minutes + policy.grace_minutes} minutes "
                f"(GPU ≤ {policy.gpu_util_threshold_pct:g} %); destroyed by the idle reaper"
            )
        return (
            "stuck: the job's process runs but its GPU is idle and progress has not advanced "
            f"for {policy.stuck_window_minutes + policy.grace_minutes} minutes"
        )
    return None
