"""The job engine: advance one claimed job by one idempotent step.

Contract of every step:
- it starts from the stored state only (nothing in memory survives between ticks);
- it makes a bounded number of provider/SSH/S3 calls, with no database session open;
- it applies its result with a guarded update (``lock_token``); a stale lock drops it;
- a crash anywhere costs at most one tick: re-running the step from the same stored state is
  safe (creates are de-duplicated by the instance label, the detached start is idempotent,
  uploads overwrite, destroys are idempotent).

A rental is recorded (``InstanceRow`` in state ``requested`` with its label) *before* the
create call, and its provider id right after it; if the worker dies between the two, the next
tick finds the instance by label in the listing. Nothing the bot rents can bill unrecorded.

Why one module over 500 lines: it is the job state machine, one ``_step_<state>`` function per
state plus the pre-checks and the teardown every state can fall into; reading the states in
order is how a transition is reviewed. The work a step delegates already lives beside it
(``planning``, ``staging``, ``remote_job``, ``idle``, ``orphans``).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_UP, Decimal
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from gpubot.db.engine import session_scope
from gpubot.db.queries import (
    LOCK_TTL,
    ClaimHeartbeat,
    apply_job_update,
    release_lock,
    take_claim,
)
from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.engine import idle, planning, remote_job
from gpubot.engine.labels import adoptable, rental_label
from gpubot.errors import (
    AboveCeilingError,
    GpubotError,
    NoCapacityError,
    NoOfferError,
    ProviderError,
    RateLimitedError,
    RemoteError,
    StaleLockError,
    StorageError,
    TransientProviderError,
)
from gpubot.lifecycle import (
    BOOT_DEADLINE,
    CONNECT_DEADLINE,
    DESTROY_RETRY_INTERVAL,
    FAST_STATES,
    PRICE_APPROVAL_DEADLINE,
    RESUME_OFFER_DEADLINE,
    SETUP_DEADLINE,
    InstanceVerdict,
    offer_retry_after,
)
from gpubot.models import JobState, LaunchSpec
from gpubot.notify import events
from gpubot.redact import redact
from gpubot.render import limits as render_limits

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 8
"""Unexpected step errors in a row before the job is failed (and its instance destroyed)."""

_CLAIM: contextvars.ContextVar[ClaimHeartbeat | None] = contextvars.ContextVar(
    "gpubot_step_claim", default=None
)
"""The heartbeat of the claim the current step runs under (None outside ``advance_job``)."""


def _claim_still_held() -> None:
    """Raise StaleLockError if the running step's claim was lost (before a costly action)."""
    heartbeat = _CLAIM.get()
    if heartbeat is not None:
        heartbeat.check()


@dataclass
class StepResult:
    """What a step decided. Applied atomically with the job's guarded update."""

    changes: dict[str, Any] = field(default_factory=dict)
    instance_changes: dict[int, dict[str, Any]] = field(default_factory=dict)
    new_instance: InstanceRow | None = None
    notes: list[Callable[[Session, JobRow], None]] = field(default_factory=list)
    """Outbox writes (events) run inside the applying transaction."""
    immediate: bool = False
    """Run the next step at once instead of waiting for the next tick."""


def advance_job(deps: EngineDeps, job_id: str, lock_token: str) -> None:
    """Run the step of ``job_id``'s current state. Safe to call twice with the same token:
    the claim is exchanged for an execution token first, so only one delivery runs the step.

    A step that enters a state of :data:`CHAINED_STATES` is applied with the claim kept, and
    that state's step runs next under the same claim (at most :data:`MAX_CHAINED_STEPS`
    more): every step's result is stored before the next one acts, so a crash in between
    leaves the job exactly where an unchained run would have left it."""
    loaded = _exchange_claim(deps, job_id, lock_token)
    if loaded is None:
        return
    job, instance, claimed_at = loaded
    lock_token = job.lock_token or ""
    for chained in range(MAX_CHAINED_STEPS + 1):
        if chained:
            reloaded = _load_claimed(deps, job_id, lock_token)
            if reloaded is None:
                return
            job, instance = reloaded
        state = JobState(job.state)
        step = _STEPS.get(state)
        if step is None:
            with session_scope(deps.sessions) as session:
                release_lock(session, job_id, lock_token)
            return
        # The claim is renewed while the step works (uploads and creates can outlast
        # LOCK_TTL); a renewal that finds it taken over means this step's result must not be
        # applied.
        heartbeat = ClaimHeartbeat(deps.sessions, job_id, lock_token, clock=deps.clock)
        claim = _CLAIM.set(heartbeat)
        try:
            with heartbeat:
                result = _run_step(deps, job, instance, state, step)
        finally:
            _CLAIM.reset(claim)
        if result is None or heartbeat.lost:
            logger.warning(
                "job %s: claim lost during %s, step result dropped", job_id, state.value
            )
            return
        target = result.changes.get("state")
        chain = (
            chained < MAX_CHAINED_STEPS
            and result.immediate
            and target is not None
            and target != state.value
            and JobState(target) in CHAINED_STATES
        )
        if not chain:
            applied = _apply(deps, job, lock_token, result, claimed_at=claimed_at)
            if applied is not False and result.immediate:
                deps.enqueuer.kick()
            return
        if _apply(deps, job, lock_token, result, release=False, claimed_at=claimed_at) is False:
            return


def _exchange_claim(
    deps: EngineDeps, job_id: str, lock_token: str
) -> tuple[JobRow, InstanceRow | None, datetime] | None:
    """Take the claim ``lock_token`` for this delivery (:func:`gpubot.db.queries.take_claim`)
    and load what the first step needs, in one transaction: the job (detached, holding the
    new execution token), its current instance and when the tick claimed it. None when the
    claim is not ours (any more)."""
    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, job_id)
        if job is None or job.lock_token != lock_token:
            return None
        now = deps.clock()
        claimed_at = claim_time(job.lock_expires_at, now=now)
        # A duplicated message (redelivery, retry) carries the same claim token; without this
        # exchange two workers would run the same step concurrently (e.g. rent twice).
        token = take_claim(session, job_id, lock_token, now=now, commit=False)
        if token is None:
            return None
        # The conditional UPDATE changed only the claim; the row read above is otherwise
        # what this transaction commits on.
        set_committed_value(job, "lock_token", token)
        set_committed_value(job, "lock_expires_at", now + LOCK_TTL)
        session.expunge(job)
        instance = current_instance(session, job_id)
        if instance is not None:
            session.expunge(instance)
        return job, instance, claimed_at


