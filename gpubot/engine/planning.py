"""From a stored job (or a launch command) to requirements, an offer choice and an estimate.

Glue between the pure decision core (``gpubot.offers``, ``gpubot.costs``) and job rows; the
overrides a user typed are stored on the job as JSON (:func:`overrides_to_json`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from gpubot import costs, offers
from gpubot.commands.types import ResourceOverrides
from gpubot.config import BotConfig
from gpubot.db.tables import JobRow
from gpubot.errors import AboveCeilingError, NoOfferError
from gpubot.models import InterruptibleMode, Offer, OfferRanking, RentalChoice, Requirements

DEFAULT_RENT_IMAGE = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
DEFAULT_RENT_DISK_GB = 30
DEFAULT_RENT_HOURS = 2.0

PRICE_TOLERANCE = Decimal("0.20")
"""How far above the planned $/h a renting step may go (+20 %): the market moves between the
plan and the rental (min_bid drift, the planned offer taken), but never past what was approved
(see :func:`price_ceiling`)."""
DURATION_GRACE_FRACTION = 0.10
"""A job may run its approved hours plus 10 % of them, or plus :data:`DURATION_GRACE_MIN`
when that is longer (see :func:`duration_grace`)."""
DURATION_GRACE_MIN = timedelta(minutes=10)


def overrides_to_json(overrides: ResourceOverrides) -> dict[str, Any]:
    """JSON-safe form of the user's resource keys (None values dropped)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(overrides):
        value = getattr(overrides, f.name)
        if value is None:
            continue
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, InterruptibleMode):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def overrides_from_json(data: dict[str, Any]) -> ResourceOverrides:
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(ResourceOverrides)}
    for key, value in (data or {}).items():
        if key not in names or value is None:
            continue
        if key in {"max_price_per_hour_usd", "budget_usd"}:
            value = Decimal(str(value))
        elif key == "interruptible":
            value = InterruptibleMode(value)
        elif key == "gpu_names":
            value = tuple(value)
        kwargs[key] = value
    return ResourceOverrides(**kwargs)


def requirements_for(
    config: BotConfig, template_name: str | None, overrides: ResourceOverrides
) -> Requirements:
    """Requirements of a templated job or (template None) of an interactive rental."""
    if template_name is not None and template_name in config.templates:
        req = offers.requirements_from(config.templates[template_name], overrides)
    else:
        req = Requirements(
            gpu_names=tuple(overrides.gpu_names or ()),
            num_gpus=overrides.num_gpus or 1,
            min_gpu_ram_gb=overrides.min_gpu_ram_gb or 0.0,
            max_price_per_hour_usd=overrides.max_price_per_hour_usd,
            disk_gb=overrides.disk_gb or DEFAULT_RENT_DISK_GB,
        )
    blocked = frozenset(config.engine.blocked_host_ids)
    return with_blocked_hosts(req, blocked)


def requirements_from_job(config: BotConfig, job: JobRow) -> Requirements:
    template = job.template if job.kind == "job" else None
    return requirements_for(config, template, overrides_from_json(job.resources))


def with_blocked_hosts(req: Requirements, hosts: frozenset[str]) -> Requirements:
    return dataclasses.replace(req, blocked_host_ids=req.blocked_host_ids | hosts)


def mode_for(
    config: BotConfig, template_name: str | None, overrides: ResourceOverrides
) -> InterruptibleMode:
    if overrides.interruptible is not None:
        return overrides.interruptible
    if template_name is not None and template_name in config.templates:
        return config.templates[template_name].resources.interruptible
    return InterruptibleMode.NO  # an interactive box is never preempted unless asked


def interruptible_mode_of(job: JobRow) -> InterruptibleMode:
    """The mode the job was planned with (the user's `interruptible=`, else the plan's)."""
    overrides = overrides_from_json(job.resources)
    if overrides.interruptible is not None:
        return overrides.interruptible
    stored = (job.plan or {}).get("mode")
    if stored:
        return InterruptibleMode(stored)
    return InterruptibleMode.NO if job.kind == "interactive" else InterruptibleMode.AUTO


def hours_for(config: BotConfig, template_name: str | None, overrides: ResourceOverrides) -> float:
    if overrides.hours is not None:
        return float(overrides.hours)
    if template_name is not None and template_name in config.templates:
        return float(config.templates[template_name].resources.expected_hours)
    return DEFAULT_RENT_HOURS


def expected_hours_of(config: BotConfig, job: JobRow) -> float:
    template = job.template if job.kind == "job" else None
    return hours_for(config, template, overrides_from_json(job.resources))


def image_of(config: BotConfig, job: JobRow) -> str:
    overrides = overrides_from_json(job.resources)
    if overrides.image:
        return overrides.image
    if job.kind == "job" and job.template in config.templates:
        return config.templates[job.template].image
    return DEFAULT_RENT_IMAGE


def ranking_for(config: BotConfig, template_name: str | None) -> OfferRanking:
    if template_name is not None and template_name in config.templates:
        return config.templates[template_name].resources.ranking
    return OfferRanking.PRICE


def checkpoints_for(config: BotConfig, template_name: str | None) -> bool:
    if template_name is not None and template_name in config.templates:
        return bool(config.templates[template_name].resources.checkpoints)
    return False


