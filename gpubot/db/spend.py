"""Spend summaries: ledger totals per scope and UTC day, kept with the ledger.

The append-only ledger (:class:`~gpubot.db.tables.LedgerEntryRow`) is the source of truth;
:class:`~gpubot.db.tables.SpendSummaryRow` holds its sums per ``(scope, scope_id, day)`` so that
budgets (enforcement every tick, the launch gate, ``/gpu budget``, App Home, group caps,
``/gpu cost``) read at most ~31 small rows per scope instead of scanning a period of ledger.

* :func:`add_to_summaries` upserts the sums of new ledger rows (``INSERT ... ON CONFLICT DO
  UPDATE``, SQLite and PostgreSQL), keys in sorted order so concurrent ticks never deadlock on
  each other's summary rows. Called by the ``before_flush`` hook in :mod:`gpubot.db.tables`,
  i.e. in the same transaction as the ledger rows, whoever wrote them.
* :func:`rebuild_spend_summaries` recomputes every summary from the ledger (the migration that
  introduced the table; a repair after Core bulk inserts).
* :func:`ledger_sums` computes the same sums straight from the ledger, exactly (tests compare).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import BigInteger, Connection, cast, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gpubot.db.tables import LedgerEntryRow, SpendSummaryRow

TEAM_ID = "team"
"""The team's scope id (the same as :data:`gpubot.governance.limits.TEAM_ID`)."""
SUMMARY_SCOPES = ("job", "user", "channel", "team", "kind")
E8 = 100_000_000
"""Summary amounts are integers of 10^-8 USD (``costs.LEDGER_QUANTUM``)."""
_ONE_US = timedelta(microseconds=1)

Key = tuple[str, str, date]
"""``(scope, scope_id, day)``."""


def bucket_day(period_end: datetime) -> date:
    """The UTC day an entry ending at ``period_end`` is counted on: the day of
    ``period_end - 1 µs``, so that ``bucket_day(e) >= d`` exactly when ``e > midnight(d)``
    (the ledger's "an entry belongs to the period in which it ended")."""
    if period_end.tzinfo is not None:
        period_end = period_end.astimezone(UTC)
    return (period_end - _ONE_US).date()


def day_of(since: datetime) -> date:
    """The first summary day counted for spend "ending after ``since``".

    Raises:
        ValueError: ``since`` is not a UTC midnight (periods start at midnight; summaries
            cannot answer for part of a day).
    """
    utc = since.astimezone(UTC) if since.tzinfo is not None else since
    if (utc.hour, utc.minute, utc.second, utc.microsecond) != (0, 0, 0, 0):
        raise ValueError(f"spend summaries start at a UTC midnight, not {since.isoformat()}")
    return utc.date()


def to_e8(amount_usd: object) -> int:
    """``amount_usd`` in 10^-8 USD, rounded half-up as the NUMERIC(18, 8) column stores it."""
    value = amount_usd if isinstance(amount_usd, Decimal) else Decimal(str(amount_usd))
    return int((value * E8).to_integral_value(rounding=ROUND_HALF_UP))


def from_e8(amount_e8: int | None) -> Decimal:
    """USD ``Decimal`` with 8 places from 10^-8 units (None → 0)."""
    return (Decimal(int(amount_e8 or 0)) / E8).quantize(Decimal("0.00000001"))


def _keys(
    job_id: str | None, requester: str | None, channel: str | None, kind: str, day: date
) -> Iterator[Key]:
    yield ("job", job_id or "", day)
    yield ("user", requester or "", day)
    yield ("channel", channel or "", day)
    yield ("team", TEAM_ID, day)
    yield ("kind", kind, day)


Acc = dict[Key, list[Any]]
"""key -> [amount_e8, entries, last_entry_at]."""


