"""Texts of the limits that hold after approval: the approved run time, the live-job quotas
of group launches, and the approval request of a group. Pure (stdlib and render only).

Values that reach mrkdwn go through :mod:`gpubot.render.mrkdwn`; the ``*_reason`` texts are
raw (stored as a job's ``reason`` and escaped where they are shown).
"""

from __future__ import annotations

from decimal import Decimal

from gpubot.render import mrkdwn as md
from gpubot.render.events import per_hour


def _hours(hours: float) -> str:
    """``1.5 h`` or ``12 min`` (under an hour)."""
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.2f}".rstrip("0").rstrip(".") + " h"


def duration_stop_reason(*, ran_hours: float, approved_hours: float, grace_minutes: float) -> str:
    """Why a job was stopped past its approved run time (raw text, stored as its reason)."""
    return (
        f"ran {_hours(ran_hours)}, past its approved {_hours(approved_hours)} "
        f"(+ {grace_minutes:.0f} min grace): stopped like a budget stop (checkpoint, then "
        "destroy). Launch again with a larger hours= (an admin approves it if the estimate "
        "needs approval)"
    )


def duration_stop(reason: str) -> str:
    """The thread reply when the running step stops a job past its approved hours."""
    return f":stopwatch: Stopping: {md.inline(reason, 600)}."


def group_quota_refusal(
    *, kind: str, children: int, live: int, limit: int, scope: str
) -> str:
    """The refusal of a group launch that would exceed a live-job quota (mrkdwn; numbers
    only). ``scope`` is ``user`` or ``channel``."""
    what = "sweep" if kind == "sweep" else "sharded run"
    who = "You already have" if scope == "user" else "This channel already has"
    per = "per user" if scope == "user" else "per channel"
    return (
        f"Not launched: this {what} would start {children} jobs. {who} {live} live jobs and "
        f"the limit is {limit} {per}. Launch fewer runs (or shards), or wait for jobs to finish."
    )


def approve_quota_refusal(*, group_id: str, requester: str, waiting: int, live: int,
                          limit: int) -> str:
    """The refusal of a group approval that would take its requester past the quota
    (mrkdwn)."""
    return (
        f"Not approved: approving {md.inline(group_id, 40)} would give {md.mention(requester)} "
        f"{live + waiting} live jobs "
        f"({live} live + {waiting} awaiting approval); the limit is {limit} per user. Cancel "
        "some jobs first, or reject this launch."
    )


def group_approved(group_id: str, count: int) -> str:
    """The answer to the admin who approved a group (mrkdwn)."""
    return f"Approved {md.inline(group_id, 40)}: {count} runs queued."


def group_rejected(group_id: str, count: int) -> str:
    """The answer to the admin who rejected a group (mrkdwn)."""
    return f"Rejected {md.inline(group_id, 40)}: {count} runs cancelled; nothing was rented."


PRICE_WAIT_PREFIX = "waiting for a price approval"
"""How the phase detail of a job waiting on offers above its approved price begins: the
engine prompts when a wait begins that way, and a raise of the price clears the detail."""


def price_wait_detail(*, ceiling_usd: Decimal, cheapest_usd: Decimal) -> str:
    """The job's phase detail while offers exist only above its approved price (raw); it
    begins with :data:`PRICE_WAIT_PREFIX`."""
    return (f"{PRICE_WAIT_PREFIX}: no offer at or below the approved "
            f"{per_hour(ceiling_usd)}, the cheapest matching one costs {per_hour(cheapest_usd)}")


def price_prompt(*, job_id: str, requester: str, ceiling_usd: Decimal, cheapest_usd: Decimal,
                 resuming: bool, wait_hours: float) -> str:
    """The thread's prompt (mrkdwn) when offers exist only above the job's approved price:
    what the job would pay, that nothing bills while it waits, and until when."""
    why = "lost its rental (outbid, or its host is gone)" \
        if resuming else "has not started"
    return (
        f":hourglass: {md.mention(requester)} {md.inline(job_id, 80)} {why} and no offer "
        f"is left at or below its approved {per_hour(ceiling_usd)}. The cheapest matching one "
        f"costs {per_hour(cheapest_usd)}. Nothing bills while it waits; it rents at once if the "
        f"price is raised, or when an offer within the approved price appears. It fails "
        f"after {_hours(wait_hours)} of waiting."
    )
