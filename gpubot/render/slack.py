"""Block Kit for the Slack front: plan, approval request, offers, cost, App Home. Pure.

Status cards are drawn by :func:`gpubot.render.text.card_blocks` (the engine writes them into
the outbox). Texts here are mrkdwn; every builder returns a list of blocks (at most 50 for a
message, 100 for a view).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from gpubot.models import Offer
from gpubot.render.blocks import ACTION_APPROVE, ACTION_REJECT, button
from gpubot.render.text import card_lines, usd
from gpubot.render.views import JobView

MAX_SECTION_CHARS = 2900
"""Slack rejects section texts above 3000 characters."""


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_SECTION_CHARS]}}


def context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:MAX_SECTION_CHARS]}]}


def text_blocks(text: str) -> list[dict[str, Any]]:
    """Plain text as one section (code blocks kept intact)."""
    return [section(text)]


def plan_blocks(
    job_id: str, plan_lines: Sequence[str], *, awaiting_approval: bool
) -> list[dict[str, Any]]:
    """The ephemeral answer to a launch: the plan and what happens next."""
    head = f"*{plan_lines[0]}*" if plan_lines else f"*{job_id}*"
    blocks = [section(head + "\n" + "\n".join(plan_lines[1:]))]
    if awaiting_approval:
        blocks.append(context(f"{job_id} is waiting for an admin's approval (see the thread)."))
    else:
        blocks.append(context(f"{job_id} is queued; progress appears in the thread."))
    return blocks


def approval_blocks(
    job_id: str, requester: str, plan_lines: Sequence[str], reason: str, admins: Sequence[str]
) -> list[dict[str, Any]]:
    """The approval request posted in the job's thread, with Approve / Reject buttons."""
    who = " ".join(f"<@{a}>" for a in admins) or "an admin"
    return [
        section(
            f":raised_hand: <@{requester}>'s launch {job_id} needs approval ({reason}).\n"
            + "\n".join(plan_lines[1:])
        ),
        context(f"{who}: approve or reject. The requester can't approve their own launch."),
        {
            "type": "actions",
            "block_id": f"approval:{job_id}",
            "elements": [
                button(ACTION_APPROVE, "Approve", job_id, "primary"),
                button(ACTION_REJECT, "Reject", job_id, "danger"),
            ],
        },
    ]


def offers_table(offers: Sequence[Offer]) -> str:
    """A fixed-width table of offers (cheapest first) for a code block."""
    if not offers:
        return "No offer matches these filters right now."
    lines = [f"{'offer':>10}  {'gpu':<16} {'n':>2} {'ram':>5} {'$/h':>8} {'reliab':>7}  where"]
    for o in offers:
        lines.append(
            f"{o.offer_id:>10}  {o.gpu_name[:16]:<16} {o.num_gpus:>2} {o.gpu_ram_gb:>4.0f}G "
            f"{usd(o.price_per_hour_usd):>8} {o.reliability:>7.1%}  {o.geolocation[:20]}"
        )
    return "\n".join(lines)


def offers_blocks(offers: Sequence[Offer], title: str) -> list[dict[str, Any]]:
    return [section(f"*{title}*\n```{offers_table(offers)}```")]


def cost_table(rows: Sequence[tuple[str, Decimal]], title: str) -> list[dict[str, Any]]:
    """Spend per group as a code-block table."""
    width = max([len(r[0]) for r in rows] + [5])
    body = "\n".join(f"{label:<{width}}  {usd(amount):>10}" for label, amount in rows)
    return [section(f"*{title}*\n```{body or 'nothing spent'}```")]


def jobs_blocks(views: Sequence[JobView], title: str) -> list[dict[str, Any]]:
    if not views:
        return [section(f"*{title}*\nNo jobs.")]
    blocks: list[dict[str, Any]] = [section(f"*{title}*")]
    for view in views[:40]:
        blocks.append(section("\n".join(card_lines(view))))
    return blocks


def home_view(
    *,
    user: str,
    jobs: Sequence[JobView],
    spend_lines: Sequence[str],
    audit_lines: Sequence[str],
) -> dict[str, Any]:
    """The App Home tab: the user's live jobs and instances, spend vs budgets, recent audit."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "gpubot"}},
        section(f"Hi <@{user}>. Type `/gpu help` in a channel to start."),
        {"type": "divider"},
        section("*Your live jobs*"),
    ]
    if jobs:
        for view in jobs[:30]:
            blocks.append(section("\n".join(card_lines(view))))
    else:
        blocks.append(context("No live jobs."))
    blocks += [{"type": "divider"}, section("*Spend and budgets*")]
    blocks.append(section("\n".join(spend_lines) or "No spend recorded."))
    blocks += [{"type": "divider"}, section("*Recent activity*")]
    blocks.append(context("\n".join(audit_lines) or "Nothing yet."))
    return {"type": "home", "blocks": blocks[:100]}
