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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select, update
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


_INSTANCE = InstanceRow.__table__
_METER_COLUMNS = (
    "id", "job_id", "provider_id", "created_at", "metered_until", "destroy_requested_at",
    "destroyed_at", "status", "provider_status", "price_per_hour_usd",
    "storage_per_gb_month_usd", "disk_gb", "upload_per_gb_usd", "download_per_gb_usd",
    "bytes_up_billed", "bytes_down_billed", "ssh_host", "ssh_port", "gpu_util_pct",
    "pull_error", "last_seen_at", "running_since",
)
"""The ``instances`` columns metering reads."""
_WRITTEN_COLUMNS = (
    "metered_until", "destroyed_at", "status", "provider_status", "price_per_hour_usd",
    "bytes_up_billed", "bytes_down_billed", "ssh_host", "ssh_port", "gpu_util_pct",
    "pull_error", "last_seen_at", "running_since",
)
"""The ``instances`` columns an observation may change (one executemany writes them)."""


class MeteredInstance:
    """One ``instances`` row as metering reads and changes it: the :data:`_METER_COLUMNS` as
    attributes (the same names and Python types as on :class:`InstanceRow`), loaded with Core,
    not as an ORM object (1000 rows per tick at 1000 jobs)."""

    __slots__ = (*_METER_COLUMNS, "_loaded")

    def __init__(self, values: Mapping[str, Any]) -> None:
        for name in _METER_COLUMNS:
            setattr(self, name, values[name])
        self._loaded = tuple(values[name] for name in _WRITTEN_COLUMNS)

    def changes(self) -> dict[str, Any] | None:
        """Every written column's value (``_id`` keyed by the row id) when any changed since
        loading, else None."""
        now = tuple(getattr(self, name) for name in _WRITTEN_COLUMNS)
        if now == self._loaded:
            return None
        return {"_id": self.id, **dict(zip(_WRITTEN_COLUMNS, now, strict=True))}


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

    Statements, whatever the number of instances: one locking SELECT of the live instance
    rows, one SELECT of their jobs' requester and channel, one executemany UPDATE of the rows
    that changed, and :func:`append_ledger`'s insert and summary upsert. No ORM objects: the
    rows are read and written with Core in ``session``'s transaction (objects of
    ``InstanceRow`` already loaded in ``session`` are not refreshed).
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
    rows = [
        MeteredInstance(values)
        for values in session.execute(
            select(*(_INSTANCE.c[name] for name in _METER_COLUMNS))
            .where(_INSTANCE.c.provider_id.is_not(None), _INSTANCE.c.destroyed_at.is_(None))
            .order_by(_INSTANCE.c.id)
            .with_for_update()
        ).mappings()
    ]
    # One query for the jobs' requester/channel (copied onto the ledger), not one per instance.
    job_ids = {row.job_id for row in rows}
    jobs: dict[str, tuple[str, str]] = (
        {
            job_id: (requester, channel)
            for job_id, requester, channel in session.execute(
                select(JobRow.id, JobRow.requester, JobRow.channel).where(
                    JobRow.id.in_(job_ids)
                )
            )
        }
        if job_ids
        else {}
    )
    ledger: list[dict[str, object]] = []
    changed: list[dict[str, Any]] = []
    verified = 0
    for row in rows:
        assert row.provider_id is not None
        obs = by_id.get(row.provider_id)
        if obs is None and (not listed_ok or row.provider_id in unreadable):
            continue
        _apply_observation(ledger, row, jobs.get(row.job_id), obs, now)
        verified += int(obs is None and row.destroyed_at == now)
        values = row.changes()
        if values is not None:
            changed.append(values)
    if changed:
        session.execute(
            # SET takes the parameters' other keys (the written columns).
            update(_INSTANCE).where(_INSTANCE.c.id == bindparam("_id")),
            changed,
        )
    append_ledger(session, ledger)
    return len(ledger), verified


def append_ledger(session: Session, entries: list[dict[str, object]]) -> None:
    """THE tick's ledger write: ``entries`` (LedgerEntryRow column values) inserted with one
    Core executemany (multi-row VALUES), and their per-day spend summaries upserted with one
    more, in the caller's transaction; both commit or neither does. No ORM objects (2,000 per
    tick at 1000 jobs), so the ``before_flush`` summary hook does not see them: the summaries
    are added here, exactly once."""
    if not entries:
        return
    session.execute(LedgerEntryRow.__table__.insert(), entries)
    add_to_summaries(session, entries)


def _apply_observation(
    ledger: list[dict[str, object]],
    row: MeteredInstance,
    job: tuple[str, str] | None,
    obs: InstanceObservation | None,
    now: datetime,
) -> None:
    """Meter ``row`` into ``ledger`` and copy what the provider says onto it. ``job`` is the
    job's (requester, channel)."""
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
    row: MeteredInstance,
    job: tuple[str, str] | None,
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
                "requester": job[0] if job else "",
                "channel": job[1] if job else "",
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
