"""SQLAlchemy 2 models: the bot's whole durable state.

Rules (dstack pipelines): a job row is changed only by the worker holding its ``lock_token``;
results are applied with ``UPDATE ... WHERE id = ? AND lock_token = ?`` (see queries.py). No
network call happens inside a session. Money columns are NUMERIC(18, 8) in USD.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

MONEY = Numeric(18, 8, asdecimal=True)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime, Decimal: MONEY}


class JobGroupRow(Base):
    """A sweep or a sharded run: one parent thread, many child jobs."""

    __tablename__ = "job_groups"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    """``sweep`` or ``shards``."""
    template: Mapped[str] = mapped_column(String(64))
    requester: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    thread_ts: Mapped[str | None] = mapped_column(String(32))
    budget_usd: Mapped[Decimal | None]
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(24), default="running")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobRow(Base):
    """One unit of work: a templated job or an interactive rental."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="job")
    """``job`` (runs a template to completion) or ``interactive`` (``/gpu rent``)."""
    template: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Typed template parameters as JSON-safe values (exported as GPUBOT_PARAM_<NAME>)."""
    resources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The offer choice and estimate shown to the user when it was accepted."""
    requester: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    thread_ts: Mapped[str | None] = mapped_column(String(32))
    request_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    """Idempotency key of the launching request: a redelivered command never launches twice."""
    group_id: Mapped[str | None] = mapped_column(ForeignKey("job_groups.id"))
    state: Mapped[str] = mapped_column(String(24), index=True)
    """A gpubot.models.JobState value; changed only through queries.apply_job_update."""
    phase_detail: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Rentals made for this job so far (1 + re-rents after interruptions)."""
    budget_usd: Mapped[Decimal | None]
    price_ceiling_per_hour_usd: Mapped[Decimal | None]
    """The most the renting steps may pay per hour (charged price: bid + storage, or on-demand
    ``dph_total``), fixed at submit from the accepted plan (``planning.price_ceiling``). None
    for jobs from before the limit existed (no cap)."""
    approved_hours: Mapped[float | None]
    """The run time the launch was planned and approved for (``hours=`` or the template's
    ``expected_hours``); the running step stops the job past it plus
    ``planning.duration_grace``. None for jobs from before the limit existed."""
    alerted_pcts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rental_type: Mapped[str | None] = mapped_column(String(16))
    remote_root: Mapped[str | None] = mapped_column(String(512))
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics_history: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """``{"points": [[step, loss], ...]}`` for the loss chart (bounded)."""
    checkpoint_key: Mapped[str | None] = mapped_column(String(512))
    """Object-store key prefix of the newest complete checkpoint backed up."""
    results: Mapped[dict[str, Any]] = mapped_column(default=dict)
    exit_code: Mapped[int | None]
    outcome: Mapped[str | None] = mapped_column(String(24))
    """The terminal state decided before teardown (succeeded, failed, cancelled)."""
    failed_offer_ids: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """``{"offers": [...], "hosts": [...]}`` not to rent again for this job."""
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    stop_requested_reason: Mapped[str | None] = mapped_column(Text)
    keep_until: Mapped[datetime | None]
    idle_since: Mapped[datetime | None]
    idle_warned_at: Mapped[datetime | None]
    step_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    due_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    lock_token: Mapped[str | None] = mapped_column(String(36))
    lock_expires_at: Mapped[datetime | None]
    last_processed_at: Mapped[datetime | None]


class InstanceRow(Base):
    """One rental. Created BEFORE the provider call that rents it (state ``requested``), so a
    crash never leaves an instance billing without a record."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    provider_id: Mapped[str | None] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(128), index=True)
    offer: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Snapshot of the offer as rented."""
    gpu_name: Mapped[str] = mapped_column(String(64), default="")
    price_per_hour_usd: Mapped[Decimal]
    storage_per_gb_month_usd: Mapped[Decimal] = mapped_column(default=Decimal(0))
    upload_per_gb_usd: Mapped[Decimal] = mapped_column(default=Decimal(0))
    download_per_gb_usd: Mapped[Decimal] = mapped_column(default=Decimal(0))
    disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    rental_type: Mapped[str] = mapped_column(String(16))
    bid_per_hour_usd: Mapped[Decimal | None]
    status: Mapped[str] = mapped_column(String(24), default="requested", index=True)
    """requested → provisioning → running → (outbid|lost) → destroying → destroyed."""
    provider_status: Mapped[str | None] = mapped_column(String(24))
    ssh_host: Mapped[str | None] = mapped_column(String(255))
    ssh_port: Mapped[int | None]
    host_key: Mapped[str | None] = mapped_column(Text)
    """Pinned SSH host key (trust on first use)."""
    gpu_util_pct: Mapped[float | None]
    bytes_up_billed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_down_billed: Mapped[int] = mapped_column(BigInteger, default=0)
    """Cumulative billed traffic in bytes (BIGINT: a 32-bit column overflows at 2.1 GB)."""
    pull_error: Mapped[str | None] = mapped_column(Text)
    """The provider's message when the image could not be pulled (the booting step fails the
    job quoting it); None otherwise."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    running_since: Mapped[datetime | None]
    metered_until: Mapped[datetime | None]
    """Compute/storage are metered into the ledger up to this instant."""
    last_seen_at: Mapped[datetime | None]
    destroy_requested_at: Mapped[datetime | None]
    destroyed_at: Mapped[datetime | None]
    """Set only once the instance left the provider's listing (verified)."""
    escalated_at: Mapped[datetime | None]


