"""Launching a group: :func:`submit_sweep`, :func:`submit_shards` and the retry shard of
:func:`gpubot.groups.actions.retry_failed` (:func:`submit_retry`).

One market search, one plan per child, the approval rules and the budget gate applied to the
*group total*, the group's one top-level message (its live summary card, showing the plan
first) and the children, each launched through :func:`gpubot.chat.launch.submit` (their
cards go to the group's thread). Idempotent per ``request_key``: the group id is derived
from it and each child gets ``<request_key>#<n>``, so a redelivered command or a crash midway
never launches twice. Children beyond ``[engine] max_concurrent_children`` are held
(:func:`gpubot.groups.children.hold_excess`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from gpubot.chat import launch, permissions, quotas
from gpubot.commands.types import LaunchCommand, ResourceOverrides, SweepCommand
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobGroupRow, JobRow, ProcessedRequestRow
from gpubot.deps import EngineDeps
from gpubot.engine import planning, staging
from gpubot.errors import CommandError
from gpubot.governance.gate import launch_gate
from gpubot.groups import children as kids
from gpubot.groups import shards as sharding
from gpubot.groups import summary
from gpubot.notify import audit, outbox
from gpubot.render import groups as render
from gpubot.templates import INTERNAL_PARAM_PREFIX, Template

logger = logging.getLogger(__name__)


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


def new_group_id(request_key: str | None = None) -> str:
    """``g-`` + 8 hex (fits ``messages.job_id``); derived from ``request_key`` when given.
    Pure (random when there is no key)."""
    if request_key:
        return "g-" + hashlib.sha256(request_key.encode()).hexdigest()[:8]
    return "g-" + secrets.token_hex(4)


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
            group total exceeds a budget and ``on_exceed = "refuse"``. PermissionDenied: the
            children would exceed a live-job quota (every child counts,
            :func:`gpubot.chat.quotas.check_group_quota`). Nothing is written then.
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
    labels = [render.sweep_label(run, axes) for run in runs]
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
    :func:`~gpubot.groups.shards.balance_shards` (fewer children when there are fewer files).
    Each child gets only its own files, staged under ``input/`` of its workspace
    (:func:`~gpubot.groups.shards.shard_params`).

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
    parts = [
        p for p in sharding.balance_shards([(f.name, f.size_bytes) for f in listing], shards) if p
    ]
    if any(len(p) > sharding.INLINE_FILES_MAX for p in parts):
        raise CommandError(
            f"a shard may hold at most {sharding.INLINE_FILES_MAX} files; use more shards"
        )
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
    plans = [
        replace(plan, params=sharding.shard_params(template, base, declared.name, files))
        for files in parts
    ]
    labels = [
        render.shard_label(i + 1, len(parts), len(p), sum(sizes[f] for f in p))
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
    """The configured template ``name``. Raises CommandError when there is none."""
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
    """The shared launch of a group: gate the total, check the live-job quotas for every
    child, write the group row, its parent message and audit event, launch each child,
    record the children and hold the excess."""
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
    gate = launch_gate(
        deps, requester=requester, channel=channel, estimate_usd=total
    ).approval_reason()
    reason = "; ".join(r for r in (reason, gate) if r) or None
    with session_scope(deps.sessions) as session:
        # Every child is a live job of the requester (held or awaiting approval included).
        quotas.check_group_quota(
            session, deps.config, requester, channel, kind=kind, children=len(plans)
        )
    limit = deps.config.engine.max_concurrent_children
    group_id = new_group_id(request_key)
    text = "\n".join(
        render.plan_lines(
            _plan_view(kind, template, first, labels, total, budget_usd, limit, reason)
        )
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
                    spec=dict(
                        spec, estimate_usd=str(total), approval_reason=reason, plan_text=text
                    ),
                    state=kids.RUNNING,
                    created_at=deps.clock(),
                )
            )
            session.flush()
            # The group's top-level message is its live summary, showing the plan first.
            new_group = session.get(JobGroupRow, group_id)
            assert new_group is not None
            summary.refresh_card(session, new_group, template)
            audit.record(
                session,
                requester,
                f"launch_{kind}",
                group_id,
                reason or "",
                {"template": template.name, "children": len(plans),
                 "estimate_usd": str(total), "channel": channel},
                at=deps.clock(),
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
        held = kids.hold_excess(session, group, deps.clock(), limit)
        if request_key and session.get(ProcessedRequestRow, request_key) is None:
            session.add(ProcessedRequestRow(key=request_key, result={"group_id": group_id}))
        summary.refresh_card(session, group, template)
    logger.info("group %s: %d children, %d held", group_id, len(job_ids), len(held))
    deps.enqueuer.kick()
    return GroupSubmission(group_id, job_ids, text, True, total, reason)


def _plan_view(
    kind: str,
    template: Template,
    plan: launch.Plan,
    labels: list[str],
    total: Decimal,
    budget_usd: Decimal | None,
    limit: int,
    reason: str | None,
) -> render.GroupPlanView:
    """The renderable plan of a group whose children all run ``plan``'s offer."""
    offer = plan.choice.offer
    return render.GroupPlanView(
        kind=kind,
        template=template.name,
        labels=labels,
        max_concurrent=limit,
        num_gpus=offer.num_gpus,
        gpu_name=offer.gpu_name,
        price_per_hour_usd=plan.price_per_hour_usd,
        rental_type=plan.choice.rental_type.value,
        expected_hours=plan.expected_hours,
        run_estimate_usd=plan.estimate_usd,
        total_estimate_usd=total,
        budget_usd=budget_usd,
        target_metric=template.target_metric,
        target_mode=template.target_mode.value,
        approval_reason=reason,
    )


