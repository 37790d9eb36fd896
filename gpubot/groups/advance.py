"""The groups' part of the reconcile tick: :func:`advance_groups`, called every tick after
the job tick (``gpubot.engine.tick``).

Per running group: the group budget (:mod:`gpubot.groups.budget`), hold/release of children
up to ``[engine] max_concurrent_children`` (:mod:`gpubot.groups.children`), the summary card
(:mod:`gpubot.groups.summary`), and once every child has finished, the results
(:mod:`gpubot.groups.results`) and the group's final state, posted once (mentioning the
requester, broadcast to the channel). Every write is
conditional, so two passes at once are safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from gpubot.db.engine import session_scope
from gpubot.db.tables import JobGroupRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.errors import GpubotError
from gpubot.groups import budget, results, summary
from gpubot.groups import children as kids
from gpubot.models import JobState
from gpubot.notify import outbox

logger = logging.getLogger(__name__)


@dataclass
class GroupTickReport:
    """What :func:`advance_groups` did (group ids, child job ids)."""

    released: list[str] = field(default_factory=list)
    """Children released from hold (job ids)."""
    held: list[str] = field(default_factory=list)
    """Children newly held (job ids)."""
    stopped: list[str] = field(default_factory=list)
    """Groups stopped by their budget."""
    finished: list[str] = field(default_factory=list)
    """Groups that reached their final state."""


def advance_groups(deps: EngineDeps, *, now: datetime) -> GroupTickReport:
    """One pass over every running group; call it every tick (after ``reconcile_tick``).

    Per group: enforce the group budget (alerts, then stop every live child at 100 %),
    release held children up to ``[engine] max_concurrent_children``, refresh the summary
    card, and when every child has finished, write the results (sweep table / merged shard
    results and manifest) and set the group's final state (posted once). Errors of the
    :class:`~gpubot.errors.GpubotError` tree (storage while merging) are logged and the group
    is retried on the next call. Kicks the engine when children were released.
    """
    report = GroupTickReport()
    limit = deps.config.engine.max_concurrent_children
    with session_scope(deps.sessions) as session:
        ids = list(
            session.scalars(select(JobGroupRow.id).where(JobGroupRow.state == kids.RUNNING))
        )
    for group_id in ids:
        try:
            _advance_one(deps, group_id, now, limit, report)
        except GpubotError as exc:
            logger.warning("group %s: will retry next tick: %s", group_id, exc)
    if report.released:
        deps.enqueuer.kick()
    return report


def _advance_one(
    deps: EngineDeps, group_id: str, now: datetime, limit: int, report: GroupTickReport
) -> None:
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        if group is None or group.state != kids.RUNNING:
            return
        template = deps.config.templates.get(group.template)
        children = kids.of_group(session, group)
        if group.budget_usd is not None and budget.enforce_group_budget(
            session, group, children, now
        ):
            report.stopped.append(group_id)
        report.held += kids.hold_excess(session, group, now, limit)
        report.released += kids.release(session, group, now, limit)
        summary.refresh_card(session, group, template)
        done = bool(children) and all(j.state in kids.FINISHED for j in children)
        snapshot = [(j.id, j.state) for j in children]
    if not done:
        return
    outcome = results.finalize_results(deps, group_id, template)
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        if group is None or group.state != kids.RUNNING:
            return
        children = kids.of_group(session, group)
        if [(j.id, j.state) for j in children] != snapshot:
            return  # a retry shard was added meanwhile
        state = final_state(group, children, outcome)
        moved = session.execute(
            update(JobGroupRow)
            .where(JobGroupRow.id == group_id, JobGroupRow.state == kids.RUNNING)
            .values(state=state, spec=dict(group.spec or {}, result=outcome))
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            return
        session.refresh(group)
        summary.refresh_card(session, group, template)
        # The group's end mentions the requester and is shown in the channel too (a
        # broadcast reply), so the person who launched it hears of it without opening the
        # thread.
        outbox.reply(
            session,
            channel=group.channel,
            thread_key=group.id,
            group_id=group.id,
            text=results.final_text(group, children, outcome, template),
            broadcast=True,
        )
        report.finished.append(group_id)


def final_state(group: JobGroupRow, children: list[JobRow], outcome: dict[str, Any]) -> str:
    """The final state of a group whose children have all finished. Pure.

    ``cancelled`` when someone cancelled it or every child was cancelled. Sweeps succeed
    when every run did; sharded runs when every input file is ``ok`` (a failed shard whose
    files a retry processed no longer counts). Otherwise ``failed``.
    """
    states = {j.state for j in children}
    if (group.spec or {}).get("cancelled_by") or states == {JobState.CANCELLED.value}:
        return "cancelled"
    if group.kind == "shards":
        ok = outcome.get("total", 0) > 0 and not outcome.get("failed")
        return "succeeded" if ok else "failed"
    return "succeeded" if states == {JobState.SUCCEEDED.value} else "failed"