def _load_claimed(
    deps: EngineDeps, job_id: str, lock_token: str
) -> tuple[JobRow, InstanceRow | None] | None:
    """The job (detached, fresh) and its current instance, if ``lock_token`` still holds it."""
    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, job_id)
        if job is None or job.lock_token != lock_token:
            return None
        session.expunge(job)
        instance = current_instance(session, job_id)
        if instance is not None:
            session.expunge(instance)
        return job, instance


def _run_step(
    deps: EngineDeps,
    job: JobRow,
    instance: InstanceRow | None,
    state: JobState,
    step: Callable[[EngineDeps, JobRow, InstanceRow | None], StepResult],
) -> StepResult | None:
    """Run the pre-checks and ``step``; None when the claim was found lost (StaleLockError)."""
    try:
        result = _pre_checks(deps, job, instance) or step(deps, job, instance)
        job.progress = dict(job.progress or {}) | {"error_count": 0}
        result.changes.setdefault("progress", job.progress)
    except RateLimitedError as exc:
        result = _rate_limited(deps, job, exc)
    except (TransientProviderError, RemoteError, StorageError) as exc:
        result = _retry_later(deps, job, exc)
    except StaleLockError:
        return None
    except Exception as exc:  # noqa: BLE001 - a step must never wedge a job
        logger.exception("job %s: unexpected error in %s", job.id, state.value)
        result = _retry_later(deps, job, exc)
    if result.changes.get("state") == JobState.TEARING_DOWN.value and state not in {
        JobState.TEARING_DOWN
    }:
        result = _with_destroy_now(deps, _job_after(deps, job, result.changes), result)
    return result


CHAINED_STATES = frozenset({JobState.INTERRUPTED, JobState.RE_RENTING, JobState.COLLECTING})
"""States whose step runs in the same ``advance_job`` as the step that entered them: a lost
instance is destroyed and its replacement rented in the step that saw the loss (running →
interrupted → re_renting → booting), and an exited job is collected and torn down in the step
that saw the exit (running → collecting → tearing_down). Waiting one more tick for each would
bill the lost or finished instance for it."""

MAX_CHAINED_STEPS = 3
"""Bound of the steps chained after the claimed one (interrupted, re_renting, and one spare)."""


def _job_after(deps: EngineDeps, job: JobRow, changes: Mapping[str, Any]) -> JobRow:
    """A transient copy of ``job`` with ``changes`` applied, as the next step would load it
    (``step_started_at`` now when the state changes)."""
    values = {k: v for k, v in changes.items() if k in _JOB_COLUMNS}
    if changes.get("state", job.state) != job.state:
        values["step_started_at"] = deps.clock()
    return _row_with(job, values)


def _row_with(job: JobRow, changes: Mapping[str, Any]) -> JobRow:
    """A transient copy of ``job`` with ``changes`` (job columns) applied."""
    values = {name: getattr(job, name) for name in _JOB_COLUMNS}
    values.update(changes)
    return JobRow(**values)


_JOB_COLUMNS = frozenset(JobRow.__table__.columns.keys())


def _with_destroy_now(deps: EngineDeps, job: JobRow, result: StepResult) -> StepResult:
    """Ask for the destroy in the same step that decided to tear down: every tick an
    instance lives after that decision is money (budget stops, idle reaper, failures)."""
    try:
        teardown = _step_tearing_down(deps, job, None)
    except (TransientProviderError, RemoteError) as exc:
        logger.info("job %s: destroy will be retried on the next tick: %s", job.id, exc)
        return result
    for instance_id, changes in teardown.instance_changes.items():
        result.instance_changes.setdefault(instance_id, {}).update(changes)
    return result


def current_instance(session: Session, job_id: str) -> InstanceRow | None:
    """The job's newest rental that is not verified destroyed."""
    return session.scalars(_CURRENT_INSTANCE, {"job_id": job_id}).first()


_CURRENT_INSTANCE = (
    select(InstanceRow)
    .where(InstanceRow.job_id == bindparam("job_id"), InstanceRow.destroyed_at.is_(None))
    .where(InstanceRow.destroy_requested_at.is_(None))
    .order_by(InstanceRow.id.desc())
    .limit(1)
)
"""Built once: every step loads its job's current instance."""


# -- application ------------------------------------------------------------------------------


def claim_time(lock_expires_at: datetime | None, *, now: datetime) -> datetime:
    """When the tick claimed the job: its claim's expiry minus :data:`LOCK_TTL` (the tick
    claims with the default TTL), never in the future; ``now`` without a claim expiry."""
    if lock_expires_at is None:
        return now
    if lock_expires_at.tzinfo is None and now.tzinfo is not None:
        lock_expires_at = lock_expires_at.replace(tzinfo=now.tzinfo)
    return min(now, lock_expires_at - LOCK_TTL)


def next_turn(claimed_at: datetime, *, now: datetime, tick_seconds: float) -> datetime:
    """When a job whose step was claimed at ``claimed_at`` and ended at ``now`` is due again.

    Counted from the claim, not from the step's end: a tick's steps end seconds apart (1000
    running jobs on 2 workers: up to ~6 s after the tick started), and "the end plus a tick"
    falls just after the next tick for all but the fastest, so most running jobs were read
    only every second tick. Due :data:`TURN_EARLY_FRACTION` of a tick before the next tick
    (absorbing the difference between two ticks' claim delays), and never sooner than
    :data:`TURN_MIN_GAP_FRACTION` of a tick after the step ended (a kicked tick does not
    re-read a job that was just read).
    """
    tick = timedelta(seconds=tick_seconds)
    return max(claimed_at + tick * (1 - TURN_EARLY_FRACTION), now + tick * TURN_MIN_GAP_FRACTION)


