"""Claiming and guarded updates of job rows (dstack's pipelines, on Celery).

A worker *claims* due rows by writing a fresh ``lock_token`` with an expiry in one short
transaction; it then works without a session open and *applies* its results with
``UPDATE ... WHERE id = ? AND lock_token = ?``. Zero rows updated means another worker took the
row over after our lock expired: the results are dropped (StaleLockError).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from gpubot.db.tables import JobRow
from gpubot.errors import StaleLockError
from gpubot.models import JobState

logger = logging.getLogger(__name__)


def _lock_ttl_from_env() -> timedelta:
    raw = os.environ.get("GPUBOT_LOCK_TTL_SECONDS", "").strip()
    if not raw:
        return timedelta(minutes=5)
    seconds = float(raw)
    if seconds <= 0:
        raise ValueError("GPUBOT_LOCK_TTL_SECONDS must be > 0")
    return timedelta(seconds=seconds)


LOCK_TTL = _lock_ttl_from_env()
"""A claim not renewed for this long is abandoned (worker killed) and may be taken over.

Default 5 minutes. A running step renews its claim every third of this (:class:`ClaimHeartbeat`)
until it ends or reaches :data:`STEP_DEADLINE`, so a step may take longer than the TTL; the TTL
only bounds how long a dead worker's claim blocks its job. ``GPUBOT_LOCK_TTL_SECONDS`` (read
once at import, so set it before the process starts) overrides it; the fault tests shorten it
so that a SIGKILLed worker's claim blocks its job for seconds, not minutes.
"""

STEP_DEADLINE = timedelta(seconds=2000)
"""The longest a step may keep its claim alive. Ordering (docs/architecture.md, claims):
every inner timeout (provider HTTP 30 s per request, SSH connect 10 s, SSH commands up to
1,800 s for transfers and staging, presigned URLs 3,600 s) < STEP_DEADLINE (2,000 s) <
the step task's soft time limit (2,100 s) < its hard limit (2,160 s) < the Redis visibility
timeout (3,600 s); LOCK_TTL (300 s) < STEP_DEADLINE. A step still running at its deadline
stops renewing: its claim runs out LOCK_TTL later and another worker may take the job over;
the late step's result is then dropped by the guarded apply."""


def claim_due_jobs(
    session: Session, *, now: datetime, limit: int = 100, lock_ttl: timedelta = LOCK_TTL
) -> list[tuple[str, str]]:
    """Claim up to ``limit`` live jobs whose ``due_at`` has come and which nobody holds.

    Returns ``(job_id, lock_token)`` pairs, oldest-processed first. Safe with several workers:
    the claim is one conditional ``UPDATE … WHERE id IN (…) AND <unheld> RETURNING id``, so a
    row another claimer took meanwhile is not returned and two claimers never get the same row.
    The jobs claimed together share one token; :func:`take_claim` turns it into a token of the
    job's own before the step runs, matching on the job id as well. One statement for the batch
    (not one per job) keeps the claim off the tick's hot path at 1000 due jobs.
    """
    live = [s.value for s in JobState.live_states() if s is not JobState.AWAITING_APPROVAL]
    unheld = or_(JobRow.lock_token.is_(None), JobRow.lock_expires_at < now)
    candidates = session.scalars(
        select(JobRow.id)
        .where(JobRow.state.in_(live))
        .where(JobRow.due_at <= now)
        .where(unheld)
        .order_by(JobRow.last_processed_at.is_not(None), JobRow.last_processed_at)
        .limit(limit)
    ).all()
    if not candidates:
        session.commit()
        return []
    token = uuid.uuid4().hex
    won = set(
        session.scalars(
            update(JobRow)
            .where(JobRow.id.in_(candidates))
            .where(unheld)
            .values(lock_token=token, lock_expires_at=now + lock_ttl)
            .returning(JobRow.id)
            .execution_options(synchronize_session=False)
        ).all()
    )
    session.commit()
    return [(job_id, token) for job_id in candidates if job_id in won]


_JOBS = JobRow.__table__
_TAKE_CLAIM = (
    update(JobRow)
    .where(JobRow.id == bindparam("b_id"), JobRow.lock_token == bindparam("b_token"))
    .values(lock_token=bindparam("b_new_token"), lock_expires_at=bindparam("b_expires"))
    .execution_options(synchronize_session=False)
)
"""The claim exchange of :func:`take_claim`, built once (every step runs it)."""
_GUARDED_UPDATE = _JOBS.update().where(
    _JOBS.c.id == bindparam("b_id"), _JOBS.c.lock_token == bindparam("b_token")
)
"""The guarded write of :func:`apply_job_update`, built once (every step runs it)."""


