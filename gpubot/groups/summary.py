"""The group's live summary card: the group's top-level message (a root card row whose
``job_id`` is the group id), edited in place (unchanged text is not re-sent). Its runs' cards
are messages in its thread. A group from before (a static parent and the summary card in
the thread) keeps its card where it is.

Per child: label, state, $ so far and the latest target metric; once a sweep has finished,
the runs best first with the best one marked; once a sharded run has merged, where its
results are and which files failed. The text is :func:`gpubot.render.groups.card_text`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from gpubot.db.tables import JobGroupRow
from gpubot.groups import children as kids
from gpubot.groups import results
from gpubot.notify import events, outbox
from gpubot.render import groups as render
from gpubot.render.slack import group_root_text
from gpubot.templates import Template


def summary_rows(
    session: Session, group: JobGroupRow, template: Template | None
) -> list[dict[str, Any]]:
    """Per child, in launch order: ``job_id, label, state, spent_usd, metric, attempts``."""
    labels = list((group.spec or {}).get("labels", []))
    rows = []
    for index, job in enumerate(kids.of_group(session, group)):
        rows.append(
            {
                "job_id": job.id,
                "label": labels[index] if index < len(labels) else job.id,
                "state": job.state,
                "spent_usd": events.spent_usd(session, job.id),
                "metric": results.metric_of(job, template),
                "attempts": job.attempts,
            }
        )
    return rows


def card(session: Session, group: JobGroupRow, template: Template | None) -> render.GroupCard:
    """The summary card's data as it stands in ``session``."""
    rows = summary_rows(session, group, template)
    best_id = None
    if (
        group.state in kids.FINISHED_GROUP_STATES
        and group.kind == "sweep"
        and template is not None
    ):
        rows = results.rank_runs(rows, template.target_mode)
        best = results.best_run(rows)
        best_id = best["job_id"] if best else None
    result = (group.spec or {}).get("result") or {}
    return render.GroupCard(
        group_id=group.id,
        kind=group.kind,
        template=group.template,
        state=group.state,
        rows=[
            render.ChildRow(
                job_id=r["job_id"], label=r["label"], state=r["state"],
                spent_usd=r["spent_usd"], metric=r["metric"],
            )
            for r in rows
        ],
        budget_usd=Decimal(str(group.budget_usd)) if group.budget_usd is not None else None,
        metric_name=template.target_metric if template is not None else None,
        best_job_id=best_id,
        results=results.shard_results_view(result) if result.get("manifest") else None,
    )


PLAN_STATES = frozenset({"awaiting_approval", "queued"})
"""While every run is in one of these, the top-level message still shows the plan."""


def refresh_card(session: Session, group: JobGroupRow, template: Template | None) -> None:
    """Create or update the group's summary card, its top-level message, in ``session`` (the
    caller commits): the summary, who launched it, and the plan (``spec["plan_text"]``)
    until a run leaves the queue."""
    data = card(session, group, template)
    plan = (group.spec or {}).get("plan_text")
    waiting = group.state == kids.RUNNING and all(r.state in PLAN_STATES for r in data.rows)
    outbox.upsert_card(
        session,
        job_id=group.id,
        channel=group.channel,
        thread_key=None,
        text=group_root_text(
            render.card_text(data),
            requester=group.requester,
            plan=str(plan) if plan and waiting else None,
        ),
        group_id=group.id,
    )
