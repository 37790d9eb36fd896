"""The launch verbs: ``/gpu <template> …`` and ``/gpu launch``, ``/gpu rent``, and the group
launches (``/gpu sweep``, a shardable template with ``shards=N``).

A single launch checks the caller's quota (:mod:`gpubot.chat.quotas`), plans
(:func:`gpubot.chat.launch.plan_launch`: one market search), puts the estimate through the
approval rules and the budget gate, and submits (:func:`gpubot.chat.launch.submit`: database
writes only; the job stores its approved price ceiling and hours). When an admin must approve, the
approval request with its buttons is posted in the job's thread. Group launches are handed to
:mod:`gpubot.groups` (quotas count every child); a group that needs approval gets one
Approve / Reject request on its parent thread.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from gpubot.chat import launch, permissions, quotas
from gpubot.chat.reply import Reply
from gpubot.commands import LaunchCommand, RentCommand, SweepCommand
from gpubot.db.engine import session_scope
from gpubot.deps import EngineDeps
from gpubot.errors import BudgetError, PermissionDenied
from gpubot.governance.gate import launch_gate
from gpubot.notify import audit, outbox
from gpubot.render import chat as texts
from gpubot.render import events as thread
from gpubot.render import slack as slack_render


def is_sharded(deps: EngineDeps, command: LaunchCommand) -> bool:
    """A shardable template runs as a group (of N child jobs) with ``shards=N > 1``, and also
    with ``shards=1`` (or no ``shards``) when ``src=`` names something other than the
    template's default: ``src`` is then a declared input name, resolved, listed and staged by
    :func:`gpubot.groups.submit_shards` exactly as for N shards (a path, a URL or an unknown
    name is refused there with the usage message, before anything is listed or launched).
    A single run keeping the default ``src`` reads that folder of its own workspace."""
    template = deps.config.templates.get(command.template)
    if template is None or not template.shardable:
        return False
    try:
        if int(command.params.get("shards", 1)) > 1:
            return True
    except (TypeError, ValueError):
        return False
    return "src" in command.params and (
        command.params["src"] != template.default_params().get("src")
    )


def launch_job(
    deps: EngineDeps,
    command: LaunchCommand | RentCommand,
    *,
    user: str,
    channel: str,
    request_key: str | None,
) -> Reply:
    """Launch one job (or rent one interactive box) and answer with its plan.

    A ``request_key`` already used answers ``duplicate=True`` with the earlier job. The launch
    is audited by :func:`gpubot.chat.launch.submit` in its own transaction.

    Raises:
        PermissionDenied: quota exceeded, or a budget would be exceeded and
            ``[budgets] on_exceed = "refuse"``.
        NoOfferError, TransientProviderError, CommandError: from planning.
        IntegrityError: a concurrent redelivery of the same request won the insert (the
            dispatcher answers with the earlier reply).
    """
    with session_scope(deps.sessions) as session:
        quotas.check_quota(session, deps.config, user, channel)
    plan = launch.plan_launch(deps, command)
    reason = permissions.approval_reason(
        deps.config, price_per_hour_usd=plan.price_per_hour_usd, estimate_usd=plan.estimate_usd
    )
    budget_reason = _budget_verdict(deps, user, channel, plan.estimate_usd)
    if budget_reason:
        reason = "; ".join(r for r in (reason, budget_reason) if r)
    if reason:
        plan = replace(plan, approval_reason=reason)
    job_id, created = launch.submit(
        deps, plan, requester=user, channel=channel, request_key=request_key
    )
    if not created:
        return Reply(text=texts.already_handled(job_id), job_id=job_id, duplicate=True)
    lines = plan.summary_lines()
    if reason:
        with session_scope(deps.sessions) as session:
            outbox.reply(
                session,
                channel=channel,
                thread_key=job_id,
                job_id=job_id,
                text=thread.approval_requested(job_id, reason),
                blocks=slack_render.approval_blocks(
                    job_id, user, lines, reason, deps.config.roles.admins
                ),
            )
            audit.record(session, user, "approval.request", job_id, reason)
    return Reply(
        text=texts.launch_text(job_id, lines, reason or ""),
        blocks=slack_render.plan_blocks(job_id, lines, awaiting_approval=bool(reason)),
        job_id=job_id,
    )


def _budget_verdict(deps: EngineDeps, user: str, channel: str, estimate_usd: Decimal) -> str:
    """'' when the launch fits the budgets, else why it needs approval.

    Raises:
        PermissionDenied: a budget would be exceeded and ``[budgets] on_exceed = "refuse"``.
    """
    verdict = launch_gate(deps, requester=user, channel=channel, estimate_usd=estimate_usd)
    try:
        return verdict.approval_reason() or ""
    except BudgetError as e:
        raise PermissionDenied(
            f"budget exceeded for {user}", user_message=f"Not launched: {verdict.reason}."
        ) from e


def launch_group(
    deps: EngineDeps,
    command: LaunchCommand | SweepCommand,
    *,
    user: str,
    channel: str,
    request_key: str | None,
) -> Reply:
    """Launch a sweep (one child per combination) or a sharded run (``shards=N`` children)
    as one group; the reply is public and names the group and its children."""
    from gpubot import groups

    permissions.check_may_use(deps.config, user, channel)
    if isinstance(command, SweepCommand):
        sub = groups.submit_sweep(
            deps, command, requester=user, channel=channel, request_key=request_key
        )
    else:
        sub = groups.submit_shards(
            deps,
            command,
            shards=int(command.params.get("shards", 1)),
            requester=user,
            channel=channel,
            request_key=request_key,
        )
    with session_scope(deps.sessions) as session:
        audit.record(
            session,
            user,
            "launch_group",
            sub.group_id,
            sub.approval_reason or "",
            {"children": list(sub.job_ids), "estimate_usd": str(sub.estimate_usd)},
        )
        if sub.created and sub.approval_reason:
            # The whole group waits for one decision: Approve / Reject on its parent thread
            # (routed to approvals.approve_group / reject_group by the group id).
            lines = sub.text.splitlines()
            outbox.reply(
                session,
                channel=channel,
                thread_key=sub.group_id,
                group_id=sub.group_id,
                text=thread.approval_requested(sub.group_id, sub.approval_reason),
                blocks=slack_render.approval_blocks(
                    sub.group_id, user, lines, sub.approval_reason, deps.config.roles.admins
                ),
            )
            audit.record(session, user, "approval.request", sub.group_id, sub.approval_reason)
    return Reply(
        text=sub.text,
        ephemeral=False,
        job_id=sub.group_id,
        job_ids=list(sub.job_ids),
        duplicate=not sub.created,
    )