def submit_retry(
    deps: EngineDeps,
    group_id: str,
    *,
    spec: dict[str, Any],
    template_name: str,
    files: list[str],
    actor: str,
    requester: str,
    channel: str,
) -> str:
    """Launch one new shard job of a finished sharded group for ``files`` and add it to the
    group (``spec`` as read by the caller), which goes back to ``running``.

    The files come from the group's declared input, looked up again by name in the current
    ``[inputs]`` (a group from before named inputs is matched by its source). Idempotent per
    retry attempt (request key ``<gid>:retry:<n>``). Returns the new child's id.

    Raises:
        CommandError: unknown template, or the input is no longer declared (or may no longer
            be used). NoOfferError/BudgetError: as :func:`submit_sweep`. PermissionDenied: the
            requester is at a live-job quota.
    """
    template = _template(deps, template_name)
    declared = sharding.group_input(deps, spec)
    attempt = len(spec.get("retries", [])) + 1
    if not _launched(deps, f"{group_id}:retry:{attempt}"):
        with session_scope(deps.sessions) as session:
            quotas.check_quota(session, deps.config, requester, channel)
    base = {
        k: v for k, v in dict(spec.get("base_params") or {}).items()
        if not str(k).startswith(INTERNAL_PARAM_PREFIX)
    }
    plan = launch.plan_launch(
        deps,
        LaunchCommand(template=template.name, params=base,
                      resources=planning.overrides_from_json(spec.get("resources") or {})),
    )
    job_id, _ = launch.submit(
        deps,
        replace(plan, params=sharding.shard_params(template, base, declared.name, files)),
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
            spec["children"] = [*spec.get("children", []), job_id]
            spec["shards"] = [*spec.get("shards", []), {"files": files, "job_id": job_id}]
            spec["labels"] = [*spec.get("labels", []), render.retry_label(attempt, len(files))]
            spec["retries"] = [*spec.get("retries", []), job_id]
        group.spec = spec
        group.state = kids.RUNNING
        outbox.reply(session, channel=group.channel, thread_key=group.id, group_id=group.id,
                     text=render.retry_text(actor, len(files), job_id))
        audit.record(session, actor, "retry", group_id, "",
                     {"job_id": job_id, "files": len(files)}, at=deps.clock())
    return job_id


def _launched(deps: EngineDeps, request_key: str) -> bool:
    """True when a job with ``request_key`` exists already (a repeated retry launches nothing
    new, so it is not checked against the quota again)."""
    with session_scope(deps.sessions) as session:
        found = session.scalar(select(JobRow.id).where(JobRow.request_key == request_key))
    return found is not None
