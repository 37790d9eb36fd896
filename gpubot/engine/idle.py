"""Idle and stuck detection (in the spirit of dstack's utilization policy).

An instance is *idle* while its GPU utilisation is at or below the policy's threshold (a
missing sample is never idle, see :func:`gpu_sample_idle`), the job's progress does not
advance and (for jobs) no job process runs — or, for an interactive rental, nobody works on
it. Idle for ``window_minutes`` (``unused_window_minutes`` for a rental idle since it became
ready: nobody has used it) → a warning with Keep alive / Destroy buttons; still idle
``grace_minutes`` later → destroyed.

A running job is *stuck* when three signals agree, each poll since ``idle_since``: its process
is alive, every GPU sample is idle (consecutive: one busy or missing sample resets the count)
and its progress step has not advanced. It is warned once that has lasted the job's stuck
window (:func:`stuck_window`: ``stuck_window_minutes``, 5 by default, or ``stuck_cadence_factor``
times the job's own observed seconds per progress step when that is longer), and stopped after
a short grace proportional to that window (:func:`stuck_grace`, at least one minute). A job in
a long quiet phase whose GPU is busy, or whose telemetry is missing, is never stuck.
``/gpu keep`` (or the button) sets ``keep_until`` and postpones both.

This module decides and writes nothing: :func:`decide` returns an :class:`IdleDecision` that the
running step applies through its ``StepResult`` (the changes with the job's guarded update,
the warning as an outbox reply in the same transaction). :func:`next_decision_at` says when the
next decision falls due if nothing changes (for drivers that skip quiet ticks).
"""

from __future__ import annotations

import math
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
            grace_minutes=math.ceil(grace_of(job, policy).total_seconds() / 60),
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
    window = window_of(job, policy, since=since)
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
    grace = grace_of(job, policy)
    if now - warned_at < grace:
        return None
    total_minutes = _minutes_text(window_of(job, policy) + grace)
    if job.kind == "interactive":
        return (
            f"idle for {total_minutes} minutes "
            f"(GPU ≤ {policy.gpu_util_threshold_pct:g} %); destroyed by the idle reaper"
        )
    return (
        "stuck: the job's process runs but its GPU is idle and progress has not advanced "
        f"for {total_minutes} minutes"
    )


def _minutes_text(span: timedelta) -> str:
    """``span`` in minutes for people: whole minutes as an integer, else one decimal."""
    minutes = span.total_seconds() / 60
    return f"{minutes:.0f}" if abs(minutes - round(minutes)) < 0.05 else f"{minutes:.1f}"


def seconds_per_step(progress: Mapping[str, Any] | None) -> float | None:
    """The job's observed progress cadence: seconds per progress step between the first step
    this job was seen at (``progress["first"]``, ``[step, iso time]``) and the poll that saw
    the newest advance (``last_advance_at``), over the steps advanced in between. None when
    fewer than one step was seen advancing or the stored values are unreadable. Pure."""
    if not progress:
        return None
    first, step, last = progress.get("first"), progress.get("step"), progress.get(
        "last_advance_at"
    )
    try:
        first_step, first_at = int(first[0]), datetime.fromisoformat(str(first[1]))
        steps = int(step) - first_step
        last_at = datetime.fromisoformat(str(last))
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    if steps <= 0:
        return None
    seconds = (last_at - first_at).total_seconds()
    return seconds / steps if seconds > 0 else None


def stuck_window(policy: IdlePolicy, progress: Mapping[str, Any] | None) -> timedelta:
    """How long a running job's GPU must idle with no progress before it is warned as stuck:
    ``stuck_window_minutes``, or ``stuck_cadence_factor`` × :func:`seconds_per_step` when
    that is longer. Pure."""
    floor = timedelta(minutes=policy.stuck_window_minutes)
    cadence = seconds_per_step(progress)
    if cadence is None:
        return floor
    return max(floor, timedelta(seconds=policy.stuck_cadence_factor * cadence))


def stuck_grace(policy: IdlePolicy, window: timedelta) -> timedelta:
    """The Keep-alive chance after a stuck warning: ``stuck_grace_fraction`` of ``window``,
    at least one minute, in whole seconds. Pure."""
    seconds = max(60.0, policy.stuck_grace_fraction * window.total_seconds())
    return timedelta(seconds=math.ceil(seconds))


def window_of(job: JobRow, policy: IdlePolicy, *, since: datetime | None = None) -> timedelta:
    """The idle window (interactive rentals) or the job's stuck window.

    An interactive rental idle since it became ready (``idle_since`` not after
    ``step_started_at``, the start of ``running``: no busy sample, no Keep alive since) has
    not been used yet: its window is ``unused_window_minutes`` when that is shorter. ``since``
    stands for ``job.idle_since`` when given (the poll that starts the idle period)."""
    if job.kind == "interactive":
        minutes = policy.window_minutes
        if unused_since_ready(job, since=since):
            minutes = min(minutes, policy.unused_window_minutes)
        return timedelta(minutes=minutes)
    return stuck_window(policy, job.progress)


def unused_since_ready(job: JobRow, *, since: datetime | None = None) -> bool:
    """True when the rental has been idle since it entered ``running`` (every poll since saw
    a real idle GPU sample and no Keep alive): a busy or missing sample clears ``idle_since``
    and the next idle one starts it later, after ``step_started_at``. ``since`` stands for
    ``job.idle_since`` when given."""
    idle_since = since if since is not None else job.idle_since
    return (
        idle_since is not None
        and job.step_started_at is not None
        and job.state == "running"
        and idle_since <= job.step_started_at
    )


def grace_of(job: JobRow, policy: IdlePolicy) -> timedelta:
    """The grace after the warning: ``grace_minutes`` (interactive), else :func:`stuck_grace`."""
    if job.kind == "interactive":
        return timedelta(minutes=policy.grace_minutes)
    return stuck_grace(policy, window_of(job, policy))


def next_decision_at(deps: EngineDeps, job: JobRow) -> datetime | None:
    """When :func:`decide` would next warn or stop ``job`` if every poll until then saw what
    the last one saw (idle, no progress): the end of the window after ``idle_since``, or of
    the grace after ``idle_warned_at``. None while the job is not idle (nothing is due until
    something changes). Reads the stored job and the policy only."""
    policy = policy_for(deps, job)
    if job.idle_warned_at is not None:
        return job.idle_warned_at + grace_of(job, policy)
    if job.idle_since is not None:
        return job.idle_since + window_of(job, policy)
    return None
