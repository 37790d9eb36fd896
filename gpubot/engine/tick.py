"""The level-triggered reconcile tick.

Every ``GPUBOT_TICK_SECONDS`` the tick:
1. lists the account's instances once (all pages) — a failed listing is an error, never
   evidence that nothing exists; the listing is skipped (the same as failed) when the
   provider's list turn is not free right now, so a tick never waits on the rate limit;
2. writes what it saw onto our instance rows and meters the ledger (compute while running,
   storage until the destroy was requested, bandwidth from the provider's counters). A listed
   row that failed validation (``readable=False``, see providers/vastai/parsing.py) is counted
   in the ``provider_rows_rejected`` counter and skipped: its instance is known to exist, so it
   is neither metered nor taken as gone this tick (metering resumes from ``metered_until`` once
   the row reads again);
3. verifies requested destroys (the instance left the listing);
4. every few ticks, sweeps orphans (labelled instances without a live record);
5. claims due jobs with lock tokens and hands each to ``advance_job``.

A lost message or a killed worker costs at most one tick: everything is derived again from
the stored state and the provider's listing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gpubot import costs
from gpubot.db.engine import session_scope
from gpubot.db.queries import claim_due_jobs
from gpubot.db.spend import add_to_summaries
from gpubot.db.tables import CounterRow, InstanceRow, JobRow, LedgerEntryRow
from gpubot.deps import EngineDeps
from gpubot.errors import ProviderError, RateLimitedError
from gpubot.models import InstanceObservation
from gpubot.pace import waiting_at_most

logger = logging.getLogger(__name__)

CLAIM_LIMIT = 1000
"""Jobs claimed per tick. Each becomes one Celery task, so a tick's own cost barely grows with
it; a smaller limit would make every job wait several ticks at scale (bench/tick_cpu.py)."""

GONE = "gone"
"""provider_status of a row whose instance was absent from a successful listing."""
ROWS_REJECTED_COUNTER = "provider_rows_rejected"
"""CounterRow name: listed instance rows skipped because a field failed validation (exposed on
/metrics as ``gpubot_provider_rows_rejected_total``)."""


@dataclass
class TickReport:
    listed_ok: bool
    instances_seen: int = 0
    rows_rejected: int = 0
    ledger_entries: int = 0
    destroys_verified: int = 0
    claimed: list[tuple[str, str]] = field(default_factory=list)
    orphans_destroyed: list[str] = field(default_factory=list)
    stopped_for_budget: list[str] = field(default_factory=list)


def reconcile_tick(
    deps: EngineDeps,
    *,
    dispatch: Callable[[str, str], None],
    sweep: bool = False,
) -> TickReport:
    """One tick. ``dispatch(job_id, lock_token)`` runs or enqueues the job's step."""
    now = deps.clock()
    try:
        # Only if the list turn is free now: a tick queued behind other callers' turns would
        # hold its worker while ticks pile up behind it and starve the job steps.
        with waiting_at_most(0.0):
            listing = deps.provider.list_instances()
        listed_ok = True
    except RateLimitedError as exc:
        logger.info("tick: instance listing skipped (unavailable), nothing presumed gone: %s", exc)
        listing = []
        listed_ok = False
    except ProviderError as exc:
        logger.warning("tick: instance listing failed, nothing is presumed gone: %s", exc)
        listing = []
        listed_ok = False
    report = TickReport(listed_ok=listed_ok, instances_seen=len(listing))
    report.rows_rejected = sum(1 for obs in listing if not obs.readable)
    with session_scope(deps.sessions) as session:
        if report.rows_rejected:
            add_to_counter(session, ROWS_REJECTED_COUNTER, report.rows_rejected)
        entries, verified = observe_and_meter(session, listing, listed_ok=listed_ok, now=now)
        report.ledger_entries = entries
        report.destroys_verified = verified
    from gpubot.governance import enforce
    report.stopped_for_budget = enforce.enforce(
        deps, now=now, tick_interval_seconds=_observed_interval(now)
    )
    from gpubot import groups
    groups.advance_groups(deps, now=now)
    if sweep and listed_ok:
        from gpubot.engine import orphans as sweeper
        report.orphans_destroyed = sweeper.sweep_orphans(deps, listing, now=now)
    with session_scope(deps.sessions) as session:
        report.claimed = claim_due_jobs(session, now=now, limit=CLAIM_LIMIT)
    for job_id, token in report.claimed:
        dispatch(job_id, token)
    return report


