"""Pure lifecycle rules: deadlines, what an observation means for a job, ETA. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from gpubot.models import InstanceObservation, JobState, ProviderStatus

BOOT_DEADLINE = timedelta(minutes=15)
"""A rental not running with SSH by then is given up (vast: stuck in loading / scheduling).
Also how long a job that never ran waits for an offer before it fails (nothing bills)."""
RESUME_OFFER_DEADLINE = timedelta(hours=6)
"""How long a job that has run before (outbid, or its host lost) waits for a replacement
offer within its approved price before it fails. Nothing bills while it waits, and failing
would throw away the spend behind its checkpoints."""
OFFER_RETRY_MAX = timedelta(minutes=5)
"""The longest pause between two searches of a job waiting for an offer (see
:func:`offer_retry_after`)."""
PRICE_APPROVAL_DEADLINE = timedelta(hours=1)
"""How long a job that never ran waits when offers exist only above its approved price (its
thread asks the requester to raise it) before it fails."""
CONNECT_DEADLINE = timedelta(minutes=5)
"""SSH must accept us within this after the instance reports running."""
SETUP_DEADLINE = timedelta(hours=1)
DESTROY_RETRY_INTERVAL = timedelta(seconds=30)
"""vast.ai destroys asynchronously; we re-ask at this interval until the row is gone."""
CHECKPOINT_POLL_INTERVAL = timedelta(seconds=30)

FAST_STATES = frozenset(
    {
        JobState.QUEUED,
        JobState.RENTING,
        JobState.RE_RENTING,
        JobState.CONNECTING,
        JobState.DEPLOYING,
        JobState.RESTORING,
        JobState.COLLECTING,
        JobState.INTERRUPTED,
    }
)
"""States whose next step can run at once (no waiting on the outside world)."""


class InstanceVerdict(StrEnum):
    """What the provider's view of our instance means for the job."""

    PENDING = "pending"
    READY = "ready"
    LOST = "lost"
    """Outbid, offline, failed or vanished: the job must move to another instance."""
    STOPPED = "stopped"


def instance_verdict(obs: InstanceObservation | None, *, listed_ok: bool) -> InstanceVerdict:
    """Classify ``obs`` (None = not in a *successful* listing).

    A failed listing is never evidence that the instance is gone: callers pass
    ``listed_ok=False`` and get PENDING.
    """
    if obs is None:
        return InstanceVerdict.LOST if listed_ok else InstanceVerdict.PENDING
    match obs.status:
        case ProviderStatus.RUNNING:
            return InstanceVerdict.READY if obs.ssh_ready else InstanceVerdict.PENDING
        case ProviderStatus.PROVISIONING | ProviderStatus.UNKNOWN:
            return InstanceVerdict.PENDING
        case ProviderStatus.OUTBID | ProviderStatus.OFFLINE | ProviderStatus.FAILED:
            return InstanceVerdict.LOST
        case ProviderStatus.EXITED:
            return InstanceVerdict.LOST
        case ProviderStatus.STOPPED:
            return InstanceVerdict.STOPPED
    return InstanceVerdict.PENDING


@dataclass(frozen=True, slots=True)
class ProgressPoint:
    step: int
    at: datetime


def estimate_eta_seconds(
    first: ProgressPoint | None, latest: ProgressPoint | None, total_steps: int | None
) -> float | None:
    """Seconds left at the average rate between ``first`` and ``latest``; None if unknown."""
    if first is None or latest is None or not total_steps:
        return None
    steps = latest.step - first.step
    seconds = (latest.at - first.at).total_seconds()
    if steps <= 0 or seconds <= 0:
        return None
    return max(0.0, (total_steps - latest.step) * seconds / steps)


def offer_retry_after(waited: timedelta, tick: timedelta) -> timedelta:
    """How long a job that has waited ``waited`` for an offer pauses before its next search.
    Pure.

    A tenth of the wait so far, at least one ``tick`` and at most :data:`OFFER_RETRY_MAX`: a
    market that frees up soon is seen within a tick or two, and a job waiting hours (nothing
    bills meanwhile) searches every 5 minutes, not every tick (vast rate-limits searches).
    """
    return min(max(waited / 10, tick), max(OFFER_RETRY_MAX, tick))
