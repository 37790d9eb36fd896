"""Job groups: parameter sweeps and sharded runs (one parent thread, many child jobs).

A group is a :class:`~gpubot.db.tables.JobGroupRow` plus N ordinary child jobs (``JobRow``
with ``group_id``), each launched through :func:`gpubot.chat.launch.submit`: own instance,
card, checkpoints and results; the engine runs them like any job (an outbid child resumes on
its own). What this module adds:

* **submit** (:func:`submit_sweep`, :func:`submit_shards`): one market search, one plan per
  child, the approval rules and the budget gate applied to the *group total*, the parent
  message and the children. Idempotent per ``request_key`` (the group id is derived from it
  and each child gets ``<request_key>#<n>``), so a redelivered command or a crash midway
  never launches twice.
* **concurrency** (``[engine] max_concurrent_children``): the engine claims every due queued
  job, so children beyond the limit are *held*: queued with ``due_at`` :data:`HOLD` in the
  future. :func:`advance_groups` (called every tick) releases them (``due_at = now``) as
  running ones finish.
* **group budget** (``budget=`` on the command caps the sum of the children's ledger):
  alerts at 50/80 % in the parent thread; at 100 % every live child gets
  ``stop_requested_reason`` (the engine checkpoints, then destroys).
* **summary**: a live table on the parent (a card row whose ``job_id`` is the group id): per
  child params, state, $ so far and the latest target metric; at the end the results table
  sorted by the template's ``target_metric`` (``target_mode``) with the best run marked
  (sweeps), or the merged results of all shards under ``groups/<gid>/results/`` with a
  ``manifest.jsonl`` of every input file (``file, shard, job_id, pages, status``) (shards).
  Failed files are retried with :func:`retry_failed` (one new shard job).

Every function here reads state and makes conditional updates; running two at once is safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gpubot import costs
from gpubot.chat import launch, permissions
from gpubot.commands.types import LaunchCommand, ResourceOverrides, SweepCommand
from gpubot.db.engine import session_scope
from gpubot.db.tables import (
    AuditEventRow,
    JobGroupRow,
    JobRow,
    LedgerEntryRow,
    ProcessedRequestRow,
)
from gpubot.deps import EngineDeps
from gpubot.engine import planning, staging
from gpubot.errors import BudgetError, CommandError, GpubotError, PermissionDenied
from gpubot.models import JobState
from gpubot.notify import events, outbox
from gpubot.render import mrkdwn as md
from gpubot.render.text import usd
from gpubot.templates import (
    INTERNAL_PARAM_PREFIX,
    NamedInput,
    ParamValue,
    TargetMode,
    Template,
    format_param,
)

logger = logging.getLogger(__name__)

HOLD = timedelta(days=3650)
"""A held child is queued with ``due_at`` this far ahead (the engine does not claim it)."""
SHARD_DEST = "input"
"""Where a shard's files are staged, relative to the workspace (the ocr job's default)."""
INLINE_FILES_MAX = 2000
"""A shard's file list is stored in the child's params (``_inputs``); more is refused."""
RUNNING = "running"
FINISHED_GROUP_STATES = ("succeeded", "failed", "cancelled")
_FINISHED = {s.value for s in JobState.finished_states()}
_STOPPABLE = [
    s.value for s in JobState.live_states()
    if s not in {JobState.AWAITING_APPROVAL, JobState.TEARING_DOWN}
]


@dataclass(frozen=True)
class GroupSubmission:
    """What a group launch did. ``text`` is the plan to show (Slack reply / parent)."""

    group_id: str
    job_ids: list[str]
    text: str
    created: bool = True
    """False when ``request_key`` had been handled before (nothing new was launched)."""
    estimate_usd: Decimal = Decimal(0)
    approval_reason: str | None = None


@dataclass
class GroupTickReport:
    """What :func:`advance_groups` did."""

    released: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)


# -- pure helpers -----------------------------------------------------------------------------


def new_group_id(request_key: str | None = None) -> str:
    """``g-`` + 8 hex (fits ``messages.job_id``); derived from ``request_key`` when given."""
    if request_key:
        return "g-" + hashlib.sha256(request_key.encode()).hexdigest()[:8]
    return "g-" + secrets.token_hex(4)


def balance_shards(files: list[tuple[str, int]], n: int) -> list[list[str]]:
    """Split ``(name, size_bytes)`` into ``n`` lists with balanced byte totals.

    Greedy largest-first: files sorted by size (descending, then name) each go to the shard
    with the smallest total so far (lowest index on ties). Always returns ``n`` lists (some
    empty when there are fewer files than shards), each sorted by name. Every file appears in
    exactly one list.

    Raises:
        ValueError: ``n`` < 1, or a name appears twice.
    """
    if n < 1:
        raise ValueError("the number of shards must be at least 1")
    names = [name for name, _ in files]
    if len(set(names)) != len(names):
        raise ValueError("file names must be unique")
    totals = [0] * n
    shards: list[list[str]] = [[] for _ in range(n)]
    for name, size in sorted(files, key=lambda f: (-f[1], f[0])):
        target = min(range(n), key=lambda i: (totals[i], i))
        shards[target].append(name)
        totals[target] += size
    return [sorted(s) for s in shards]


def rank_runs(
    rows: list[dict[str, Any]], mode: TargetMode
) -> list[dict[str, Any]]:
    """Rows (each with ``metric``: float|None and ``state``) sorted best first.

    Rows with a metric come first, ascending for ``min`` and descending for ``max``; rows
    without one keep their order at the end. Pure.
    """
    with_metric = [r for r in rows if r.get("metric") is not None]
    without = [r for r in rows if r.get("metric") is None]
    with_metric.sort(key=lambda r: float(r["metric"]), reverse=mode is TargetMode.MAX)
    return with_metric + without


def _fmt_metric(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _label(params: dict[str, Any], keys: list[str]) -> str:
    return " ".join(f"{k}={format_param(params[k])}" for k in keys if k in params) or "defaults"


# -- submit -----------------------------------------------------------------------------------


def submit_sweep(
    deps: EngineDeps,
    command: SweepCommand,
    *,
    requester: str,
    channel: str,
    request_key: str | None,
) -> GroupSubmission:
    """Launch one child job per combination of ``command``'s axes, as one group.

    One market search (every child has the same resources); the group's estimate is the sum
    of the children's, checked against the approval rules and the budgets (``budget=`` caps
    the whole group). Returns the group id, child ids (in combination order) and plan text.

    Raises:
        CommandError: unknown template. NoOfferError: nothing matches. BudgetError: the
            group total exceeds a budget and ``on_exceed = "refuse"``. Nothing is written then.
    """
    template = _template(deps, command.template)
    runs = command.combinations()
    if not runs:
        raise CommandError("this sweep has no runs")
    plan = launch.plan_launch(
        deps,
        LaunchCommand(
            template=template.name, params=runs[0], resources=_child_resources(command.resources)
        ),
    )
    plans = [replace(plan, params=dict(run)) for run in runs]
    axes = list(command.axes)
    labels = [_label(run, axes) for run in runs]
    spec: dict[str, Any] = {
        "axes": axes,
        "runs": [{k: v for k, v in run.items()} for run in runs],
        "labels": labels,
    }
    return _submit_group(
        deps,
        kind="sweep",
        template=template,
        plans=plans,
        labels=labels,
        spec=spec,
        budget_usd=command.resources.budget_usd,
        requester=requester,
        channel=channel,
        request_key=request_key,
    )


def submit_shards(
    deps: EngineDeps,
    command: LaunchCommand,
    *,
    shards: int,
    requester: str,
    channel: str,
    request_key: str | None,
) -> GroupSubmission:
    """Split a shardable template's input across ``shards`` child jobs, as one group.

    The input is ``src=<name>``: the NAME of an input the operator declared in
    ``[inputs.<name>]`` (never a path or a bucket of the user's own). It is listed once
    (bounded by the input's ``max_files``/``max_total_gb``) and split by bytes with
    :func:`balance_shards` (fewer children when there are fewer files). Each child gets only
    its own files, staged under ``input/`` of its workspace (``job.params["_inputs"]`` holds
    the input's name, see :mod:`gpubot.engine.staging`), with ``src=input shards=1`` when
    the template has those parameters.

    Raises:
        CommandError: unknown or non-shardable template, ``src`` not a declared input name
            (with a usage message listing the declared names), no files, ``shards`` < 1.
            Nothing is written or listed then. NoOfferError, BudgetError: as
            :func:`submit_sweep`.
        StorageError: the input cannot be listed or exceeds its limits.
    """
    template = _template(deps, command.template)
    if not template.shardable:
        raise CommandError(f"template {template.name!r} cannot be split into shards")
    if shards < 1:
        raise CommandError("shards must be at least 1")
    declared = staging.resolve_input(
        deps, command.params.get("src") or template.default_params().get("src") or ""
    )
    listing = staging.list_source(deps, declared)
    if not listing:
        raise CommandError(f"no input files in input {declared.name!r}")
    parts = [p for p in balance_shards([(f.name, f.size_bytes) for f in listing], shards) if p]
    if any(len(p) > INLINE_FILES_MAX for p in parts):
        raise CommandError(f"a shard may hold at most {INLINE_FILES_MAX} files; use more shards")
    sizes = {f.name: f.size_bytes for f in listing}
    base = {
        k: v for k, v in command.params.items()
        if k not in {"src", "shards"} and not k.startswith(INTERNAL_PARAM_PREFIX)
    }
    plan = launch.plan_launch(
        deps,
        LaunchCommand(
            template=template.name, params=base, resources=_child_resources(command.resources)
        ),
    )
    plans = []
    for files in parts:
        params: dict[str, Any] = dict(base)
        if "src" in template.params:
            params["src"] = SHARD_DEST
        if "shards" in template.params:
            params["shards"] = 1
        params[staging.INPUTS_PARAM] = [
            {"input": declared.name, "dest": SHARD_DEST, "files": files}
        ]
        plans.append(replace(plan, params=params))
    labels = [
        f"shard {i + 1}/{len(parts)}: {len(p)} files, {sum(sizes[f] for f in p)} B"
        for i, p in enumerate(parts)
    ]
    spec: dict[str, Any] = {
        "input": declared.name,
        "files": [f.name for f in listing],
        "base_params": {k: v for k, v in base.items()},
        "resources": planning.overrides_to_json(_child_resources(command.resources)),
        "shards": [{"files": p} for p in parts],
        "labels": labels,
    }
    return _submit_group(
        deps,
        kind="shards",
        template=template,
        plans=plans,
        labels=labels,
        spec=spec,
        budget_usd=command.resources.budget_usd,
        requester=requester,
        channel=channel,
        request_key=request_key,
    )


def _child_resources(resources: ResourceOverrides) -> ResourceOverrides:
    """``budget=`` on a group command caps the group (``JobGroupRow.budget_usd``); each child
    keeps the per-job default cap (``[budgets] job_default_usd``)."""
    return replace(resources, budget_usd=None)


def _template(deps: EngineDeps, name: str) -> Template:
    template = deps.config.templates.get(name)
    if template is None:
        raise CommandError(f"unknown template {name!r}")
    return template


def _submit_group(
    deps: EngineDeps,
    *,
    kind: str,
    template: Template,
    plans: list[launch.Plan],
    labels: list[str],
    spec: dict[str, Any],
    budget_usd: Decimal | None,
    requester: str,
    channel: str,
    request_key: str | None,
) -> GroupSubmission:
    if request_key:
        with session_scope(deps.sessions) as session:
            done = session.get(ProcessedRequestRow, request_key)
            if done is not None and "group_id" in (done.result or {}):
                gid = str(done.result["group_id"])
                group = session.get(JobGroupRow, gid)
                ids = list((group.spec or {}).get("children", [])) if group else []
                return GroupSubmission(gid, ids, f"Already handled: {gid}.", created=False)
    first = plans[0]
    total = sum((p.estimate_usd for p in plans), Decimal(0))
    reason = permissions.approval_reason(
        deps.config, price_per_hour_usd=first.price_per_hour_usd, estimate_usd=total
    )
    gate = _budget_gate(deps, requester, channel, total)
    reason = "; ".join(r for r in (reason, gate) if r) or None
    limit = deps.config.engine.max_concurrent_children
    group_id = new_group_id(request_key)
    text = "\n".join(
        _plan_lines(kind, template, first, labels, total, budget_usd, limit, reason)
    )
    with session_scope(deps.sessions) as session:
        if session.get(JobGroupRow, group_id) is None:
            session.add(
                JobGroupRow(
                    id=group_id,
                    kind=kind,
                    template=template.name,
                    requester=requester,
                    channel=channel,
                    budget_usd=budget_usd,
                    spec=dict(spec, estimate_usd=str(total), approval_reason=reason),
                    state=RUNNING,
                    created_at=deps.clock(),
                )
            )
            session.flush()
            outbox.post_parent(
                session,
                channel=channel,
                text=f"{md.mention(requester)} {group_id}\n{text}",
                group_id=group_id,
            )
            session.add(
                AuditEventRow(
                    at=deps.clock(),
                    actor=requester,
                    action=f"launch_{kind}",
                    target=group_id,
                    reason=reason or "",
                    detail={"template": template.name, "children": len(plans),
                            "estimate_usd": str(total), "channel": channel},
                )
            )
    job_ids: list[str] = []
    for index, plan in enumerate(plans):
        child_key = f"{request_key}#{index}" if request_key else None
        job_id, _ = launch.submit(
            deps,
            replace(plan, approval_reason=reason),
            requester=requester,
            channel=channel,
            request_key=child_key,
            group_id=group_id,
        )
        job_ids.append(job_id)
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        assert group is not None
        group.spec = dict(group.spec or {}, children=job_ids)
        if kind == "shards":
            group.spec = dict(
                group.spec,
                shards=[
                    dict(s, job_id=j) for s, j in zip(group.spec["shards"], job_ids, strict=True)
                ],
            )
        session.flush()
        held = _hold_excess(session, group, deps.clock(), limit)
        if request_key and session.get(ProcessedRequestRow, request_key) is None:
            session.add(ProcessedRequestRow(key=request_key, result={"group_id": group_id}))
        _refresh_group_card(session, group, template)
    logger.info("group %s: %d children, %d held", group_id, len(job_ids), len(held))
    deps.enqueuer.kick()
    return GroupSubmission(group_id, job_ids, text, True, total, reason)


def _budget_gate(
    deps: EngineDeps, requester: str, channel: str, estimate_usd: Decimal
) -> str | None:
    from gpubot.config import OnExceed
    from gpubot.governance import budgets
    with session_scope(deps.sessions) as session:
        verdict = budgets.check_launch(
            deps, session, requester=requester, channel=channel, estimate_usd=estimate_usd
        )
    if verdict.ok:
        return None
    if deps.config.budgets.on_exceed is OnExceed.REFUSE:
        raise BudgetError(verdict.reason)
    return verdict.reason


def _plan_lines(
    kind: str,
    template: Template,
    plan: launch.Plan,
    labels: list[str],
    total: Decimal,
    budget_usd: Decimal | None,
    limit: int,
    reason: str | None,
) -> list[str]:
    what = "Sweep" if kind == "sweep" else "Sharded run"
    offer = plan.choice.offer
    lines = [
        f"{what} of {template.name}: {len(labels)} runs, at most {limit} at once.",
        f"• each on {offer.num_gpus}x {offer.gpu_name} at {usd(plan.price_per_hour_usd)}/h "
        f"({plan.choice.rental_type.value}); about {plan.expected_hours:g} h "
        f"≈ {usd(plan.estimate_usd)} per run",
        f"• total estimate: {len(labels)} × {usd(plan.estimate_usd)} = {usd(total)}",
    ]
    if budget_usd is not None:
        lines.append(f"• group budget: {usd(budget_usd)} (all runs stop when it is reached)")
    if kind == "sweep" and template.target_metric:
        lines.append(f"• ranked by {template.target_metric} ({template.target_mode.value})")
    lines += [f"  {i + 1}. {md.inline(label, 200)}" for i, label in enumerate(labels[:50])]
    if len(labels) > 50:
        lines.append(f"  … and {len(labels) - 50} more")
    if reason:
        lines.append(f"• needs an admin's approval: {md.inline(reason, 1000)}")
    return lines


# -- the tick ---------------------------------------------------------------------------------


def _children(session: Session, group: JobGroupRow) -> list[JobRow]:
    order = {j: i for i, j in enumerate((group.spec or {}).get("children", []))}
    rows = list(
        session.scalars(
            select(JobRow)
            .where(JobRow.group_id == group.id)
            .execution_options(populate_existing=True)
        )
    )
    return sorted(rows, key=lambda j: (order.get(j.id, len(order)), j.created_at, j.id))


def _is_held(job: JobRow, now: datetime) -> bool:
    return job.state == JobState.QUEUED.value and job.due_at > now + HOLD / 2


def _is_active(job: JobRow, now: datetime) -> bool:
    return (
        job.state not in _FINISHED
        and job.state != JobState.AWAITING_APPROVAL.value
        and not _is_held(job, now)
    )


def _hold_excess(
    session: Session, group: JobGroupRow, now: datetime, limit: int
) -> list[str]:
    """Hold queued, never-processed children beyond ``limit`` active ones (conditional)."""
    children = _children(session, group)
    active = [j for j in children if _is_active(j, now)]
    excess = len(active) - limit
    held: list[str] = []
    for job in reversed(active):
        if excess <= 0:
            break
        if job.state != JobState.QUEUED.value or job.last_processed_at is not None:
            continue
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job.id, JobRow.state == JobState.QUEUED.value)
            .where(JobRow.lock_token.is_(None), JobRow.last_processed_at.is_(None))
            .values(
                due_at=now + HOLD,
                phase_detail=f"waiting: at most {limit} runs of {group.id} at once",
            )
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(job)
            events.refresh_card(session, job)
            held.append(job.id)
            excess -= 1
    return held


def _release(session: Session, group: JobGroupRow, now: datetime, limit: int) -> list[str]:
    """Release held children (in order) while fewer than ``limit`` are active."""
    children = _children(session, group)
    free = limit - sum(1 for j in children if _is_active(j, now))
    released: list[str] = []
    for job in children:
        if free <= 0:
            break
        if not _is_held(job, now):
            continue
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job.id, JobRow.state == JobState.QUEUED.value)
            .where(JobRow.due_at > now + HOLD / 2)
            .values(due_at=now, phase_detail="")
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            released.append(job.id)
            free -= 1
    return released


def group_spent_usd(session: Session, job_ids: list[str]) -> Decimal:
    """What the ledger holds for these jobs together."""
    if not job_ids:
        return Decimal(0)
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
            LedgerEntryRow.job_id.in_(job_ids)
        )
    )
    return Decimal(str(total or 0))


def advance_groups(deps: EngineDeps, *, now: datetime) -> GroupTickReport:
    """One pass over every running group; call it every tick (after ``reconcile_tick``).

    Per group: enforce the group budget (alerts, then stop every live child at 100 %),
    release held children up to ``[engine] max_concurrent_children``, refresh the summary
    card, and when every child has finished, write the results (sweep table / merged shard
    results and manifest) and set the group's final state (posted once). Storage errors while
    merging are logged and retried on the next call.
    """
    report = GroupTickReport()
    limit = deps.config.engine.max_concurrent_children
    with session_scope(deps.sessions) as session:
        ids = list(session.scalars(select(JobGroupRow.id).where(JobGroupRow.state == RUNNING)))
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
        if group is None or group.state != RUNNING:
            return
        template = deps.config.templates.get(group.template)
        children = _children(session, group)
        if group.budget_usd is not None and _enforce_budget(session, group, children, now):
            report.stopped.append(group_id)
        report.held += _hold_excess(session, group, now, limit)
        report.released += _release(session, group, now, limit)
        _refresh_group_card(session, group, template)
        done = bool(children) and all(j.state in _FINISHED for j in children)
        snapshot = [(j.id, j.state) for j in children]
    if not done:
        return
    results = _finalize_results(deps, group_id, template)
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        if group is None or group.state != RUNNING:
            return
        children = _children(session, group)
        if [(j.id, j.state) for j in children] != snapshot:
            return  # a retry shard was added meanwhile
        state = _final_state(group, children, results)
        moved = session.execute(
            update(JobGroupRow)
            .where(JobGroupRow.id == group_id, JobGroupRow.state == RUNNING)
            .values(state=state, spec=dict(group.spec or {}, result=results))
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            return
        session.refresh(group)
        _refresh_group_card(session, group, template)
        outbox.reply(
            session,
            channel=group.channel,
            thread_key=group.id,
            group_id=group.id,
            text=_final_text(group, children, results, template),
        )
        report.finished.append(group_id)


def _final_state(group: JobGroupRow, children: list[JobRow], results: dict[str, Any]) -> str:
    """Sweeps succeed when every run did; sharded runs when every input file is ``ok`` (a
    failed shard whose files a retry processed no longer counts)."""
    states = {j.state for j in children}
    if (group.spec or {}).get("cancelled_by") or states == {JobState.CANCELLED.value}:
        return "cancelled"
    if group.kind == "shards":
        ok = results.get("total", 0) > 0 and not results.get("failed")
        return "succeeded" if ok else "failed"
    return "succeeded" if states == {JobState.SUCCEEDED.value} else "failed"


def _enforce_budget(
    session: Session, group: JobGroupRow, children: list[JobRow], now: datetime
) -> bool:
    """Alerts at 50/80 % and the stop at 100 % of the group budget. True when it stopped."""
    assert group.budget_usd is not None
    limit = Decimal(str(group.budget_usd))
    spent = group_spent_usd(session, [j.id for j in children])
    spec = dict(group.spec or {})
    alerted = {int(p) for p in spec.get("alerted_pcts", [])}
    verdict = costs.budget_verdict(spent, limit, alerted)
    stopped = False
    if verdict.new_alert_pcts:
        spec["alerted_pcts"] = sorted(alerted | set(verdict.new_alert_pcts))
        warn = [p for p in verdict.new_alert_pcts if p < 100]
        if warn and not verdict.stop:
            outbox.reply(
                session,
                channel=group.channel,
                thread_key=group.id,
                group_id=group.id,
                text=f":warning: Budget alert: {group.id} has used {max(warn)}% of its "
                f"{usd(limit)} group budget ({usd(spent)} spent).",
            )
    if verdict.stop and not spec.get("budget_stopped"):
        reason = f"group budget of {usd(limit)} for {group.id} reached (spent {usd(spent)})"
        spec["budget_stopped"] = reason
        for job in children:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job.id, JobRow.stop_requested_reason.is_(None))
                .where(JobRow.state.in_(_STOPPABLE))
                .values(stop_requested_reason=reason, due_at=now)
                .execution_options(synchronize_session=False)
            )
        _cancel_awaiting(session, children, reason, now)
        outbox.reply(
            session,
            channel=group.channel,
            thread_key=group.id,
            group_id=group.id,
            text=f":octagonal_sign: Stopping every run of {group.id}: {reason}. Saving "
            "checkpoints where supported, then destroying the instances.",
        )
        session.add(
            AuditEventRow(at=now, actor="gpubot", action="budget_stop", target=group.id,
                          reason=reason)
        )
        stopped = True
    if spec != group.spec:
        group.spec = spec
    return stopped


def _cancel_awaiting(session: Session, children: list[JobRow], reason: str, now: datetime) -> None:
    """Children still awaiting approval rented nothing: finish them as cancelled here."""
    for job in children:
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job.id, JobRow.state == JobState.AWAITING_APPROVAL.value)
            .values(state=JobState.CANCELLED.value, outcome=JobState.CANCELLED.value,
                    reason=reason, finished_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(job)
            events.refresh_card(session, job)


# -- summary and results ----------------------------------------------------------------------


def _metric_of(job: JobRow, template: Template | None) -> float | None:
    if template is None or not template.target_metric:
        return None
    metrics = (job.progress or {}).get("metrics") or {}
    value = metrics.get(template.target_metric)
    if value is None:
        value = ((job.results or {}).get("metrics") or {}).get(template.target_metric)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def summary_rows(
    session: Session, group: JobGroupRow, template: Template | None
) -> list[dict[str, Any]]:
    """Per child, in launch order: ``job_id, label, state, spent_usd, metric``."""
    labels = list((group.spec or {}).get("labels", []))
    rows = []
    for index, job in enumerate(_children(session, group)):
        rows.append(
            {
                "job_id": job.id,
                "label": labels[index] if index < len(labels) else job.id,
                "state": job.state,
                "spent_usd": events.spent_usd(session, job.id),
                "metric": _metric_of(job, template),
                "attempts": job.attempts,
            }
        )
    return rows


def _refresh_group_card(
    session: Session, group: JobGroupRow, template: Template | None
) -> None:
    rows = summary_rows(session, group, template)
    spent = sum((r["spent_usd"] for r in rows), Decimal(0))
    cap = f" of {usd(Decimal(str(group.budget_usd)))}" if group.budget_usd is not None else ""
    what = "Sweep" if group.kind == "sweep" else "Sharded run"
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    metric = template.target_metric if template is not None else None
    lines = [
        f"{what} {group.id} · {group.template} · {group.state} · {usd(spent)}{cap} · {tally}"
    ]
    ordered = rows
    best_id = None
    if group.state in FINISHED_GROUP_STATES and group.kind == "sweep" and template is not None:
        ordered = rank_runs(rows, template.target_mode)
        best = next((r for r in ordered if r["metric"] is not None
                     and r["state"] == JobState.SUCCEEDED.value), None)
        best_id = best["job_id"] if best else None
    for r in ordered:
        mark = " :trophy: best" if r["job_id"] == best_id else ""
        metric_text = f" · {md.inline(metric, 40)}={_fmt_metric(r['metric'])}" if metric else ""
        lines.append(
            f"• {r['job_id']} {md.inline(r['label'], 200)} · {r['state']} · {usd(r['spent_usd'])}"
            f"{metric_text}{mark}"
        )
    result = (group.spec or {}).get("result") or {}
    if result.get("manifest"):
        lines.append(
            f"Results: {md.inline(result['location'], 300)} "
            f"({result['ok']}/{result['total']} files ok)"
        )
        if result.get("failed"):
            lines.append(f"Failed files ({len(result['failed'])}): "
                         + ", ".join(md.inline(f, 200) for f in result["failed"][:20]))
    outbox.upsert_card(
        session,
        job_id=group.id,
        channel=group.channel,
        thread_key=group.id,
        text=md.clamp("\n".join(lines), md.TEXT_SOFT_MAX),
        group_id=group.id,
    )


def _finalize_results(
    deps: EngineDeps, group_id: str, template: Template | None
) -> dict[str, Any]:
    """Results of a finished group (S3 reads/writes; no session open while they run)."""
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        assert group is not None
        session.expunge(group)
        children = _children(session, group)
        for job in children:
            session.expunge(job)
    if group.kind == "shards":
        return merge_shard_results(deps, group, children)
    rows = []
    for job in children:
        metric = _metric_of(job, template)
        if metric is None and template is not None and template.target_metric:
            metric = _metric_from_results(deps, job, template.target_metric)
        rows.append({"job_id": job.id, "state": job.state, "metric": metric})
    ranked = rank_runs(rows, template.target_mode if template else TargetMode.MIN)
    best = next((r for r in ranked if r["metric"] is not None
                 and r["state"] == JobState.SUCCEEDED.value), None)
    return {"ranking": ranked, "best": best["job_id"] if best else None,
            "metric": template.target_metric if template else None}


def _metric_from_results(deps: EngineDeps, job: JobRow, name: str) -> float | None:
    if not any(f.get("name") == "metrics.json" for f in (job.results or {}).get("files", [])):
        return None
    try:
        data = json.loads(deps.store.get_bytes(f"jobs/{job.id}/results/metrics.json"))
        return float(data[name])
    except (GpubotError, ValueError, KeyError, TypeError):
        return None


def merge_shard_results(
    deps: EngineDeps, group: JobGroupRow, children: list[JobRow]
) -> dict[str, Any]:
    """Copy every shard's results under ``groups/<gid>/results/`` and write the manifest.

    ``manifest.jsonl`` has one line per input file (sorted): ``file, shard (1-based),
    job_id, pages, status`` (``ok``, ``error`` with ``error``, or ``missing`` when its shard
    produced no results). A file retried in a later shard takes that shard's entry.
    Idempotent (writes overwrite). Returns ``{"manifest", "location", "total", "ok",
    "failed": [files]}``.
    """
    store = deps.store
    spec = group.spec or {}
    by_id = {j.id: j for j in children}
    out_prefix = f"groups/{group.id}/results/"
    entries: dict[str, dict[str, Any]] = {}
    for number, shard in enumerate(spec.get("shards", []), start=1):
        job = by_id.get(str(shard.get("job_id")))
        if job is None:
            continue
        prefix = f"jobs/{job.id}/results/"
        reported: dict[str, dict[str, Any]] = {}
        if job.state == JobState.SUCCEEDED.value:
            for obj in store.list(prefix):
                rel = obj.key[len(prefix):]
                if rel in {"MANIFEST.jsonl", "manifest.jsonl"}:
                    continue
                store.put_bytes(out_prefix + rel, store.get_bytes(obj.key))
            try:
                body = store.get_bytes(prefix + "manifest.jsonl").decode()
            except GpubotError:
                body = ""
            for line in body.splitlines():
                if line.strip():
                    item = json.loads(line)
                    reported[str(item.get("file"))] = item
        for name in shard.get("files", []):
            item = reported.get(PurePosixPath(name).name)
            entry: dict[str, Any] = {"file": name, "shard": number, "job_id": job.id}
            if item is None:
                entry.update(pages=0, status="missing",
                             error=f"shard {job.id} {job.state}: {job.reason or 'no results'}"[
                                 :300])
            else:
                entry.update(pages=int(item.get("pages") or 0),
                             status=str(item.get("status") or "error"))
                if item.get("error"):
                    entry["error"] = str(item["error"])[:300]
            entries[name] = entry
    ordered = [entries[n] for n in sorted(entries)]
    body = "".join(json.dumps(e, sort_keys=True) + "\n" for e in ordered).encode()
    store.put_bytes(out_prefix + "manifest.jsonl", body)
    failed = [e["file"] for e in ordered if e["status"] != "ok"]
    return {
        "manifest": out_prefix + "manifest.jsonl",
        "location": store.url_for_display(out_prefix),
        "total": len(ordered),
        "ok": len(ordered) - len(failed),
        "failed": failed,
    }


def _final_text(
    group: JobGroupRow, children: list[JobRow], results: dict[str, Any],
    template: Template | None,
) -> str:
    head = {
        "succeeded": ":white_check_mark:", "failed": ":x:", "cancelled": ":no_entry:"
    }.get(group.state, "")
    lines = [f"{head} {group.id} {group.state}: "
             + ", ".join(f"{j.id} {j.state}" for j in children)]
    if group.kind == "sweep":
        metric = results.get("metric")
        labels = {j: lbl for j, lbl in zip((group.spec or {}).get("children", []),
                                           (group.spec or {}).get("labels", []), strict=False)}
        mode = template.target_mode.value if template else "min"
        if metric:
            lines.append(f"Results by {md.inline(metric, 40)} ({mode}):")
        for r in results.get("ranking", []):
            mark = " :trophy: best" if r["job_id"] == results.get("best") else ""
            lines.append(f"• {r['job_id']} {md.inline(labels.get(r['job_id'], ''), 200)}"
                         f" · {r['state']} · {md.inline(metric or 'metric', 40)}="
                         f"{_fmt_metric(r['metric'])}{mark}")
    else:
        lines.append(f"Merged results: {md.inline(results.get('location'), 300)} "
                     f"({results.get('ok')}/{results.get('total')} files ok; manifest.jsonl)")
        if results.get("failed"):
            lines.append(f"{len(results['failed'])} files failed; `retry` {group.id} runs "
                         "them again in one new shard.")
    return md.clamp("\n".join(lines), md.TEXT_SOFT_MAX)


# -- user actions -----------------------------------------------------------------------------


def _owned_group(session: Session, deps: EngineDeps, group_id: str, actor: str,
                 what: str) -> JobGroupRow:
    group = session.get(JobGroupRow, group_id)
    if group is None:
        raise CommandError(f"no group {group_id}")
    if actor != group.requester and not permissions.is_admin(deps.config, actor):
        raise PermissionDenied(
            f"{actor} may not {what} {group_id}",
            user_message=f"Only {md.mention(group.requester)} (who launched {group_id}) or an "
            f"admin can "
            f"{what} it.",
        )
    return group


def cancel_group(deps: EngineDeps, group_id: str, actor: str) -> int:
    """Cancel every live child (``cancel_requested``; held ones are released to tear down).

    Returns how many children were newly flagged or cancelled. Safe to repeat.

    Raises:
        CommandError: no such group. PermissionDenied: not the requester or an admin.
    """
    now = deps.clock()
    reason = f"group {group_id} cancelled by {md.mention(actor)}"
    count = 0
    with session_scope(deps.sessions) as session:
        group = _owned_group(session, deps, group_id, actor, "cancel")
        group.spec = dict(group.spec or {}, cancelled_by=actor)
        children = _children(session, group)
        before = {j.id: j.state for j in children}
        _cancel_awaiting(session, children, reason, now)
        count += sum(1 for j in children if before[j.id] != j.state)
        for job in children:
            done = session.execute(
                update(JobRow)
                .where(JobRow.id == job.id, JobRow.cancel_requested.is_(False))
                .where(JobRow.state.in_([s.value for s in JobState.live_states()
                                         if s is not JobState.AWAITING_APPROVAL]))
                .values(cancel_requested=True, reason=reason, due_at=now)
                .execution_options(synchronize_session=False)
            )
            count += done.rowcount  # type: ignore[attr-defined]
        outbox.reply(session, channel=group.channel, thread_key=group.id, group_id=group.id,
                     text=f":octagonal_sign: {reason}; stopping {count} runs.")
        session.add(AuditEventRow(at=now, actor=actor, action="cancel", target=group_id,
                                  reason=reason))
    deps.enqueuer.kick()
    return count


def approve_group(deps: EngineDeps, group_id: str, actor: str) -> list[str]:
    """An admin approves every child awaiting approval; the concurrency limit still holds.

    Returns the approved child ids. Raises PermissionDenied (not an admin, or the requester).
    """
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        if group is None:
            raise CommandError(f"no group {group_id}")
        permissions.check_approver(deps.config, actor, group.requester)
        approved = []
        for job in _children(session, group):
            done = session.execute(
                update(JobRow)
                .where(JobRow.id == job.id, JobRow.state == JobState.AWAITING_APPROVAL.value)
                .values(state=JobState.QUEUED.value, due_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount == 1:  # type: ignore[attr-defined]
                approved.append(job.id)
        session.flush()
        _hold_excess(session, group, now, deps.config.engine.max_concurrent_children)
        outbox.reply(session, channel=group.channel, thread_key=group.id, group_id=group.id,
                     text=f":white_check_mark: Approved by {md.mention(actor)}; "
                     "starting the runs.")
        session.add(AuditEventRow(at=now, actor=actor, action="approve", target=group_id))
    deps.enqueuer.kick()
    return approved


def retry_failed(deps: EngineDeps, group_id: str, actor: str) -> str | None:
    """Run the failed files of a finished sharded group again, in one new shard job.

    Returns the new child's id, or None when no file failed. The group goes back to
    ``running`` and its manifest is rewritten when the new shard ends. A repeated call while
    that retry runs returns the same job (idempotent).

    The files come from the group's declared input, looked up again by name in the current
    ``[inputs]`` (a group from before named inputs is matched by its source).

    Raises:
        CommandError: no such group, not a sharded group, it is still running, or its input
            is no longer declared (or may no longer be used).
        PermissionDenied: not the requester or an admin. NoOfferError/BudgetError: as submit.
    """
    with session_scope(deps.sessions) as session:
        group = _owned_group(session, deps, group_id, actor, "retry")
        if group.kind != "shards":
            raise CommandError(f"{group_id} is a {group.kind}; only sharded runs retry files")
        spec = dict(group.spec or {})
        if group.state == RUNNING:
            if spec.get("retries"):
                return str(spec["retries"][-1])  # a repeated click: the retry in flight
            raise CommandError(f"{group_id} is still running; retry when it has finished")
        requester, channel = group.requester, group.channel
    failed = list((spec.get("result") or {}).get("failed", []))
    if not failed:
        return None
    template = _template(deps, group.template)
    declared = _group_input(deps, spec)
    attempt = len(spec.get("retries", [])) + 1
    base = {
        k: v for k, v in dict(spec.get("base_params") or {}).items()
        if not str(k).startswith(INTERNAL_PARAM_PREFIX)
    }
    plan = launch.plan_launch(
        deps,
        LaunchCommand(template=template.name, params=base,
                      resources=planning.overrides_from_json(spec.get("resources") or {})),
    )
    params: dict[str, ParamValue | Any] = dict(base)
    if "src" in template.params:
        params["src"] = SHARD_DEST
    if "shards" in template.params:
        params["shards"] = 1
    params[staging.INPUTS_PARAM] = [
        {"input": declared.name, "dest": SHARD_DEST, "files": failed}
    ]
    job_id, _ = launch.submit(
        deps,
        replace(plan, params=params),
        requester=requester,
        channel=channel,
        request_key=f"{group_id}:retry:{attempt}",
        group_id=group_id,
    )
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        assert group is not None
        spec = dict(group.spec or {})
        if job_id not in spec.get("children", []):
            label = f"retry {attempt}: {len(failed)} failed files"
            spec["children"] = [*spec.get("children", []), job_id]
            spec["shards"] = [*spec.get("shards", []), {"files": failed, "job_id": job_id}]
            spec["labels"] = [*spec.get("labels", []), label]
            spec["retries"] = [*spec.get("retries", []), job_id]
        group.spec = spec
        group.state = RUNNING
        outbox.reply(session, channel=group.channel, thread_key=group.id, group_id=group.id,
                     text=f":arrows_counterclockwise: {md.mention(actor)} retries "
                     f"{len(failed)} failed "
                     f"files in {job_id}.")
        session.add(AuditEventRow(at=deps.clock(), actor=actor, action="retry",
                                  target=group_id, detail={"job_id": job_id,
                                                           "files": len(failed)}))
    return job_id


def _group_input(deps: EngineDeps, spec: dict[str, Any]) -> NamedInput:
    """The declared input of a sharded group's spec (``input``, or a legacy ``src`` equal to
    a declared input's source), checked for use as :func:`staging.resolve_input` does.

    Raises:
        CommandError: the input is not (or no longer) declared, or may not be used.
    """
    name = spec.get("input")
    if name is None and isinstance(spec.get("src"), str):
        name = next(
            (i.name for i in deps.config.inputs.values() if i.src == spec["src"]), None
        )
    if name is None:
        raise CommandError(
            "this run's input is no longer declared in [inputs]; ask an operator to declare "
            "it again"
        )
    return staging.resolve_input(deps, name)