_last_tick_at: datetime | None = None


def _observed_interval(now: datetime) -> float | None:
    """Seconds since this process's previous tick (slow steps stretch the real interval)."""
    global _last_tick_at
    previous, _last_tick_at = _last_tick_at, now
    if previous is None or now <= previous:
        return None
    return min((now - previous).total_seconds(), 3600.0)


def observe_and_meter(
    session: Session,
    listing: Iterable[InstanceObservation],
    *,
    listed_ok: bool,
    now: datetime,
) -> tuple[int, int]:
    """Apply the listing to our rows and append ledger entries. Returns (entries, verified).

    Unreadable observations (``readable=False``) are skipped: a row whose instance was listed
    unreadable keeps its state and meters nothing this tick; it is never marked gone.
    """
    by_id: dict[str, InstanceObservation] = {}
    unreadable: set[str] = set()
    for obs in listing:
        if obs.readable:
            by_id[obs.provider_id] = obs
        elif obs.provider_id:
            unreadable.add(obs.provider_id)
    # FOR UPDATE, in id order: two workers may run ticks at the same moment. Without the row
    # locks both read the same ``metered_until`` and append the same interval to the ledger
    # twice; without a fixed order they deadlock on each other's rows (both seen with two real
    # workers on PostgreSQL in tests/faults). With them the second tick waits, then re-reads
    # the rows as the first one left them and meters only what is new. (No-op on SQLite,
    # which serialises writers anyway.)
    rows = session.scalars(
        select(InstanceRow)
        .where(InstanceRow.provider_id.is_not(None), InstanceRow.destroyed_at.is_(None))
        .order_by(InstanceRow.id)
        .with_for_update()
    ).all()
    # One query for the jobs (requester/channel on the ledger), not one per instance; and no
    # autoflush, so the ledger rows added below are written once at commit instead of being
    # flushed before every lookup (bench/tick_cpu.py: 1000 flushes per tick at 1000 jobs).
    job_ids = {row.job_id for row in rows}
    jobs: dict[str, JobRow] = (
        {j.id: j for j in session.scalars(select(JobRow).where(JobRow.id.in_(job_ids)))}
        if job_ids
        else {}
    )
    ledger: list[dict[str, object]] = []
    verified = 0
    with session.no_autoflush:
        for row in rows:
            assert row.provider_id is not None
            obs = by_id.get(row.provider_id)
            if obs is None and (not listed_ok or row.provider_id in unreadable):
                continue
            _apply_observation(ledger, row, jobs.get(row.job_id), obs, now)
            verified += int(obs is None and row.destroyed_at == now)
    append_ledger(session, ledger)
    return len(ledger), verified


def append_ledger(session: Session, entries: list[dict[str, object]]) -> None:
    """THE tick's ledger write: ``entries`` (LedgerEntryRow column values) inserted with one
    executemany, and their per-day spend summaries upserted with one more, in the caller's
    transaction; both commit or neither does. No ORM objects (2,000 per tick at 1000 jobs)."""
    if not entries:
        return
    session.execute(insert(LedgerEntryRow), entries)
    add_to_summaries(session, entries)


