"""Launching: a command becomes a plan (offer, $/h, estimate, rental type and why), and an
accepted plan becomes a queued job with its live card (the top-level message of its thread,
showing the plan first; a run of a group gets its card in the group's thread).

``plan_launch`` makes one provider search and no writes; ``submit`` makes only database
writes (no provider call), so a slash command can be answered within Slack's 3 s.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from gpubot.commands.types import LaunchCommand, RentCommand, ResourceOverrides
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow, ProcessedRequestRow
from gpubot.deps import EngineDeps
from gpubot.engine import planning
from gpubot.errors import CommandError
from gpubot.models import (
    InterruptibleMode,
    JobState,
    Offer,
    RentalChoice,
    Requirements,
)
from gpubot.notify import audit, events
from gpubot.render.plans import plan_summary_lines
from gpubot.templates import ParamValue

PLAN_MARKET_TTL_SECONDS = 20.0
"""A plan may use a market search this old. Plans are advice shown within Slack's 3 s; the
worker searches live again when it rents, so a stale offer only costs a "trying the next
offer" note. A burst of identical commands then costs one search, not one each."""

_market_lock = threading.Lock()
_market_cache: dict[tuple[int, Requirements, bool], tuple[float, Sequence[Offer]]] = {}


def _market(deps: EngineDeps, requirements: Requirements, interruptible: bool) -> Sequence[Offer]:
    key = (id(deps.provider), requirements, interruptible)
    now = time.monotonic()
    with _market_lock:
        hit = _market_cache.get(key)
        if hit is not None and now - hit[0] < PLAN_MARKET_TTL_SECONDS:
            return hit[1]
    offers = deps.provider.search_offers(requirements, interruptible=interruptible)
    with _market_lock:
        if len(_market_cache) > 256:
            _market_cache.clear()
        _market_cache[key] = (now, offers)
    return offers


def new_job_id() -> str:
    return "j-" + secrets.token_hex(4)


@dataclass(frozen=True)
class Plan:
    """What the bot intends to rent for a command, and what it will cost."""

    kind: str
    """``job`` or ``interactive``."""
    template: str
    params: dict[str, ParamValue]
    overrides: ResourceOverrides
    requirements: Requirements
    choice: RentalChoice
    mode: InterruptibleMode
    expected_hours: float
    estimate_usd: Decimal
    budget_usd: Decimal | None
    approval_reason: str | None = None

    @property
    def price_per_hour_usd(self) -> Decimal:
        return self.choice.price_per_hour_usd

    def summary_lines(self) -> list[str]:
        """The plan as raw text lines (:func:`gpubot.render.plans.plan_summary_lines`)."""
        return plan_summary_lines(
            what="interactive box" if self.kind == "interactive" else self.template,
            params=self.params,
            offer=self.choice.offer,
            rental_type=self.choice.rental_type,
            price_per_hour_usd=self.price_per_hour_usd,
            expected_hours=self.expected_hours,
            estimate_usd=self.estimate_usd,
            reason=self.choice.reason,
            budget_usd=self.budget_usd,
            approval_reason=self.approval_reason,
        )


def plan_launch(deps: EngineDeps, command: LaunchCommand | RentCommand) -> Plan:
    """Search the market and choose; raises NoOfferError / CommandError. No writes.

    Budgets are not checked here: callers put the estimate through
    :func:`gpubot.governance.gate.launch_gate` and set ``approval_reason``."""
    if isinstance(command, LaunchCommand):
        kind, template_name = "job", command.template
        params = dict(command.params)
        if template_name not in deps.config.templates:
            raise CommandError(f"unknown template {template_name!r}")
    else:
        kind, template_name, params = "interactive", "rent", {}
    overrides = command.resources
    tpl = template_name if kind == "job" else None
    requirements = planning.requirements_for(deps.config, tpl, overrides)
    mode = planning.mode_for(deps.config, tpl, overrides)
    hours = planning.hours_for(deps.config, tpl, overrides)
    if isinstance(command, RentCommand) and command.hours is not None:
        hours = float(command.hours)
    interruptible = mode is not InterruptibleMode.NO
    market = _market(deps, requirements, interruptible)
    choice = planning.choose_rental(
        market,
        requirements,
        mode=mode,
        expected_hours=hours,
        checkpoints=planning.checkpoints_for(deps.config, tpl),
        ranking=planning.ranking_for(deps.config, tpl),
    )
    estimate = planning.estimate(choice, requirements.disk_gb, hours)
    budget = overrides.budget_usd
    if budget is None and kind == "job":
        budget = deps.config.budgets.job_default_usd
    return Plan(
        kind=kind,
        template=template_name,
        params=params,
        overrides=overrides,
        requirements=requirements,
        choice=choice,
        mode=mode,
        expected_hours=hours,
        estimate_usd=estimate.total_usd,
        budget_usd=budget,
    )


