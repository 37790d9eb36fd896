"""Claiming and guarded updates of job rows (dstack's pipelines, on Celery).

A worker *claims* due rows by writing a fresh ``lock_token`` with an expiry in one short
transaction; it then works without a session open and *applies* its results with
``UPDATE ... WHERE id = ? AND lock_token = ?``. Zero rows updated means another worker took the
row over after our lock expired: the results are dropped (StaleLockError).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from gpubot.db.tables import JobRow
from gpubot.errors import StaleLockError
from gpubot.models import JobState


def _lock_ttl_from_env() -> timedelta:
    raw = os.environ.get("GPUBOT_LOCK_TTL_SECONDS", "").strip()
    if not raw:
        return timedelta(minutes=5)
    seconds = float(raw)
    if seconds <= 0:
        raise ValueError("GPUBOT_LOCK_TTL_SECONDS must be > 0")
    return timedelta(seconds=seconds)


LOCK_TTL = _lock_ttl_from_env()
"""A claim older than this is abandoned (worker killed) and may be taken over.

Default 5 minutes: longer than any step (task soft limit 600 s is per task, but steps are
bounded by their SSH/HTTP timeouts). ``GPUBOT_LOCK_TTL_SECONDS`` (read once at import, so set
it before the process starts) overrides it; the fault tests shorten it so that a SIGKILLed
worker's claim blocks its job for seconds, not minutes. Keep it well above the longest step in
production: a step that outlives its lock is taken over and its result dropped.
"""


def claim_due_jobs(
    session: Session, *, now: datetime, limit: int = 100, lock_ttl: timedelta = LOCK_TTL
) -> list[tuple[str, str]]:
    """Claim up to ``limit`` live jobs whose ``due_at`` has come and which nobody holds.

    Returns ``(job_id, lock_token)`` pairs, oldest-processed first. Safe with several workers:
    the claim is a conditional UPDATE per row, so two claimers never get the same row.
    """
    live = [s.value for s in JobState.live_states() if s is not JobState.AWAITING_APPROVAL]
    candidates = session.scalars(
        select(JobRow.id)
        .where(JobRow.state.in_(live))
        .where(JobRow.due_at <= now)
        .where(or_(JobRow.lock_token.is_(None), JobRow.lock_expires_at < now))
        .order_by(JobRow.last_processed_at.is_not(None), JobRow.last_processed_at)
        .limit(limit)
    ).all()
    claimed: list[tuple[str, str]] = []
    for job_id in candidates:
        token = uuid.uuid4().hex
        result = session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .where(or_(JobRow.lock_token.is_(None), JobRow.lock_expires_at < now))
            .values(lock_token=token, lock_expires_at=now + lock_ttl)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append((job_id, token))
    session.commit()
    return claimed


def take_claim(
    session: Session,
    job_id: str,
    lock_token: str,
    *,
    now: datetime,
    lock_ttl: timedelta = LOCK_TTL,
) -> str | None:
    """Turn the claim ``lock_token`` into a fresh execution token; None if it is not ours.

    A claim is dispatched as a message, and a message can be delivered twice (a redelivery after
    the broker's visibility timeout, a retry, a duplicate send). Both deliveries would carry the
    same token, so checking ``lock_token == token`` alone lets two workers run the same step at
    once (two creates from one renting step). Swapping the token with a conditional UPDATE makes
    exactly one delivery win; the lock's expiry restarts from now, so time spent waiting in the
    queue does not eat into the step's TTL.
    """
    new_token = uuid.uuid4().hex
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.lock_token == lock_token)
        .values(lock_token=new_token, lock_expires_at=now + lock_ttl)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return None
    session.commit()
    return new_token


def apply_job_update(
    session: Session,
    job_id: str,
    lock_token: str,
    changes: Mapping[str, Any],
    *,
    release: bool = True,
) -> None:
    """Write ``changes`` to the job if we still hold its lock; release the lock if asked.

    Raises:
        StaleLockError: the lock token no longer matches; nothing was written.
    """
    values = dict(changes)
    if release:
        values.update(lock_token=None, lock_expires_at=None)
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.lock_token == lock_token)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise StaleLockError(f"job {job_id}: lock was taken over; results dropped")
    session.commit()


def release_lock(session: Session, job_id: str, lock_token: str) -> None:
    """Give up a claim without changing anything (no error if it was already lost)."""
    session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.lock_token == lock_token)
        .values(lock_token=None, lock_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
