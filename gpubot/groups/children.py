"""The child jobs of a group: listing them, holding and releasing them (concurrency), and
cancelling the ones that never rented anything.

The engine claims every due queued job, so children beyond ``[engine]
max_concurrent_children`` are *held*: queued with ``due_at`` :data:`HOLD` in the future.
:func:`release` lets them go (``due_at = now``) as running ones finish. Every change here is
a conditional ``UPDATE`` (on state, lock and ``due_at``), so two callers at once are safe.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gpubot.db.tables import JobGroupRow, JobRow
from gpubot.models import JobState
from gpubot.notify import events
from gpubot.render import groups as render

HOLD = timedelta(days=3650)
"""A held child is queued with ``due_at`` this far ahead (the engine does not claim it)."""
RUNNING = "running"
"""The state of a group until every child has finished (``job_groups.state``)."""
FINISHED_GROUP_STATES = ("succeeded", "failed", "cancelled")
FINISHED = frozenset(s.value for s in JobState.finished_states())
"""Child job states that are final."""
STOPPABLE = [
    s.value for s in JobState.live_states()
    if s not in {JobState.AWAITING_APPROVAL, JobState.TEARING_DOWN}
]
"""Child job states a stop request applies to (the engine checkpoints, then destroys)."""


def of_group(session: Session, group: JobGroupRow) -> list[JobRow]:
    """The group's child jobs, freshly loaded, in launch order (``spec["children"]``; any
    child not listed there yet comes last, by creation time)."""
    order = {j: i for i, j in enumerate((group.spec or {}).get("children", []))}
    rows = list(
        session.scalars(
            select(JobRow)
            .where(JobRow.group_id == group.id)
            .execution_options(populate_existing=True)
        )
    )
    return sorted(rows, key=lambda j: (order.get(j.id, len(order)), j.created_at, j.id))


def is_held(job: JobRow, now: datetime) -> bool:
    """Queued with ``due_at`` pushed into the far future by :func:`hold_excess`."""
    return job.state == JobState.QUEUED.value and job.due_at > now + HOLD / 2


def is_active(job: JobRow, now: datetime) -> bool:
    """Counts against the concurrency limit: not finished, not awaiting approval, not held."""
    return (
        job.state not in FINISHED
        and job.state != JobState.AWAITING_APPROVAL.value
        and not is_held(job, now)
    )


def hold_excess(session: Session, group: JobGroupRow, now: datetime, limit: int) -> list[str]:
    """Hold queued, never-processed children beyond ``limit`` active ones (the newest first).

    A child already claimed or processed once is never held. Returns the ids newly held
    (their cards are refreshed with the waiting reason).
    """
    children = of_group(session, group)
    active = [j for j in children if is_active(j, now)]
    excess = len(active) - limit
    held: list[str] = []
    for job in reversed(active):
        if excess <= 0:
            break
        if job.state != JobState.QUEUED.value or job.last_processed_at is not None:
            continue
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job.id, JobRow.state == JobState.QUEUED.value)
            .where(JobRow.lock_token.is_(None), JobRow.last_processed_at.is_(None))
            .values(due_at=now + HOLD, phase_detail=render.held_detail(limit, group.id))
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(job)
            events.refresh_card(session, job)
            held.append(job.id)
            excess -= 1
    return held


def release(session: Session, group: JobGroupRow, now: datetime, limit: int) -> list[str]:
    """Release held children (in launch order) while fewer than ``limit`` are active.

    Returns the ids released (due now; the caller kicks the engine).
    """
    children = of_group(session, group)
    free = limit - sum(1 for j in children if is_active(j, now))
    released: list[str] = []
    for job in children:
        if free <= 0:
            break
        if not is_held(job, now):
            continue
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job.id, JobRow.state == JobState.QUEUED.value)
            .where(JobRow.due_at > now + HOLD / 2)
            .values(due_at=now, phase_detail="")
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            released.append(job.id)
            free -= 1
    return released


def cancel_awaiting(
    session: Session, children: list[JobRow], reason: str, now: datetime
) -> None:
    """Children still awaiting approval rented nothing: finish them as cancelled here (their
    cards are refreshed). Children in any other state are left alone."""
    for job in children:
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job.id, JobRow.state == JobState.AWAITING_APPROVAL.value)
            .values(state=JobState.CANCELLED.value, outcome=JobState.CANCELLED.value,
                    reason=reason, finished_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(job)
            events.refresh_card(session, job)
