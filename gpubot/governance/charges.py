"""The daily billing check: our ledger per instance against the provider's own charges.

:func:`charges_by_instance` reads vast charge rows (pure); :func:`check_charges` compares them
with the ledger and escalates differences to ops. Run daily by ``check_charges_task``; it is
not part of the reconcile tick. Texts come from :mod:`gpubot.render.budgets`; audit events go
through :func:`gpubot.notify.audit.record`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpubot.db.engine import session_scope
from gpubot.db.tables import InstanceRow, LedgerEntryRow
from gpubot.deps import EngineDeps
from gpubot.governance.periods import dec, quantize
from gpubot.notify import audit, ops
from gpubot.render import budgets as text

logger = logging.getLogger(__name__)

CHARGE_TOLERANCE_USD = Decimal("0.01")
"""Differences between the ledger and the provider's charges above this are escalated."""


@dataclass(frozen=True, slots=True)
class InstanceCharges:
    """The provider's charges for one instance, summed over its rows."""

    provider_id: str
    amount_usd: Decimal
    start: datetime | None
    end: datetime | None
    label: str | None


def _ts(value: object) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def charges_by_instance(rows: Iterable[Mapping[str, object]]) -> dict[str, InstanceCharges]:
    """Sum vast charge rows per instance. Pure.

    Only rows with ``source`` ``instance-<id>`` count (credits, transfers and other sources
    are skipped, as are rows with an unreadable amount). ``start``/``end`` (epoch seconds) are
    the earliest start and latest end seen; ``label`` comes from ``metadata.label``.
    """
    out: dict[str, InstanceCharges] = {}
    for row in rows:
        source = row.get("source")
        if not isinstance(source, str) or not source.startswith("instance-"):
            continue
        pid = source.removeprefix("instance-")
        try:
            amount = dec(row.get("amount"))
        except ValueError:
            logger.warning("charges: unreadable amount for %s", source)
            continue
        meta = row.get("metadata")
        label = meta.get("label") if isinstance(meta, Mapping) else None
        start, end = _ts(row.get("start")), _ts(row.get("end"))
        prev = out.get(pid)
        if prev is not None:
            amount += prev.amount_usd
            start = min((t for t in (prev.start, start) if t is not None), default=None)
            end = max((t for t in (prev.end, end) if t is not None), default=None)
            label = prev.label or label
        out[pid] = InstanceCharges(
            pid, amount, start, end, label if isinstance(label, str) else None
        )
    return out


def _audit(
    session: Session, now: datetime, action: str, target: str, reason: str, detail: dict[str, Any]
) -> None:
    audit.record(session, "gpubot", action, target, reason, detail, at=now)


def check_charges(deps: EngineDeps, *, now: datetime) -> list[str]:
    """Compare our ledger per instance with the provider's charges; escalate differences.

    Run daily. For every instance in ``provider.charges()`` that we have a record of, the
    ledger entries of its rows overlapping the charges' time window are summed; a difference
    over :data:`CHARGE_TOLERANCE_USD` is escalated to ops (and audited ``charges_differ``). A
    charged instance we have no record of is escalated only if its label carries our prefix
    (spend we never metered). Every run is audited (``charges_reconciled``). Returns the
    provider ids with a difference, sorted.

    Raises:
        ProviderError: the charges could not be read (TransientProviderError: try later).
    """
    charged = charges_by_instance(deps.provider.charges())
    prefix = f"{deps.settings.label_prefix}:"
    differing: list[str] = []
    with session_scope(deps.sessions) as session:
        for pid, ch in sorted(charged.items()):
            rows = session.scalars(select(InstanceRow).where(InstanceRow.provider_id == pid)).all()
            if not rows:
                if (
                    ch.label
                    and ch.label.startswith(prefix)
                    and ch.amount_usd > CHARGE_TOLERANCE_USD
                ):
                    differing.append(pid)
                    ops.escalate(
                        session, text.unrecorded_charge_text(pid, ch.label, ch.amount_usd)
                    )
                continue
            stmt = select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
                LedgerEntryRow.instance_id.in_([r.id for r in rows])
            )
            if ch.start is not None:
                stmt = stmt.where(LedgerEntryRow.period_end > ch.start)
            if ch.end is not None:
                stmt = stmt.where(LedgerEntryRow.period_start < ch.end)
            ours = quantize(dec(session.scalar(stmt) or 0))
            if abs(ch.amount_usd - ours) <= CHARGE_TOLERANCE_USD:
                continue
            differing.append(pid)
            job_ids = sorted({r.job_id for r in rows})
            message = text.charge_difference_text(pid, job_ids, ch.amount_usd, ours)
            ops.escalate(session, message)
            _audit(
                session,
                now,
                "charges_differ",
                pid,
                message,
                {"charged_usd": str(ch.amount_usd), "ledger_usd": str(ours)},
            )
        # The audit action keeps its stored name; the check itself is not the reconcile tick.
        _audit(
            session,
            now,
            "charges_reconciled",
            "",
            "",
            {"instances": len(charged), "differing": differing},
        )
    return differing