def choose_rental(
    market: Sequence[Offer],
    requirements: Requirements,
    *,
    mode: InterruptibleMode,
    expected_hours: float,
    checkpoints: bool,
    ranking: OfferRanking = OfferRanking.PRICE,
) -> RentalChoice:
    """The core's offer choice (raises NoOfferError)."""
    return offers.choose_rental(
        market,
        requirements,
        mode=mode,
        expected_hours=expected_hours,
        checkpoints=checkpoints,
        ranking=ranking,
    )


def offer_snapshot(offer: Offer) -> dict[str, Any]:
    """The offer as rented, JSON-safe (Decimals as strings)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(offer):
        value = getattr(offer, f.name)
        out[f.name] = str(value) if isinstance(value, Decimal) else value
    return out


def estimate(choice: RentalChoice, disk_gb: int, hours: float) -> Any:
    return costs.estimate_job_cost(choice, disk_gb, hours)


# -- limits that hold after approval ----------------------------------------------------------


def price_ceiling(
    planned_per_hour_usd: Decimal, approval_threshold_usd: Decimal | None
) -> Decimal:
    """The most a renting step may pay per hour for a job planned at ``planned_per_hour_usd``.
    Pure.

    The planned price plus :data:`PRICE_TOLERANCE` (+20 %), but no higher than the
    ``[roles] approval_above_price_per_hour_usd`` threshold when the plan was under it (a
    launch approved by nobody never rents above the price that needs approval). A plan above
    the threshold was approved by an admin at its price: the ceiling is then plan + 20 %.
    Never below the planned price. Rounded down to $0.00000001 (the column's scale).
    """
    ceiling = planned_per_hour_usd * (1 + PRICE_TOLERANCE)
    if approval_threshold_usd is not None and planned_per_hour_usd <= approval_threshold_usd:
        ceiling = min(ceiling, approval_threshold_usd)
    ceiling = max(ceiling, planned_per_hour_usd)
    return ceiling.quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)


def ceiling_of(job: JobRow) -> Decimal | None:
    """The job's stored price ceiling ($/h), None when it has none (older jobs)."""
    value = job.price_ceiling_per_hour_usd
    return Decimal(value) if value is not None else None


def duration_grace(approved_hours: float) -> timedelta:
    """The grace past the approved run time before the job is stopped. Pure: 10 % of the
    approved hours, at least :data:`DURATION_GRACE_MIN` (10 minutes)."""
    return max(timedelta(hours=approved_hours * DURATION_GRACE_FRACTION), DURATION_GRACE_MIN)


def duration_limit(approved_hours: float) -> timedelta:
    """How long a job approved for ``approved_hours`` may run in all (hours + grace). Pure."""
    return timedelta(hours=approved_hours) + duration_grace(approved_hours)


def choose_within_ceiling(
    market: Sequence[Offer],
    requirements: Requirements,
    *,
    ceiling_usd: Decimal | None,
    mode: InterruptibleMode,
    expected_hours: float,
    checkpoints: bool,
    ranking: OfferRanking = OfferRanking.PRICE,
) -> RentalChoice:
    """:func:`choose_rental` restricted to charged prices at or below ``ceiling_usd`` (None:
    no ceiling). Pure.

    The ceiling is applied as the requirements' price cap (the lower of it and a user's
    ``max_price=``), which the core compares with the charged price: bid + storage for an
    interruptible rental, on-demand ``dph_total`` otherwise. The returned choice's
    ``price_per_hour_usd`` is therefore never above the ceiling.

    Raises:
        NoOfferError: nothing qualifies. When offers qualify only above the ceiling, an
            :class:`~gpubot.errors.AboveCeilingError`, whose message says so and names the
            cheapest of them (a "wait for a cheaper offer"), its price in
            ``cheapest_per_hour_usd``.
    """
    capped = requirements
    if ceiling_usd is not None:
        cap = requirements.max_price_per_hour_usd
        capped = dataclasses.replace(
            requirements,
            max_price_per_hour_usd=ceiling_usd if cap is None else min(cap, ceiling_usd),
        )
    kwargs: dict[str, Any] = {
        "mode": mode, "expected_hours": expected_hours, "checkpoints": checkpoints,
        "ranking": ranking,
    }
    try:
        choice = choose_rental(market, capped, **kwargs)
    except NoOfferError:
        if capped is requirements:
            raise
        try:
            above = choose_rental(market, requirements, **kwargs)
        except NoOfferError:
            raise NoOfferError(
                f"no offer at or below the approved ceiling ${ceiling_usd}/h"
            ) from None
        raise AboveCeilingError(
            f"no offer at or below the approved ceiling ${ceiling_usd}/h (the cheapest "
            f"matching one costs ${above.price_per_hour_usd}/h)",
            cheapest_per_hour_usd=above.price_per_hour_usd,
        ) from None
    if ceiling_usd is not None and choice.price_per_hour_usd > ceiling_usd:
        # The core's cap check and RentalChoice's price must agree; never rent above it.
        raise NoOfferError(
            f"no offer at or below the approved ceiling ${ceiling_usd}/h"
        )  # pragma: no cover
    return choice