class CounterRow(Base):
    """A monotonic event counter shared by every process (exposed on /metrics)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerEntryRow(Base):
    """Append-only cost ledger. Never updated or deleted."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(16), index=True)
    requester: Mapped[str] = mapped_column(String(64), default="")
    channel: Mapped[str] = mapped_column(String(64), default="")
    kind: Mapped[str] = mapped_column(String(16))
    """``compute``, ``storage``, ``bandwidth`` or ``adjustment``."""
    amount_usd: Mapped[Decimal]
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    __table_args__ = (Index("ix_ledger_period_end", "period_end"),)


class SpendSummaryRow(Base):
    """Ledger totals per scope and UTC day: what budgets read instead of scanning the ledger.

    Derived data, never edited by hand: every flush that adds :class:`LedgerEntryRow` objects
    upserts these rows in the same transaction (:func:`gpubot.db.spend.add_to_summaries`, from
    the ``before_flush`` hook below), and :func:`gpubot.db.spend.rebuild_spend_summaries`
    recomputes them from the ledger, which stays the source of truth. An entry counts on the
    UTC day of ``period_end - 1 µs`` (an entry ending exactly at midnight belongs to the day
    before, as ``period_end > period start`` has always meant). Scopes: ``job`` (``""`` for
    entries without a job), ``user``, ``channel``, ``team`` (id ``team``) and ``kind``.
    """

    __tablename__ = "spend_summaries"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    amount_usd_e8: Mapped[int] = mapped_column(BigInteger, default=0)
    """Sum of the day's entries in 10^-8 USD (the ledger quantum): integers add exactly on
    every backend (SQLite would sum NUMERIC as floats)."""
    entries: Mapped[int] = mapped_column(BigInteger, default=0)
    last_entry_at: Mapped[datetime]
    """Newest ``created_at`` among the day's entries (which scopes billed recently)."""

    __table_args__ = (Index("ix_spend_summaries_last_entry_at", "last_entry_at"),)


@event.listens_for(Session, "before_flush")
def _summarise_new_ledger_entries(session: Session, _context: object, _instances: object) -> None:
    """Every ledger row added through any ORM session updates the spend summaries in the same
    transaction. (Core bulk inserts into ``ledger_entries`` bypass this: call
    :func:`gpubot.db.spend.add_to_summaries` or rebuild afterwards.)"""
    new = [obj for obj in session.new if isinstance(obj, LedgerEntryRow)]
    if new:
        from gpubot.db.spend import add_to_summaries

        add_to_summaries(session.connection(), new)


class BudgetRow(Base):
    """A spending cap for a scope (team, user, channel) over a period."""

    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))
    scope_id: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(16), default="month")
    limit_usd: Mapped[Decimal]
    alerted: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """``{"<period start iso>": [50, 80]}``: thresholds already announced."""
    updated_by: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("scope", "scope_id", "period"),)


class AuditEventRow(Base):
    """Who did what, when and why. Append-only; never holds secrets."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (
        # Budget enforcement's alert lookups (one action, some targets, since a period start)
        # read only alert events, however long the trail (migration 0005).
        Index("ix_audit_events_action_target_at", "action", "target", "at"),
    )


class MessageRow(Base):
    """Outbox of chat messages and the references of posted ones.

    The engine writes rows; a delivery loop (Slack or console) sends them. A ``card`` row is
    edited in place (``dirty`` set on change; delivery coalesces edits). Rows survive chat
    outages: delivery retries later and nothing is lost.
    """

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str | None] = mapped_column(String(16), index=True)
    group_id: Mapped[str | None] = mapped_column(String(16), index=True)
    channel: Mapped[str] = mapped_column(String(64))
    thread_key: Mapped[str | None] = mapped_column(String(64))
    """Job or group id whose thread this message belongs in (None: top level)."""
    kind: Mapped[str] = mapped_column(String(16))
    """``parent`` (thread root), ``card`` (edited in place), ``reply``, ``ephemeral``, ``file``."""
    user: Mapped[str | None] = mapped_column(String(64))
    """Recipient of an ephemeral message."""
    text: Mapped[str] = mapped_column(Text, default="")
    blocks: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """``{"blocks": [...]}`` Block Kit, or ``{}``."""
    file_path: Mapped[str | None] = mapped_column(String(1024))
    ts: Mapped[str | None] = mapped_column(String(32))
    """Slack ts once posted (for cards and parents)."""
    dirty: Mapped[bool] = mapped_column(default=True, index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


class ProcessedRequestRow(Base):
    """Idempotency keys of chat requests already handled (Slack retries redeliver)."""

    __tablename__ = "processed_requests"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