def take_claim(
    session: Session,
    job_id: str,
    lock_token: str,
    *,
    now: datetime,
    lock_ttl: timedelta = LOCK_TTL,
    commit: bool = True,
) -> str | None:
    """Turn the claim ``lock_token`` into a fresh execution token; None if it is not ours
    (the session is then rolled back). ``commit`` False leaves the commit to the caller, who
    reads the job's instance in the same transaction.

    A claim is dispatched as a message, and a message can be delivered twice (a redelivery after
    the broker's visibility timeout, a retry, a duplicate send). Both deliveries would carry the
    same token, so checking ``lock_token == token`` alone lets two workers run the same step at
    once (two creates from one renting step). Swapping the token with a conditional UPDATE makes
    exactly one delivery win; the lock's expiry restarts from now, so time spent waiting in the
    queue does not eat into the step's TTL.
    """
    new_token = uuid.uuid4().hex
    result = session.execute(
        _TAKE_CLAIM,
        {"b_id": job_id, "b_token": lock_token, "b_new_token": new_token,
         "b_expires": now + lock_ttl},
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return None
    if commit:
        session.commit()
    return new_token


def apply_job_update(
    session: Session,
    job_id: str,
    lock_token: str,
    changes: Mapping[str, Any],
    *,
    release: bool = True,
    commit: bool = True,
) -> None:
    """Write ``changes`` to the job if we still hold its lock; release the lock if asked.
    ``commit`` False leaves the commit to the caller (more writes of the same transaction
    follow; they are rolled back with it when the lock was lost).

    Raises:
        StaleLockError: the lock token no longer matches; nothing was written.
    """
    values = dict(changes)
    if release:
        values.update(lock_token=None, lock_expires_at=None)
    # A Core UPDATE built once: its SET clause is the parameters' column names (compiled
    # once per set of names), the WHERE the two bound guards.
    result = session.execute(_GUARDED_UPDATE, {"b_id": job_id, "b_token": lock_token, **values})
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise StaleLockError(f"job {job_id}: lock was taken over; results dropped")
    if commit:
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


def renew_claim(
    session: Session,
    job_id: str,
    lock_token: str,
    *,
    now: datetime,
    lock_ttl: timedelta = LOCK_TTL,
) -> bool:
    """Extend our claim to ``now + lock_ttl``; False if the claim is no longer ours.

    ``UPDATE jobs SET lock_expires_at = … WHERE id = ? AND lock_token = ?``: a claim that ran
    out but that nobody took over is still ours (no other worker acted on the job); one that was
    taken over (new token) or released is not, and the step holding it must not apply.
    """
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.lock_token == lock_token)
        .values(lock_expires_at=now + lock_ttl)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    session.commit()
    return True


class ClaimHeartbeat:
    """Keeps one claim alive while its step works: a daemon thread renews ``lock_expires_at``
    under the token (:func:`renew_claim`) every third of ``lock_ttl``, measured both on
    ``clock`` (the engine's clock, which may run fast in tests) and on the wall clock, until
    :meth:`stop` or ``deadline`` (then the claim is left to run out).

    :attr:`lost` becomes true once a renewal finds the claim taken over or released; the step
    must then not apply (:meth:`check` raises). A renewal that fails on a database error is
    logged and retried at the next beat (the guarded apply still protects the result).
    Use as a context manager: the thread starts on enter and is stopped and joined on exit.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        lock_token: str,
        *,
        clock: Callable[[], datetime],
        lock_ttl: timedelta = LOCK_TTL,
        deadline: timedelta = STEP_DEADLINE,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.lock_token = lock_token
        self.clock = clock
        self.lock_ttl = lock_ttl
        self.deadline = deadline
        self.renewals = 0
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"claim-heartbeat-{job_id}", daemon=True
        )

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise StaleLockError if the claim was lost (call before an action that costs)."""
        if self.lost:
            raise StaleLockError(f"job {self.job_id}: claim lost during the step")

    def renew_now(self) -> bool:
        """One renewal now; False (and :attr:`lost` set) if the claim is no longer ours.
        A database error counts as "not known to be lost": True, logged."""
        if self.lost:
            return False
        try:
            with self.sessions() as session:
                ok = renew_claim(
                    session, self.job_id, self.lock_token, now=self.clock(),
                    lock_ttl=self.lock_ttl,
                )
        except SQLAlchemyError as exc:
            logger.warning("job %s: claim renewal failed, retrying: %s", self.job_id, exc)
            return True
        if not ok:
            logger.warning("job %s: claim lost while its step ran", self.job_id)
            self._lost.set()
            return False
        self.renewals += 1
        return True

    def _run(self) -> None:
        ttl_s = self.lock_ttl.total_seconds()
        every_s = ttl_s / 3
        poll_s = min(max(every_s / 10, 0.02), 5.0)
        started_wall = last_wall = time.monotonic()
        started_clock = last_clock = self.clock()
        while not self._stop.wait(poll_s):
            now_wall, now_clock = time.monotonic(), self.clock()
            if (now_wall - started_wall > self.deadline.total_seconds()
                    or now_clock - started_clock > self.deadline):
                logger.warning("job %s: step passed its deadline; claim left to expire",
                               self.job_id)
                return
            due = (now_wall - last_wall >= every_s
                   or (now_clock - last_clock).total_seconds() >= every_s)
            if not due:
                continue
            if not self.renew_now():
                return
            last_wall, last_clock = now_wall, now_clock

    def __enter__(self) -> ClaimHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
