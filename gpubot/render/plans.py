"""The plan of a launch as text lines (pure: built from plain values, no DB, no provider).

Lines are raw text: whoever puts them into mrkdwn escapes them (``render/slack.py``,
``render/chat.py`` and the job card do), so a parameter value typed by a user shows as typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from gpubot.models import Offer, RentalType
from gpubot.render.text import usd


def plan_summary_lines(
    *,
    what: str,
    params: Mapping[str, object],
    offer: Offer,
    rental_type: RentalType,
    price_per_hour_usd: Decimal,
    expected_hours: float,
    estimate_usd: Decimal,
    reason: str,
    budget_usd: Decimal | None,
    approval_reason: str | None,
) -> list[str]:
    """``Plan for <what> k=v…:`` then the offer, the price and estimate, why this rental type,
    the budget cap and the approval reason when there are any. Parameters whose names start
    with ``_`` (the bot's bookkeeping) are left out."""
    kind = "interruptible" if rental_type is RentalType.INTERRUPTIBLE else "on-demand"
    shown = " ".join(f"{k}={v}" for k, v in sorted(params.items()) if not k.startswith("_"))
    lines = [
        f"Plan for {what}{(' ' + shown) if shown else ''}:",
        f"• {offer.num_gpus}x {offer.gpu_name} ({offer.gpu_ram_gb:.0f} GB), "
        f"reliability {offer.reliability:.1%}, offer {offer.offer_id}",
        f"• {kind} at {usd(price_per_hour_usd)}/h; about {expected_hours:g} h "
        f"≈ {usd(estimate_usd)}",
        f"• {reason}",
    ]
    if budget_usd is not None:
        lines.append(f"• budget cap for this job: {usd(budget_usd)}")
    if approval_reason:
        lines.append(f"• needs an admin's approval: {approval_reason}")
    return lines
