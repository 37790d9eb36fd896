"""The audit trail: who did what, when and why (``AuditEventRow``, append-only).

Every command, approval, cancel, keep and budget change is recorded here. Text and detail
values are passed through :func:`gpubot.redact.redact` first, so a secret typed by mistake (or
carried in an error message) never lands in the table. :func:`record` is the only writer of
``AuditEventRow``: nothing else constructs one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpubot.db.tables import AuditEventRow, utcnow
from gpubot.redact import redact

MAX_TEXT = 2000


def _clean(value: Any) -> Any:
    """JSON-safe, redacted copy of ``value`` (strings redacted and bounded)."""
    if isinstance(value, str):
        return redact(value)[:MAX_TEXT]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))[:MAX_TEXT]


def record(
    session: Session,
    actor: str,
    action: str,
    target: str = "",
    reason: str = "",
    detail: dict[str, Any] | None = None,
    *,
    at: datetime | None = None,
) -> AuditEventRow:
    """Add one audit event to ``session`` (the caller commits). Returns the new row.

    ``action`` is a short dotted verb (``command``, ``approve``, ``cancel``, ``budget.set``,
    ``denied`` ...); ``target`` a job id, scope or the command verb. ``target``, ``reason``
    and every string in ``detail`` (keys and nested values too) are redacted and bounded.
    ``at`` is the event's time (the caller's clock, UTC-aware); now when omitted.
    """
    row = AuditEventRow(
        at=at or utcnow(),
        actor=actor[:64],
        action=action[:32],
        target=redact(target)[:128],
        reason=redact(reason)[:MAX_TEXT],
        detail=_clean(detail or {}),
    )
    session.add(row)
    return row


def recent(session: Session, limit: int = 20) -> list[AuditEventRow]:
    """The newest ``limit`` events, newest first."""
    return list(
        session.scalars(
            select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(max(1, limit))
        )
    )
