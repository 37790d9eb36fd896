"""The orphan sweep: nothing the bot rents may outlive its record.

An *orphan* is an instance in a **successful** listing whose label is ours
(``<GPUBOT_LABEL_PREFIX>:<job id>:<attempt>``, or the older ``<GPUBOT_LABEL_PREFIX>:<job id>``;
``labels.parse_rental_label``) and that no live record claims:

* no :class:`InstanceRow` with its provider id that is not destroyed and whose job is live, and
* no pending rental (an InstanceRow still without a provider id, not abandoned, of a live job)
  with the same label — the engine adopts such an instance by label after a crash.

The first time the sweep sees an orphan it records an ``orphan_seen`` audit event (the
first-seen time); once ``[engine] orphan_grace_minutes`` have passed since then it destroys the
instance, records ``orphan_destroyed`` and tells the operators (``ops.escalate``). An instance
that stops being an orphan before that gets ``orphan_cleared``, so its grace starts afresh if
it is orphaned again. Instances without our prefix (the user's own rentals) are never touched.

The opposite case — a record whose instance is absent from a successful listing — is the
tick's job (``observe_and_meter`` marks it ``provider_status = "gone"`` and the engine reacts).
The caller must pass only successful listings: a failed listing is never "zero instances"
(``reconcile_tick`` skips the sweep when the listing failed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpubot import costs
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.engine.labels import parse_rental_label
from gpubot.errors import ProviderError
from gpubot.models import InstanceObservation, JobState
from gpubot.notify import audit, ops
from gpubot.render import events as render

logger = logging.getLogger(__name__)

SEEN = "orphan_seen"
CLEARED = "orphan_cleared"
DESTROYED = "orphan_destroyed"


@dataclass(frozen=True, slots=True)
class OrphanState:
    """What the audit trail says about one provider id."""

    first_seen_at: datetime | None
    """Start of the current orphan episode (None: not being tracked)."""
    destroyed_at: datetime | None
    """When the sweep destroyed it in this episode (None: not yet)."""


def orphan_decision(state: OrphanState, *, now: datetime, grace: timedelta) -> str:
    """Pure: ``remember`` (first sighting), ``wait`` (in grace), ``destroy`` (grace over), or
    ``redestroy`` (destroyed before but still listed: destroy again, quietly)."""
    if state.first_seen_at is None:
        return "remember"
    if state.destroyed_at is not None:
        return "redestroy"
    if now - state.first_seen_at >= grace:
        return "destroy"
    return "wait"


def _has_live_record(session: Session, obs: InstanceObservation) -> bool:
    live = [s.value for s in JobState.live_states()]
    by_id = session.scalars(
        select(InstanceRow.id)
        .join(JobRow, JobRow.id == InstanceRow.job_id)
        .where(
            InstanceRow.provider_id == obs.provider_id,
            InstanceRow.destroyed_at.is_(None),
            JobRow.state.in_(live),
        )
        .limit(1)
    ).first()
    if by_id is not None:
        return True
    pending = session.scalars(
        select(InstanceRow.id)
        .join(JobRow, JobRow.id == InstanceRow.job_id)
        .where(
            InstanceRow.provider_id.is_(None),
            InstanceRow.label == obs.label,
            InstanceRow.destroyed_at.is_(None),
            JobRow.state.in_(live),
        )
        .limit(1)
    ).first()
    return pending is not None


def _state(session: Session, provider_id: str) -> OrphanState:
    events = session.scalars(
        select(AuditEventRow)
        .where(
            AuditEventRow.target == provider_id,
            AuditEventRow.action.in_((SEEN, CLEARED, DESTROYED)),
        )
        .order_by(AuditEventRow.id)
    ).all()
    first_seen: datetime | None = None
    destroyed: datetime | None = None
    for ev in events:
        if ev.action == SEEN:
            if first_seen is None:
                first_seen = ev.at
        elif ev.action == CLEARED:
            first_seen, destroyed = None, None
        elif ev.action == DESTROYED and first_seen is not None:
            destroyed = ev.at
    return OrphanState(first_seen, destroyed)


def sweep_orphans(
    deps: EngineDeps, listing: Sequence[InstanceObservation], *, now: datetime
) -> list[str]:
    """Remember new orphans, destroy those past their grace. Returns the ids destroyed now.

    ``listing`` must come from a successful ``provider.list_instances()``. Destroy calls are
    made with no session open; one that fails (ProviderError) is logged and
    retried by the next sweep. An orphan destroyed earlier but still listed is destroyed
    again (destroy is idempotent) without a new escalation.
    """
    prefix = deps.settings.label_prefix
    grace = timedelta(minutes=deps.config.engine.orphan_grace_minutes)
    # Ours: ``<prefix>:<job>:<attempt>`` and the older ``<prefix>:<job>`` (labels.py).
    ours = [o for o in listing if parse_rental_label(o.label, prefix) is not None]
    to_destroy: list[tuple[InstanceObservation, datetime | None, bool]] = []
    with session_scope(deps.sessions) as session:
        for obs in ours:
            state = _state(session, obs.provider_id)
            if _has_live_record(session, obs):
                if state.first_seen_at is not None:
                    audit.record(
                        session,
                        "gpubot",
                        CLEARED,
                        obs.provider_id,
                        "a live record claims it",
                        at=now,
                    )
                continue
            decision = orphan_decision(state, now=now, grace=grace)
            if decision == "remember":
                audit.record(
                    session,
                    "gpubot",
                    SEEN,
                    obs.provider_id,
                    f"labelled {obs.label!r} but no live record",
                    {
                        "label": obs.label,
                        "status": obs.status.value,
                        "price_per_hour_usd": str(obs.price_per_hour_usd),
                    },
                    at=now,
                )
                logger.warning("orphan %s (%s) seen; grace %s", obs.provider_id, obs.label, grace)
            elif decision in ("destroy", "redestroy"):
                to_destroy.append((obs, state.first_seen_at, decision == "destroy"))
    destroyed: list[str] = []
    for obs, _first_seen, _announce in to_destroy:
        try:
            deps.provider.destroy(obs.provider_id)
            destroyed.append(obs.provider_id)
        except ProviderError as exc:
            logger.warning(
                "orphan %s: destroy failed, retried next sweep: %s", obs.provider_id, exc
            )
    announced: list[str] = []
    if not destroyed:
        return announced
    with session_scope(deps.sessions) as session:
        for obs, first_seen, announce in to_destroy:
            if obs.provider_id not in destroyed or not announce:
                continue
            age = costs.format_duration(now - first_seen) if first_seen else "?"
            text = render.orphan_destroyed(
                provider_id=obs.provider_id,
                label=obs.label,
                price_per_hour_usd=obs.price_per_hour_usd,
                status=obs.status.value,
                age=age,
            )
            # The audit keeps plain text (escaped where it is shown); ``text`` is Slack markup.
            audit.record(
                session,
                "gpubot",
                DESTROYED,
                obs.provider_id,
                f"destroyed: labelled {obs.label!r}, no live record for {age}",
                {"label": obs.label, "price_per_hour_usd": str(obs.price_per_hour_usd)},
                at=now,
            )
            ops.escalate(session, text)
            announced.append(obs.provider_id)
    return announced