def _apply_observation(
    ledger: list[dict[str, object]],
    row: InstanceRow,
    job: JobRow | None,
    obs: InstanceObservation | None,
    now: datetime,
) -> None:
    """Meter ``row`` into ``ledger`` and copy what the provider says onto it."""
    _meter(ledger, row, job, obs, now)
    if obs is None:
        row.provider_status = GONE
        if row.destroy_requested_at is not None:
            row.destroyed_at = now
            row.status = "destroyed"
        return
    row.provider_status = obs.status.value
    row.ssh_host = obs.ssh_host
    row.ssh_port = obs.ssh_port
    # None when the host sent no sample (null, or the 0/0 util/temperature pair): never a
    # stale or invented "idle" reading (services/idle.py treats None as "no sample").
    row.gpu_util_pct = obs.gpu_util_pct
    row.pull_error = obs.pull_error
    row.last_seen_at = now
    if obs.compute_per_hour_usd is not None and obs.price_per_hour_usd > 0:
        # The compute rate only: vast's dph_total includes storage ("$/hr, current price incl.
        # storage", vastai Instance dataclass / vast docs), and storage is metered on its own
        # below for the whole life of the instance.
        row.price_per_hour_usd = obs.compute_per_hour_usd
    if obs.status.value == "running" and row.running_since is None:
        row.running_since = now


def _meter(
    ledger: list[dict[str, object]],
    row: InstanceRow,
    job: JobRow | None,
    obs: InstanceObservation | None,
    now: datetime,
) -> None:
    """Append to ``ledger`` the entries for ``row`` from ``metered_until`` to now (or the
    destroy request).

    Compute is charged for the interval when the instance was running at its start (the
    previous observation); storage for the whole life until the destroy request, or longer
    while the instance is still listed after it; bandwidth
    from the growth of the provider's billed-bytes counters.

    The entries are written by :func:`append_ledger` with their spend summaries (what budget
    enforcement reads instead of the ledger), in the metering transaction.
    """
    start = row.metered_until or row.created_at
    end = now
    if row.destroy_requested_at is not None and obs is None:
        # Billing stops when the instance is gone. While it is still listed (a destroy that
        # keeps failing) vast keeps charging, so we keep metering: stopping at the request
        # left the ledger (and budgets) short by the whole outage (found by tests/faults).
        end = min(end, max(row.destroy_requested_at, start))
    amounts: list[tuple[str, Decimal]] = []
    seconds = (end - start).total_seconds()
    if seconds > 0:
        if row.provider_status == "running":
            amounts.append(
                ("compute", costs.compute_cost_usd(row.price_per_hour_usd, seconds))
            )
        amounts.append(
            (
                "storage",
                costs.storage_cost_usd(row.storage_per_gb_month_usd, row.disk_gb, seconds),
            )
        )
    if obs is not None:
        # Bytes, converted and validated by the provider adapter (vast sends kilobytes).
        up = obs.bytes_up_billed if obs.bytes_up_billed is not None else row.bytes_up_billed
        down = (
            obs.bytes_down_billed if obs.bytes_down_billed is not None else row.bytes_down_billed
        )
        delta_up = max(0, up - row.bytes_up_billed)
        delta_down = max(0, down - row.bytes_down_billed)
        if delta_up or delta_down:
            amounts.append(
                (
                    "bandwidth",
                    costs.bandwidth_cost_usd(
                        delta_up, delta_down, row.upload_per_gb_usd, row.download_per_gb_usd
                    ),
                )
            )
            row.bytes_up_billed = max(row.bytes_up_billed, up)
            row.bytes_down_billed = max(row.bytes_down_billed, down)
    for kind, amount in amounts:
        if amount <= 0:
            continue
        ledger.append(
            {
                "instance_id": row.id,
                "job_id": row.job_id,
                "requester": job.requester if job else "",
                "channel": job.channel if job else "",
                "kind": kind,
                "amount_usd": amount,
                "period_start": start,
                "period_end": max(start, end),
                "created_at": now,
            }
        )
    if end > start:
        row.metered_until = end


def add_to_counter(session: Session, name: str, amount: int) -> None:
    """Add ``amount`` to the monotonic counter ``name`` (created at 0 when missing).

    Atomic across workers: one ``UPDATE ... SET value = value + n``; the first increment inserts
    the row inside a savepoint and, if another worker inserted it first, updates instead.
    """
    stmt = (
        update(CounterRow)
        .where(CounterRow.name == name)
        .values(value=CounterRow.value + amount)
    )
    if session.execute(stmt).rowcount:  # type: ignore[attr-defined]
        return
    try:
        with session.begin_nested():
            session.add(CounterRow(name=name, value=amount))
    except IntegrityError:
        session.execute(stmt)