TURN_EARLY_FRACTION = 0.25
"""How much of a tick before the next tick a job's next turn is due (:func:`next_turn`)."""
TURN_MIN_GAP_FRACTION = 0.1
"""The least time, in ticks, between the end of a job's step and its next turn."""


def _apply(
    deps: EngineDeps,
    job: JobRow,
    lock_token: str,
    result: StepResult,
    *,
    release: bool = True,
    claimed_at: datetime | None = None,
) -> bool:
    """Store ``result`` atomically if the claim still holds (and release it, unless
    ``release`` is False: a chained step follows). False when the claim was lost.

    A job not due at once is due :func:`next_turn` from ``claimed_at`` (the tick that claimed
    it; default: now), so every live job is read once per tick."""
    now = deps.clock()
    changes = dict(result.changes)
    changes.setdefault("updated_at", now)
    changes["last_processed_at"] = now
    if "state" in changes and changes["state"] != job.state:
        changes["step_started_at"] = now
    if "due_at" not in changes:
        new_state = JobState(changes.get("state", job.state))
        fast = result.immediate or new_state in FAST_STATES
        tick_s = deps.settings.tick_seconds
        if fast:
            changes["due_at"] = now
        elif claimed_at is None:
            changes["due_at"] = now + timedelta(seconds=tick_s)
        else:
            changes["due_at"] = next_turn(claimed_at, now=now, tick_seconds=tick_s)
    if result.immediate:
        changes["due_at"] = now
    unknown = set(changes) - _JOB_COLUMNS
    if unknown:
        raise ValueError(f"step changes name no job column: {sorted(unknown)}")
    with session_scope(deps.sessions) as session:
        for instance_id, instance_changes in result.instance_changes.items():
            row = session.get(InstanceRow, instance_id)
            if row is not None:
                for key, value in instance_changes.items():
                    setattr(row, key, value)
        if result.new_instance is not None:
            session.add(result.new_instance)
        session.flush()
        # Guarded apply: the job's changes are written only if we still hold the lock, and
        # the whole transaction (instances, job, outbox) commits only then.
        try:
            apply_job_update(session, job.id, lock_token, changes, release=release, commit=False)
        except StaleLockError:
            logger.warning("job %s: lock lost, step result dropped", job.id)
            return False
        fresh = _attached_after(session, job, changes)
        for note in result.notes:
            note(session, fresh)
        events.refresh_card(
            session, fresh, state_changed=changes.get("state", job.state) != job.state
        )
    return True


def _attached_after(session: Session, job: JobRow, changes: Mapping[str, Any]) -> JobRow:
    """``job`` with ``changes`` applied, attached to ``session`` as the row it has just
    written (no read): what notes change on it is flushed as one more UPDATE of those
    columns. Columns the step did not change are as the step loaded them (the card and the
    notes read them; nothing writes them back)."""
    row = _row_with(job, changes)
    make_transient_to_detached(row)
    session.add(row)
    return row


def _retry_later(deps: EngineDeps, job: JobRow, exc: BaseException) -> StepResult:
    progress = dict(job.progress or {})
    errors = int(progress.get("error_count", 0)) + 1
    progress["error_count"] = errors
    message = redact(str(exc)) or type(exc).__name__
    logger.warning("job %s: step %s will retry (%d): %s", job.id, job.state, errors, message)
    if errors >= MAX_CONSECUTIVE_ERRORS and not JobState(job.state).is_finished():
        if job.state == JobState.TEARING_DOWN.value:
            return StepResult(changes={"progress": progress, "phase_detail": message[:300]})
        return _teardown(
            job,
            outcome=JobState.FAILED,
            reason=f"gave up after {errors} errors in {job.state}: {message}"[:1000],
            extra={"progress": progress},
        )
    return StepResult(
        changes={"progress": progress, "phase_detail": f"retrying: {message}"[:300]},
    )


def _rate_limited(deps: EngineDeps, job: JobRow, exc: RateLimitedError) -> StepResult:
    """vast said "not now" (429, search quota, our own pace refusing a turn that is too far
    away): the job is due again when the turn comes, i.e. after the wait the error names (at
    most an hour; one tick when it names none), so no worker sits waiting for it. Not a
    failure: the consecutive-error count that fails a job is left as it was (a 429 storm or a
    long queue of creates must not fail a healthy job)."""
    wait = exc.retry_after_seconds
    tick = float(deps.settings.tick_seconds)
    delay = min(max(0.0, float(wait)), 3600.0) if wait is not None else tick
    logger.info("job %s: %s rate limited, retrying in %.1f s", job.id, job.state, delay)
    return StepResult(
        changes={
            "phase_detail": f"vast.ai rate limit, retrying in {delay:.0f} s"[:300],
            "due_at": deps.clock() + timedelta(seconds=delay),
        }
    )


def _teardown(
    job: JobRow,
    *,
    outcome: JobState,
    reason: str = "",
    extra: Mapping[str, Any] | None = None,
) -> StepResult:
    changes: dict[str, Any] = {
        "state": JobState.TEARING_DOWN.value,
        "outcome": outcome.value,
        "phase_detail": "",
    }
    if reason:
        changes["reason"] = reason
    changes.update(extra or {})
    return StepResult(changes=changes, immediate=True)