def _accumulate(
    acc: Acc,
    job_id: str | None,
    requester: str | None,
    channel: str | None,
    kind: str,
    amount_e8: int,
    period_end: datetime,
    created_at: datetime,
) -> None:
    day = bucket_day(period_end)
    for key in _keys(job_id, requester, channel, kind, day):
        cur = acc.get(key)
        if cur is None:
            acc[key] = [amount_e8, 1, created_at]
        else:
            cur[0] += amount_e8
            cur[1] += 1
            if created_at > cur[2]:
                cur[2] = created_at


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def add_to_summaries(
    conn: Connection | Session, entries: Iterable[LedgerEntryRow | Mapping[str, Any]]
) -> int:
    """Add new ledger rows (ORM objects, or column-value mappings as a bulk insert takes them)
    to the summaries on ``conn``'s transaction.

    One upsert statement (executemany) for all keys, in sorted key order. Must run in the
    transaction that inserts ``entries`` (the ``before_flush`` hook and the tick's
    ``append_ledger`` do) and exactly once per entry. Returns the number of summary rows
    touched.
    """
    acc: Acc = {}
    for e in entries:
        if isinstance(e, Mapping):
            _accumulate(
                acc,
                e.get("job_id"),
                e.get("requester"),
                e.get("channel"),
                str(e["kind"]),
                to_e8(e["amount_usd"]),
                _utc(e["period_end"]),
                _utc(e.get("created_at")),
            )
        else:
            _accumulate(
                acc,
                e.job_id,
                e.requester,
                e.channel,
                e.kind,
                to_e8(e.amount_usd),
                _utc(e.period_end),
                _utc(e.created_at),
            )
    return _upsert(conn, acc)


def _upsert(conn: Connection | Session, acc: Acc) -> int:
    if not acc:
        return 0
    table = SpendSummaryRow.__table__
    dialect = conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(table)
        newest = func.greatest(table.c.last_entry_at, stmt.excluded.last_entry_at)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table)
        newest = func.max(table.c.last_entry_at, stmt.excluded.last_entry_at)
    else:  # pragma: no cover - the two supported backends
        raise NotImplementedError(f"spend summaries need SQLite or PostgreSQL, not {dialect}")
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.scope, table.c.scope_id, table.c.day],
        set_={
            "amount_usd_e8": table.c.amount_usd_e8 + stmt.excluded.amount_usd_e8,
            "entries": table.c.entries + stmt.excluded.entries,
            "last_entry_at": newest,
        },
    )
    params = [
        {
            "scope": key[0],
            "scope_id": key[1],
            "day": key[2],
            "amount_usd_e8": val[0],
            "entries": val[1],
            "last_entry_at": val[2],
        }
        for key, val in sorted(acc.items())
    ]
    if isinstance(conn, Session):
        conn = conn.connection()
    conn.execute(stmt, params)
    return len(params)


def ledger_sums(conn: Connection | Session, *, batch_rows: int = 50_000) -> Acc:
    """The summaries as the ledger gives them, computed exactly (integers of 10^-8 USD).

    Streams ``ledger_entries`` once (amounts converted to integer units by the database), so it
    costs a full ledger scan: for rebuilds and tests, never for a budget check.
    """
    le = LedgerEntryRow
    units = cast(func.round(le.amount_usd * E8), BigInteger)
    stmt = select(
        le.job_id, le.requester, le.channel, le.kind, units, le.period_end, le.created_at
    ).execution_options(yield_per=batch_rows)
    acc: Acc = {}
    result = conn.execute(stmt)
    for job_id, requester, channel, kind, amount_e8, period_end, created_at in result:
        _accumulate(
            acc, job_id, requester, channel, kind, int(amount_e8), _utc(period_end),
            _utc(created_at),
        )
    return acc


def rebuild_spend_summaries(conn: Connection | Session) -> int:
    """Replace every summary row with the ledger's sums (in the caller's transaction).

    Lock-free: run it when no tick is writing (a migration, a repair), or entries committed
    meanwhile may be counted twice or not at all. Returns the number of summary rows written.
    """
    acc = ledger_sums(conn)
    conn.execute(delete(SpendSummaryRow.__table__))
    return _upsert(conn, acc)


def stored_summaries(conn: Connection | Session) -> Acc:
    """Every summary row as ``{(scope, scope_id, day): [amount_e8, entries, last_entry_at]}``."""
    t = SpendSummaryRow.__table__
    rows = conn.execute(
        select(t.c.scope, t.c.scope_id, t.c.day, t.c.amount_usd_e8, t.c.entries,
               t.c.last_entry_at)
    ).all()
    return {(r[0], r[1], r[2]): [int(r[3]), int(r[4]), _utc(r[5])] for r in rows}