def submit(
    deps: EngineDeps,
    plan: Plan,
    *,
    requester: str,
    channel: str,
    request_key: str | None,
    group_id: str | None = None,
) -> tuple[str, bool]:
    """Create the job row, its live card (the thread's root; in the group's thread for a run
    of ``group_id``) and an audit entry.

    Returns ``(job_id, created)``. A ``request_key`` already used returns the earlier job
    with ``created=False``: a redelivered Slack request never launches twice.

    The limits the launch is approved with are stored with the job and hold after approval:
    ``price_ceiling_per_hour_usd`` (:func:`gpubot.engine.planning.price_ceiling`: the plan's
    $/h + 20 %, no higher than the approval threshold when the plan was under it), which every
    renting and re-renting step respects, and ``approved_hours`` (the plan's hours), past
    which (plus :func:`gpubot.engine.planning.duration_grace`) the running step stops it.
    """
    state = JobState.AWAITING_APPROVAL if plan.approval_reason else JobState.QUEUED
    ceiling = planning.price_ceiling(
        plan.price_per_hour_usd, deps.config.roles.approval_above_price_per_hour_usd
    )
    with session_scope(deps.sessions) as session:
        if request_key:
            existing = session.scalars(
                select(JobRow).where(JobRow.request_key == request_key)
            ).first()
            if existing is not None:
                return existing.id, False
        job_id = new_job_id()
        plan_json: dict[str, Any] = {
            "offer": planning.offer_snapshot(plan.choice.offer),
            "rental_type": plan.choice.rental_type.value,
            "bid_per_hour_usd": str(plan.choice.bid_per_hour_usd)
            if plan.choice.bid_per_hour_usd is not None
            else None,
            "price_per_hour_usd": str(plan.price_per_hour_usd),
            "reason": plan.choice.reason,
            "estimate_usd": str(plan.estimate_usd),
            "expected_hours": plan.expected_hours,
            "mode": plan.mode.value,
            "approval_reason": plan.approval_reason,
            "price_ceiling_per_hour_usd": str(ceiling),
        }
        job = JobRow(
            id=job_id,
            kind=plan.kind,
            template=plan.template,
            params={k: v for k, v in plan.params.items()},
            resources=planning.overrides_to_json(plan.overrides),
            plan=plan_json,
            requester=requester,
            channel=channel,
            request_key=request_key,
            group_id=group_id,
            state=state.value,
            budget_usd=plan.budget_usd,
            price_ceiling_per_hour_usd=ceiling,
            approved_hours=plan.expected_hours,
            created_at=deps.clock(),
            updated_at=deps.clock(),
            due_at=deps.clock(),
            step_started_at=deps.clock(),
        )
        session.add(job)
        if request_key:
            session.add(ProcessedRequestRow(key=request_key, result={"job_id": job_id}))
        # Through the recorder: user parameters are redacted before they are stored.
        audit.record(
            session,
            requester,
            "launch",
            job_id,
            plan.approval_reason or "",
            {
                "template": plan.template,
                "params": {k: str(v) for k, v in plan.params.items() if not k.startswith("_")},
                "channel": channel,
                "price_per_hour_usd": str(plan.price_per_hour_usd),
                "estimate_usd": str(plan.estimate_usd),
            },
            at=deps.clock(),
        )
        session.flush()
        if group_id is None:
            # The job's live card is its top-level message: the plan until it rents.
            job.plan = dict(job.plan, summary_lines=plan.summary_lines())
        events.refresh_card(session, job)
    deps.enqueuer.kick()
    return job_id, True
