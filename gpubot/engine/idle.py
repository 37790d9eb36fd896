"""Idle and stuck detection (in the spirit of dstack's utilization policy).

An instance is *idle* while its GPU utilisation is at or below the policy's threshold (a
missing sample is never idle, see :func:`gpu_sample_idle`), the
job's progress does not advance and (for jobs) no job process runs — or, for an interactive
rental, nobody works on it. Idle for ``window_minutes`` → a warning with Keep alive / Destroy
buttons; still idle ``grace_minutes`` later → destroyed. A running job whose GPU idles and
whose progress has not advanced for ``stuck_window_minutes`` is *stuck*: warned, then stopped
after the grace period. ``/gpu keep`` (or the button) sets ``keep_until`` and postpones both.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.notify import outbox
from gpubot.templates import IdlePolicy

if TYPE_CHECKING:
    from gpubot.engine.remote_job import JobStatus


def policy_for(deps: EngineDeps, job: JobRow) -> IdlePolicy:
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


def idle_changes(
    deps: EngineDeps, job: JobRow, instance: InstanceRow, status: JobStatus | None
) -> dict[str, Any]:
    """New ``idle_since`` (None when busy) and, when due, ``idle_warned_at``."""
    now = deps.clock()
    policy = policy_for(deps, job)
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
        return changes
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
        changes["_warn"] = True
    return changes


def stop_reason(deps: EngineDeps, job: JobRow, changes: dict[str, Any]) -> str | None:
    """Why to stop now (grace over after a warning), else None. Consumes the ``_warn`` flag."""
    now = deps.clock()
    policy = policy_for(deps, job)
    warned_at = changes.get("idle_warned_at", job.idle_warned_at)
    if changes.pop("_warn", False):
        _warn(deps, job, policy)
        return None
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


def _warn(deps: EngineDeps, job: JobRow, policy: IdlePolicy) -> None:
    from gpubot.db.engine import session_scope
    from gpubot.render.blocks import idle_warning_blocks

    what = "is idle" if job.kind == "interactive" else "looks stuck (GPU idle, no progress)"
    text = (
        f":hourglass: {job.id} {what}. It will be destroyed in {policy.grace_minutes} min "
        f"unless kept: `/gpu keep {job.id} 2`."
    )
    with session_scope(deps.sessions) as session:
        outbox.reply(
            session,
            channel=job.channel,
            thread_key=job.id,
            text=text,
            blocks=idle_warning_blocks(job.id, text),
            job_id=job.id,
        )