def _pre_checks(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult | None:
    """Cancellation and budget stops, checked before any step."""
    state = JobState(job.state)
    if state in {JobState.TEARING_DOWN} or state.is_finished():
        return None
    if job.cancel_requested:
        return _teardown(job, outcome=JobState.CANCELLED, reason=job.reason or "cancelled")
    if job.stop_requested_reason:
        if state is JobState.RUNNING and instance is not None:
            try:
                _backup_checkpoints(deps, job, instance, final=True)
            except GpubotError as exc:
                logger.warning("job %s: final checkpoint before stop failed: %s", job.id, exc)
        return _teardown(job, outcome=JobState.FAILED, reason=job.stop_requested_reason)
    return None


# -- steps ------------------------------------------------------------------------------------


def _step_queued(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    return StepResult(changes={"state": JobState.RENTING.value}, immediate=True)


def _label(deps: EngineDeps, job: JobRow) -> str:
    """The label of the rental this step makes: ``<prefix>:<job id>:<attempt>``, the attempt
    being the one about to be rented (``attempts + 1``). One label per attempt, so adopting by
    label can never pick up the instance of an earlier attempt (still listed while destroyed)."""
    return rental_label(deps.settings.label_prefix, job.id, job.attempts + 1)


def _recorded_provider_ids(deps: EngineDeps, job_id: str) -> set[str]:
    """Every provider id ever recorded for the job (destroyed, destroying or live)."""
    with session_scope(deps.sessions) as session:
        return {
            pid
            for pid in session.scalars(
                select(InstanceRow.provider_id).where(
                    InstanceRow.job_id == job_id, InstanceRow.provider_id.is_not(None)
                )
            )
            if pid
        }


def _record_provider_id(deps: EngineDeps, placeholder_id: int, provider_id: str) -> None:
    """Write the new instance's id onto its placeholder at once, whatever becomes of the step.

    Money safety: nothing may bill unrecorded, and the step's own apply is dropped if its claim
    was lost meanwhile. A placeholder that another worker abandoned in between is reopened as
    ``destroying`` and the instance destroyed (best effort; the teardown and the reconcile
    verify it), so the job never ends up with two current rentals.
    """
    abandoned = False
    with session_scope(deps.sessions) as session:
        row = session.get(InstanceRow, placeholder_id)
        if row is None:
            return
        row.provider_id = provider_id
        if row.destroyed_at is not None:
            abandoned = True
            row.destroyed_at = None
            row.destroy_requested_at = deps.clock()
            row.status = "destroying"
    if abandoned:
        try:
            deps.provider.destroy(provider_id)
        except ProviderError as exc:
            logger.warning("instance %s: destroy of a late rental failed: %s", provider_id, exc)


def _step_renting(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    """Rent (or find the rental of a crashed earlier attempt, by label).

    A placeholder without a provider id means a create may have happened before a crash (or
    a timeout after the request left): the listing is searched for the placeholder's own label
    and an instance is adopted only if it is not recorded for this job already and is neither
    released (destroyed rows linger as ``unloaded``), stopped nor exited (labels.adoptable).
    The claim is checked just before the create: a step whose claim was taken over never
    rents, so one attempt makes at most one create.
    """
    label = _label(deps, job)
    if instance is not None and instance.provider_id:
        # Recorded right after its create by a step that never applied (crash, lost claim):
        # adopt it like a rental found by label (key attach, and it counts as an attempt).
        _attach_key_quietly(deps, job, instance.provider_id)
        return StepResult(
            changes={"state": JobState.BOOTING.value, "attempts": job.attempts + 1},
            instance_changes={instance.id: {"status": "provisioning"}},
        )
    if instance is not None and instance.provider_id is None:
        # A create may have happened before a crash: look for our label first.
        listing = deps.provider.list_instances()
        recorded = _recorded_provider_ids(deps, job.id)
        found = adoptable(listing, instance.label or label, recorded)
        if found:
            # The crash may have come before the SSH key was attached (create_instance attaches
            # it in a second call): attach it now (idempotent), or SSH would be refused until
            # the connect deadline and the job would pay for a second rental.
            _attach_key_quietly(deps, job, found[0].provider_id)
            return StepResult(
                # The adopted rental counts as an attempt (max_attempts would be off by one).
                changes={"state": JobState.BOOTING.value, "attempts": job.attempts + 1},
                instance_changes={
                    instance.id: {"provider_id": found[0].provider_id, "status": "provisioning"}
                },
            )
        # The create never happened: forget the placeholder and rent afresh below.
        _claim_still_held()
        with session_scope(deps.sessions) as session:
            row = session.get(InstanceRow, instance.id)
            if row is not None:
                row.destroy_requested_at = deps.clock()
                row.destroyed_at = deps.clock()
                row.status = "abandoned"
    template = deps.config.templates[job.template] if job.kind == "job" else None
    requirements = planning.requirements_from_job(deps.config, job)
    excluded = job.failed_offer_ids or {}
    blocked_hosts = frozenset(excluded.get("hosts", [])) | requirements.blocked_host_ids
    requirements = planning.with_blocked_hosts(requirements, blocked_hosts)
    mode = planning.interruptible_mode_of(job)
    interruptible_search = mode.value != "no"
    market = deps.provider.search_offers(requirements, interruptible=interruptible_search)
    market = [o for o in market if o.offer_id not in set(excluded.get("offers", []))]
    try:
        # Never above the ceiling stored at submit (plan + tolerance): a market that moved
        # since the plan, or a re-rent after an interruption, waits for a cheaper offer
        # instead of renting what nobody approved.
        choice = planning.choose_within_ceiling(
            market,
            requirements,
            ceiling_usd=planning.ceiling_of(job),
            mode=mode,
            expected_hours=planning.expected_hours_of(deps.config, job),
            checkpoints=bool(template.resources.checkpoints) if template else False,
        )
    except NoOfferError as exc:
        return _wait_for_offer(deps, job, exc)
    # Record the rental BEFORE renting.
    _claim_still_held()
    placeholder = InstanceRow(
        job_id=job.id,
        label=label,
        offer=planning.offer_snapshot(choice.offer),
        gpu_name=choice.offer.gpu_name,
        price_per_hour_usd=choice.compute_per_hour_usd,
        storage_per_gb_month_usd=choice.offer.storage_per_gb_month_usd,
        upload_per_gb_usd=choice.offer.upload_per_gb_usd,
        download_per_gb_usd=choice.offer.download_per_gb_usd,
        disk_gb=requirements.disk_gb,
        rental_type=choice.rental_type.value,
        bid_per_hour_usd=choice.bid_per_hour_usd,
        status="requested",
        created_at=deps.clock(),
    )
    with session_scope(deps.sessions) as session:
        session.add(placeholder)
        session.flush()
        placeholder_id = placeholder.id
    spec = LaunchSpec(
        image=planning.image_of(deps.config, job),
        disk_gb=requirements.disk_gb,
        label=label,
        ssh_public_key=deps.ssh_public_key,
        bid_per_hour_usd=choice.bid_per_hour_usd,
        env={"GPUBOT_JOB_ID": job.id},
    )
    _claim_still_held()  # a taken-over step must not rent: one create per attempt
    try:
        provider_id = deps.provider.create_instance(choice.offer, spec)
    except RateLimitedError as exc:
        # Not sent (no create turn yet) or refused with a 429: nothing was rented, so the
        # placeholder is closed with this step's result instead of costing the next step a
        # listing to look for its label (lists are rate limited too).
        result = _rate_limited(deps, job, exc)
        result.changes["progress"] = dict(job.progress or {})  # not an error, not a success
        result.instance_changes[placeholder_id] = {
            "destroy_requested_at": deps.clock(),
            "destroyed_at": deps.clock(),
            "status": "abandoned",
        }
        return result
    except NoCapacityError as exc:
        why = str(exc)
        excluded_offers = list(excluded.get("offers", [])) + [choice.offer.offer_id]
        # The placeholder is NOT abandoned here: the SDK retries a create that timed out,
        # so "offer gone" can be the answer to our own retry after the first attempt did
        # rent (seen in tests/faults with a create timeout: the instance leaked). The next
        # step looks for our label first and adopts or abandons the placeholder.
        # A refused low bid is different: vast created a *stopped* instance with our label
        # (``created_instance_id``) and the provider already asked for its destroy. It is
        # recorded as destroying, so the next step never adopts it, the reconcile verifies it
        # is gone and the teardown retries its destroy if that failed.
        refused: dict[int, dict[str, Any]] = {}
        if exc.created_instance_id:
            refused[placeholder_id] = {
                "provider_id": exc.created_instance_id,
                "destroy_requested_at": deps.clock(),
                "status": "destroying",
            }
        return StepResult(
            changes={
                "failed_offer_ids": {**excluded, "offers": excluded_offers[-50:]},
                "phase_detail": f"offer {choice.offer.offer_id} gone, trying the next one",
            },
            instance_changes=refused,
            immediate=True,
            notes=[lambda s, j: events.note(s, j, f"Offer unavailable ({why}); trying another.")],
        )
    _record_provider_id(deps, placeholder_id, provider_id)
    _attach_key_quietly(deps, job, provider_id)
    attempts = job.attempts + 1
    return StepResult(
        changes={
            "state": JobState.BOOTING.value,
            "attempts": attempts,
            "rental_type": choice.rental_type.value,
            "phase_detail": "",
        },
        instance_changes={
            placeholder_id: {"provider_id": provider_id, "status": "provisioning"},
        },
        notes=[lambda s, j: events.rented(s, j, choice, provider_id)],
    )


def _wait_for_offer(deps: EngineDeps, job: JobRow, exc: NoOfferError) -> StepResult:
    """No offer within the job's approved price (nothing is rented; nothing bills).

    A job that has run before (``attempts`` > 0: outbid or its host lost, its checkpoints
    kept) waits up to :data:`RESUME_OFFER_DEADLINE`; one that never ran waits
    :data:`PRICE_APPROVAL_DEADLINE` when offers exist above its price, else
    :data:`BOOT_DEADLINE`; then it fails. When offers exist only above the approved price
    (:class:`AboveCeilingError`), the wait's first step posts a prompt in the thread with a
    button that raises the price to the cheapest one's (an approver's click above the
    approval threshold); the price stays what was approved until someone clicks. Searches
    back off while it waits (:func:`gpubot.lifecycle.offer_retry_after`: every tick at first,
    every 5 minutes after 50 minutes); a raise of the price makes the job due at once.
    """
    resuming = job.attempts > 0
    above = isinstance(exc, AboveCeilingError)
    if resuming:
        deadline = RESUME_OFFER_DEADLINE
    else:
        deadline = PRICE_APPROVAL_DEADLINE if above else BOOT_DEADLINE
    now = deps.clock()
    waited = now - job.step_started_at
    if waited > deadline:
        return _teardown(job, outcome=JobState.FAILED, reason=f"no offer: {exc}")
    due = now + offer_retry_after(waited, timedelta(seconds=deps.settings.tick_seconds))
    ceiling = planning.ceiling_of(job)
    if not isinstance(exc, AboveCeilingError) or ceiling is None:
        return StepResult(changes={"phase_detail": f"waiting for an offer: {exc}"[:300],
                                   "due_at": due})
    cheapest = exc.cheapest_per_hour_usd.quantize(Decimal("0.0001"), rounding=ROUND_UP)
    detail = render_limits.price_wait_detail(ceiling_usd=ceiling, cheapest_usd=cheapest)
    result = StepResult(changes={"phase_detail": detail[:300], "due_at": due})
    if not (job.phase_detail or "").startswith(render_limits.PRICE_WAIT_PREFIX):
        text = render_limits.price_prompt(
            job_id=job.id, requester=job.requester, ceiling_usd=ceiling, cheapest_usd=cheapest,
            resuming=resuming, wait_hours=deadline.total_seconds() / 3600)
        result.notes.append(lambda s, j: events.price_prompt(s, j, text, cheapest))
    return result


def _step_booting(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    if instance is None:
        return StepResult(changes={"state": JobState.RENTING.value}, immediate=True)
    verdict = remote_job.verdict_of(instance)
    if verdict is InstanceVerdict.READY:
        return StepResult(changes={"state": JobState.CONNECTING.value}, immediate=True)
    if instance.pull_error:
        # The image cannot be pulled: another host would fail the same way, so the job fails
        # now (not at the boot deadline, not by re-renting), quoting the provider's own words.
        reason = (
            f"instance {instance.provider_id} could not pull the image: “{instance.pull_error}”"
        )
        return _with_destroy_now(deps, job, _teardown(job, outcome=JobState.FAILED, reason=reason))
    if verdict is InstanceVerdict.LOST:
        return _interrupted(job, instance, f"instance {instance.provider_id} failed to start")
    if deps.clock() - job.step_started_at > _boot_deadline(deps, job):
        return _interrupted(job, instance, f"instance {instance.provider_id} did not boot in time")
    detail = f"instance {instance.provider_id}: {instance.provider_status or 'requested'}"
    return StepResult(changes={"phase_detail": detail})


def _boot_deadline(deps: EngineDeps, job: JobRow) -> timedelta:
    """The template's ``resources.boot_timeout_minutes``, else lifecycle.BOOT_DEADLINE."""
    template = deps.config.templates.get(job.template)
    minutes = template.resources.boot_timeout_minutes if template is not None else None
    return timedelta(minutes=minutes) if minutes else BOOT_DEADLINE


def _step_connecting(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    if instance is None:
        return StepResult(changes={"state": JobState.RENTING.value}, immediate=True)
    verdict = remote_job.verdict_of(instance)
    if verdict is InstanceVerdict.LOST:
        reason = f"instance {instance.provider_id} lost while connecting"
        return _interrupted(job, instance, reason)
    try:
        with remote_job.connect(deps, instance) as session:
            root = session.discover_root()
            session.prepare(job.id)
            host_key = session.host_key
    except remote_job.BadRemoteRoot as exc:
        # The host answers this way every time: give it up now (blocked, re-rented).
        return _interrupted(job, instance, str(exc))
    except RemoteError as exc:
        if deps.clock() - job.step_started_at > CONNECT_DEADLINE:
            return _interrupted(job, instance, f"SSH never accepted us: {exc}")
        # An attach that failed at rent time (logged, not retried there) is retried here.
        _attach_key_quietly(deps, job, instance.provider_id)
        return StepResult(changes={"phase_detail": f"waiting for SSH: {exc}"[:300]})
    return StepResult(
        changes={"state": JobState.DEPLOYING.value, "remote_root": root, "phase_detail": ""},
        instance_changes={instance.id: {"host_key": host_key, "status": "running"}},
        immediate=True,
    )


def _step_deploying(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    if instance is None:
        return StepResult(changes={"state": JobState.RENTING.value}, immediate=True)
    if job.kind == "interactive":
        return StepResult(
            changes={"state": JobState.RUNNING.value, "phase_detail": ""},
            notes=[lambda s, j: events.interactive_ready(s, j, instance)],
        )
    template = deps.config.templates[job.template]
    changes: dict[str, Any] = {}
    with remote_job.connect(deps, instance) as session:
        session.deploy(job, template)
        if getattr(template, "data", None) or (job.params or {}).get("_inputs"):
            from gpubot.engine import staging
            try:
                report = staging.stage_inputs(session, deps, job, template)
            except StorageError as exc:
                return _teardown(job, outcome=JobState.FAILED, reason=f"data staging: {exc}")
            progress = dict(job.progress or {})
            progress["staging"] = _jsonable(report)
            changes["progress"] = progress
    next_state = JobState.RESTORING if job.checkpoint_key else JobState.SETTING_UP
    changes["state"] = next_state.value
    return StepResult(changes=changes, immediate=True)


def _jsonable(report: object) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return {k: v for k, v in dataclasses.asdict(report).items()}
    return dict(report) if isinstance(report, dict) else {"report": str(report)}


def _step_restoring(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    if instance is None or not job.checkpoint_key:
        return StepResult(changes={"state": JobState.SETTING_UP.value}, immediate=True)
    with remote_job.connect(deps, instance) as session:
        resume_from = session.restore_checkpoint(job, job.checkpoint_key)
    progress = dict(job.progress or {}) | {"resume_from": resume_from}
    return StepResult(
        changes={"state": JobState.SETTING_UP.value, "progress": progress},
        immediate=True,
        notes=[lambda s, j: events.restored(s, j, job.checkpoint_key or "")],
    )


def _step_setting_up(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    """Start setup+run detached (idempotent), then wait for the run phase."""
    if instance is None:
        return StepResult(changes={"state": JobState.RENTING.value}, immediate=True)
    if remote_job.verdict_of(instance) is InstanceVerdict.LOST:
        return _interrupted(job, instance, "instance lost during setup")
    template = deps.config.templates[job.template]
    with remote_job.connect(deps, instance) as session:
        started = session.start(job, template)
    if started.phase == "failed":
        return _teardown(job, outcome=JobState.FAILED, reason=started.message)
    if started.phase == "run":
        # The idle/stuck clock starts afresh on this rental: an ``idle_since`` left from a
        # lost one (outbid while idle) would call the new process stuck at its first poll.
        return StepResult(
            changes={
                "state": JobState.RUNNING.value,
                "phase_detail": "",
                "idle_since": None,
                "idle_warned_at": None,
            },
            notes=[lambda s, j: events.started(s, j)],
        )
    if deps.clock() - job.step_started_at > SETUP_DEADLINE:
        return _teardown(job, outcome=JobState.FAILED, reason="setup did not finish in time")
    return StepResult(changes={"phase_detail": "setup running"})


def _step_running(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    if instance is None:
        return StepResult(changes={"state": JobState.INTERRUPTED.value}, immediate=True)
    verdict = remote_job.verdict_of(instance)
    if verdict in {InstanceVerdict.LOST, InstanceVerdict.STOPPED}:
        return _interrupted(job, instance, remote_job.loss_reason(instance))
    if job.kind == "interactive":
        return _running_interactive(deps, job, instance)
    with remote_job.connect(deps, instance) as session:
        status = session.status(job)
        over = _past_approved_hours(deps, job) if status.exit_code is None else None
        # Past its approved hours the job stops like a budget stop: final checkpoint first.
        new_checkpoint = _backup_checkpoints_with(session, deps, job, final=over is not None)
    changes: dict[str, Any] = {"phase_detail": ""}
    notes: list[Callable[[Session, JobRow], None]] = []
    progress = remote_job.merge_progress(job, status, deps.clock())
    changes["progress"] = progress
    changes["metrics_history"] = remote_job.merge_history(job, status)
    if new_checkpoint and new_checkpoint != job.checkpoint_key:
        changes["checkpoint_key"] = new_checkpoint
        notes.append(lambda s, j: events.checkpoint_saved(s, j, new_checkpoint))
    idle_decision = idle.decide(deps, job, instance, status)
    changes.update(idle_decision.changes)
    if status.exit_code is not None:
        changes["exit_code"] = status.exit_code
        if status.exit_code == 0:
            changes.update(state=JobState.COLLECTING.value)
            return StepResult(changes=changes, notes=notes, immediate=True)
        reason = remote_job.failure_reason(status)
        result = _teardown(job, outcome=JobState.FAILED, reason=reason, extra=changes)
        result.notes = notes
        return result
    if status.vanished:
        return _process_gone(deps, job, instance, changes, notes)
    if over is not None:
        result = _teardown(job, outcome=JobState.FAILED, reason=over, extra=changes)
        result.notes = [*notes, lambda s, j: events.note(s, j, render_limits.duration_stop(over))]
        return result
    if idle_decision.stop_reason:
        reason = idle_decision.stop_reason
        return _teardown(job, outcome=JobState.FAILED, reason=reason, extra=changes)
    if idle_decision.warning:
        notes.append(_idle_warning_note(idle_decision.warning))
    return StepResult(changes=changes, notes=notes)


def _running_interactive(
    deps: EngineDeps, job: JobRow, instance: InstanceRow
) -> StepResult:
    over = _past_approved_hours(deps, job)
    if over is not None:
        result = _teardown(job, outcome=JobState.CANCELLED, reason=over)
        result.notes = [lambda s, j: events.note(s, j, render_limits.duration_stop(over))]
        return result
    idle_decision = idle.decide(deps, job, instance, None)
    changes = dict(idle_decision.changes)
    if idle_decision.stop_reason:
        reason = idle_decision.stop_reason
        return _teardown(job, outcome=JobState.CANCELLED, reason=reason, extra=changes)
    notes = [_idle_warning_note(idle_decision.warning)] if idle_decision.warning else []
    return StepResult(changes=changes, notes=notes)


def rented_time(deps: EngineDeps, job_id: str) -> timedelta:
    """How long the job's rentals have been running in all: per instance, from
    ``running_since`` to its destroy request (or now while it is current). Boot time before
    ``running_since`` is not counted; every re-rent adds its own running time."""
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        rows = session.execute(
            select(
                InstanceRow.running_since,
                InstanceRow.destroy_requested_at,
                InstanceRow.destroyed_at,
            ).where(InstanceRow.job_id == job_id, InstanceRow.running_since.is_not(None))
        ).all()
    total = timedelta(0)
    for since, requested, destroyed in rows:
        end = requested or destroyed or now
        if end > since:
            total += end - since
    return total


def _past_approved_hours(deps: EngineDeps, job: JobRow) -> str | None:
    """The stop reason when the job has run past its approved hours plus the grace
    (:func:`gpubot.engine.planning.duration_limit`), else None (also for jobs without
    stored approved hours)."""
    if job.approved_hours is None:
        return None
    hours = float(job.approved_hours)
    ran = rented_time(deps, job.id)
    if ran <= planning.duration_limit(hours):
        return None
    return render_limits.duration_stop_reason(
        ran_hours=ran.total_seconds() / 3600,
        approved_hours=hours,
        grace_minutes=planning.duration_grace(hours).total_seconds() / 60,
    )


def _idle_warning_note(text: str) -> Callable[[Session, JobRow], None]:
    """The idle/stuck warning as an outbox write of the applying transaction."""
    return lambda s, j: events.idle_warning(s, j, text)


def _step_collecting(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    if instance is None:
        return _teardown(job, outcome=JobState.FAILED, reason="instance gone before collection")
    if remote_job.verdict_of(instance) in {InstanceVerdict.LOST, InstanceVerdict.STOPPED}:
        # Outbid (or lost) after the exit and before the collection: its results are out of
        # reach (SSH to a stopped instance fails until the retries give up and fail the
        # job). It is lost work like an outbid mid-run: rent another and run it again from
        # the newest backed-up checkpoint.
        result = _interrupted(
            job, instance,
            f"{remote_job.loss_reason(instance)} before its results were collected",
        )
        result.changes["exit_code"] = None
        return result
    with remote_job.connect(deps, instance) as session:
        _backup_checkpoints_with(session, deps, job)
        results = session.collect_results(job)
    return _teardown(
        job,
        outcome=JobState.SUCCEEDED,
        extra={"results": {"files": results}},
    )


def _step_interrupted(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    """The instance was lost: destroy it (recorded), then rent another or give up."""
    changes: dict[str, Any] = {}
    instance_changes: dict[int, dict[str, Any]] = {}
    if instance is not None:
        remote_job.request_destroy(deps, instance)
        instance_changes[instance.id] = {
            "destroy_requested_at": deps.clock(),
            "status": "destroying",
        }
        excluded = dict(job.failed_offer_ids or {})
        hosts = list(excluded.get("hosts", []))
        host = str((instance.offer or {}).get("host_id", ""))
        if host:
            hosts.append(host)
        changes["failed_offer_ids"] = {**excluded, "hosts": hosts[-50:]}
    max_attempts = deps.config.engine.max_attempts
    if job.attempts >= max_attempts:
        result = _teardown(
            job,
            outcome=JobState.FAILED,
            reason=f"interrupted {job.attempts} times (limit {max_attempts}): {job.reason}",
            extra=changes,
        )
        result.instance_changes = instance_changes
        return result
    changes["state"] = JobState.RE_RENTING.value
    return StepResult(
        changes=changes,
        instance_changes=instance_changes,
        immediate=True,
        notes=[lambda s, j: events.interrupted(s, j)],
    )


def _step_tearing_down(deps: EngineDeps, job: JobRow, instance: InstanceRow | None) -> StepResult:
    """Kill, destroy and verify every rental of the job; then the terminal state."""
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        rows = list(
            session.scalars(
                select(InstanceRow).where(
                    InstanceRow.job_id == job.id, InstanceRow.destroyed_at.is_(None)
                )
            )
        )
        for row in rows:
            session.expunge(row)
    instance_changes: dict[int, dict[str, Any]] = {}
    pending = []
    for row in rows:
        if row.provider_id is None:
            instance_changes[row.id] = {"status": "abandoned", "destroyed_at": now}
            continue
        if row.provider_status == "gone" and row.destroy_requested_at is not None:
            instance_changes[row.id] = {"status": "destroyed", "destroyed_at": now}
            continue
        due = row.destroy_requested_at is None or (
            now - row.destroy_requested_at >= DESTROY_RETRY_INTERVAL
        )
        if due:
            if (
                row.destroy_requested_at is None
                and row.status == "running"
                and job.exit_code is None
            ):
                # A process that recorded its exit code has nothing left to stop: the destroy
                # is not delayed behind a kill (SSH round trip and its grace wait).
                remote_job.kill_quietly(deps, row, job)
            try:
                remote_job.request_destroy(deps, row)
            except ProviderError as exc:
                # Record the attempt anyway: the destroy deadline (and its escalation) runs
                # from the first attempt. Raising here lost ``destroy_requested_at``, so a
                # DELETE that kept failing was never escalated (found by tests/faults).
                logger.warning("job %s: destroy of %s failed: %s", job.id, row.provider_id, exc)
            instance_changes[row.id] = {
                "destroy_requested_at": row.destroy_requested_at or now,
                "status": "destroying",
            }
        pending.append(row)
    if pending:
        deadline = timedelta(minutes=deps.config.engine.destroy_deadline_minutes)
        first = min((r.destroy_requested_at or now) for r in pending)
        notes: list[Callable[[Session, JobRow], None]] = []
        if now - first > deadline:
            for row in pending:
                if row.escalated_at is None:
                    instance_changes.setdefault(row.id, {})["escalated_at"] = now
                    notes.append(lambda s, j, r=row: events.destroy_escalation(s, j, r))
        return StepResult(
            changes={"phase_detail": "waiting for the provider to confirm destruction"},
            instance_changes=instance_changes,
            notes=notes,
        )
    outcome = JobState(job.outcome or JobState.FAILED.value)
    return StepResult(
        changes={"state": outcome.value, "finished_at": now, "phase_detail": ""},
        instance_changes=instance_changes,
        notes=[lambda s, j: events.finished(s, j, charts_dir=deps.settings.home / "charts")],
    )


# -- helpers ----------------------------------------------------------------------------------


def _attach_key_quietly(deps: EngineDeps, job: JobRow, provider_id: str | None) -> None:
    """Authorise the bot's SSH key on the instance (idempotent); a failure is logged and
    retried by the connecting step while SSH refuses us."""
    if not provider_id:
        return
    try:
        deps.provider.attach_ssh_key(provider_id, deps.ssh_public_key)
    except ProviderError as exc:
        logger.info("job %s: attach_ssh on %s failed, will retry: %s", job.id, provider_id, exc)


def _interrupted(job: JobRow, instance: InstanceRow, reason: str) -> StepResult:
    return StepResult(
        changes={"state": JobState.INTERRUPTED.value, "reason": reason},
        immediate=True,
    )


PROCESS_GONE = "the job's process is gone without an exit code (killed or the host rebooted)"


def _process_gone(
    deps: EngineDeps,
    job: JobRow,
    instance: InstanceRow,
    changes: dict[str, Any],
    notes: list[Callable[[Session, JobRow], None]],
) -> StepResult:
    """The job's process vanished (no exit code) on an instance still listed running: a host
    reboot or container restart keeps the files and loses the processes (the simulator's
    restart does the same). That is lost work, not a job failure: the job goes to
    ``interrupted`` like a lost instance (the instance is destroyed, another rented within
    ``[engine] max_attempts``, then the job fails with this reason). It resumes from the
    newest backed-up checkpoint (``changes`` carries one backed up by this very step), else it
    restarts from scratch; the reason, posted in the thread, says which."""
    template = deps.config.templates.get(job.template)
    if changes.get("checkpoint_key") or job.checkpoint_key:
        then = "resuming from the newest checkpoint on a new instance"
    elif template is not None and template.resources.checkpoints:
        then = "no checkpoint was saved yet: restarting from scratch on a new instance"
    else:
        then = "the template saves no checkpoints: restarting from scratch on a new instance"
    result = _interrupted(job, instance, f"{PROCESS_GONE}; {then}")
    result.changes = {**changes, **result.changes}
    result.notes = notes
    return result


def _backup_checkpoints(
    deps: EngineDeps, job: JobRow, instance: InstanceRow, *, final: bool = False
) -> str | None:
    with remote_job.connect(deps, instance) as session:
        return _backup_checkpoints_with(session, deps, job, final=final)


def _backup_checkpoints_with(
    session: remote_job.RemoteSession, deps: EngineDeps, job: JobRow, *, final: bool = False
) -> str | None:
    template = deps.config.templates.get(job.template)
    if template is None or not template.resources.checkpoints:
        return None
    return session.backup_checkpoints(job, final=final)


_STEPS: dict[JobState, Callable[[EngineDeps, JobRow, InstanceRow | None], StepResult]] = {
    JobState.QUEUED: _step_queued,
    JobState.RENTING: _step_renting,
    JobState.RE_RENTING: _step_renting,
    JobState.BOOTING: _step_booting,
    JobState.CONNECTING: _step_connecting,
    JobState.DEPLOYING: _step_deploying,
    JobState.RESTORING: _step_restoring,
    JobState.SETTING_UP: _step_setting_up,
    JobState.RUNNING: _step_running,
    JobState.INTERRUPTED: _step_interrupted,
    JobState.COLLECTING: _step_collecting,
    JobState.TEARING_DOWN: _step_tearing_down,
}
