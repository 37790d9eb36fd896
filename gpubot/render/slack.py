"""Block Kit for the Slack front: plan, approval request, offers, cost, App Home. Pure.

Status cards are drawn by :func:`gpubot.render.text.card_blocks` (the engine writes them into
the outbox). Texts here are mrkdwn; every builder returns a list of blocks (at most 50 for a
message, 100 for a view) whose texts stay within Slack's limits (see
:mod:`gpubot.render.mrkdwn`). Raw values (plan lines, offers, labels, user ids) are escaped
here; arguments documented as "mrkdwn" must already be escaped by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from gpubot.models import Offer
from gpubot.render import mrkdwn as md
from gpubot.render.blocks import ACTION_APPROVE, ACTION_REJECT, button, reject_confirm
from gpubot.render.text import card_lines, usd
from gpubot.render.views import JobView

MAX_SECTION_CHARS = md.SECTION_TEXT_MAX
"""Slack rejects section texts above 3000 characters ("Section block" reference)."""
MAX_JOB_CARDS = 40
"""Job lists show at most this many cards (a message holds at most 50 blocks)."""


def section(text: str, *, keep: str = "head") -> dict[str, Any]:
    """A mrkdwn section; ``text`` (already mrkdwn) is clamped at line boundaries to Slack's
    3000 characters, keeping the first (``keep="head"``) or last (``"tail"``) lines; an open
    code fence is closed."""
    return {"type": "section", "text": {"type": "mrkdwn", "text": md.clamp(text, keep=keep)}}


def context(text: str) -> dict[str, Any]:
    """A context block with one mrkdwn element (``text`` already mrkdwn, clamped)."""
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": md.clamp(text)}]}


def text_blocks(text: str) -> list[dict[str, Any]]:
    """Already-escaped mrkdwn ``text`` as one section (clamped at line boundaries; a code
    fence is never left open)."""
    return [section(text)]


def code_blocks(title: str, lines: Sequence[str] | str) -> list[dict[str, Any]]:
    """A bold ``title`` (raw) over raw ``lines`` in a code block; the NEWEST lines are kept
    when they exceed a section (log tails)."""
    head = f"*{md.inline(title, 300)}*\n"
    return [section(head + md.code_block(lines, MAX_SECTION_CHARS - len(head)))]


def code_sections(text: str, *, max_blocks: int = 10) -> list[dict[str, Any]]:
    """Raw ``text`` (help, usage) as code-block sections of at most 3000 characters each,
    split at line boundaries and escaped, so nothing is dropped until ``max_blocks``
    sections are full (then the first lines are kept, with a marker)."""
    sections: list[dict[str, Any]] = []
    chunk: list[str] = []
    room = MAX_SECTION_CHARS - 2 * len(md.FENCE) - 2
    used = 0
    for line in md.strip_control(text).split("\n"):
        escaped = md.escape(line)
        cost = len(escaped) + (1 if chunk else 0)
        if chunk and used + cost > room:
            sections.append(section(md.code_block(chunk, keep="head")))
            chunk, used, cost = [], 0, len(escaped)
        chunk.append(line)
        used += cost
    if chunk or not sections:
        sections.append(section(md.code_block(chunk, keep="head")))
    if len(sections) > max_blocks:
        sections = sections[: max_blocks - 1] + [context("… (more not shown)")]
    return sections


def plan_blocks(
    job_id: str, plan_lines: Sequence[str], *, awaiting_approval: bool
) -> list[dict[str, Any]]:
    """The ephemeral answer to a launch: the plan (raw lines, escaped here) and what happens
    next."""
    jid = md.inline(job_id, 60)
    head = f"*{md.inline(plan_lines[0], 500)}*" if plan_lines else f"*{jid}*"
    blocks = [section(head + "\n" + "\n".join(md.escape(line) for line in plan_lines[1:]))]
    if awaiting_approval:
        blocks.append(context(f"{jid} is waiting for an admin's approval (see the thread)."))
    else:
        blocks.append(context(f"{jid} is queued; progress appears in the thread."))
    return blocks


def approval_blocks(
    job_id: str, requester: str, plan_lines: Sequence[str], reason: str, admins: Sequence[str]
) -> list[dict[str, Any]]:
    """The approval request posted in the job's thread, with Approve / Reject buttons.

    ``plan_lines`` and ``reason`` are raw text (escaped here); ids become mentions only when
    they are valid Slack user ids."""
    who = " ".join(md.mention(a) for a in admins[:20]) or "an admin"
    return [
        section(
            f":raised_hand: {md.mention(requester)}'s launch {md.inline(job_id, 60)} needs "
            f"approval ({md.inline(reason, 1000)}).\n"
            + "\n".join(md.escape(line) for line in plan_lines[1:])
        ),
        context(f"{who}: approve or reject. The requester can't approve their own launch."),
        {
            "type": "actions",
            "block_id": f"approval:{job_id}"[: md.ACTION_ID_MAX],
            "elements": [
                button(ACTION_APPROVE, "Approve", job_id, "primary"),
                button(ACTION_REJECT, "Reject", job_id, "danger", confirm=reject_confirm(job_id)),
            ],
        },
    ]


def decision_blocks(
    job_id: str, *, decision: str, user: str | None, at_utc: str, state: str = ""
) -> list[dict[str, Any]]:
    """What an approval request becomes once it was answered (no buttons left): ``decision``
    is ``approved`` or ``rejected`` by ``user`` at ``at_utc`` (raw, e.g. ``2025-01-02 10:00``);
    with ``user`` None the request had already been answered and the job is in ``state``."""
    jid = md.inline(job_id, 60)
    if user is None:
        text = f":information_source: {jid} no longer waits for approval ({md.inline(state, 40)})."
    elif decision == "approved":
        text = f":white_check_mark: {jid} approved by {md.mention(user)}; it is queued."
    else:
        text = f":no_entry: {jid} rejected by {md.mention(user)}; nothing was rented."
    return [section(text), context(f"Decided {md.inline(at_utc, 40)} UTC.")]


def price_decision_blocks(
    job_id: str, *, ceiling_usd: str, user: str | None, at_utc: str
) -> list[dict[str, Any]]:
    """What a "Pay up to $X/h" prompt becomes once clicked (no buttons left): ``user``
    raised the job's approved price to ``ceiling_usd`` (already formatted, e.g.
    ``$0.0792/h``) at ``at_utc``; with ``user`` None it could already pay that much."""
    jid = md.inline(job_id, 60)
    price = md.inline(ceiling_usd, 40)
    if user is None:
        text = f":information_source: {jid} may already pay up to {price}; nothing changed."
    else:
        text = (f":heavy_dollar_sign: {jid} may now pay up to {price}, raised by "
                f"{md.mention(user)}; it rents as soon as an offer at that price is free.")
    return [section(text), context(f"Decided {md.inline(at_utc, 40)} UTC.")]


def offers_table(offers: Sequence[Offer]) -> str:
    """A fixed-width table of offers (cheapest first) for a code block. Raw text: pass it to
    :func:`gpubot.render.mrkdwn.code_block` (which escapes) before it becomes mrkdwn."""
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
    """The offers table under a raw ``title``; a table over 3000 characters keeps its first
    (cheapest) rows and says how many more there are."""
    head = f"*{md.inline(title, 300)}*\n"
    table = md.code_block(offers_table(offers), MAX_SECTION_CHARS - len(head), keep="head")
    return [section(head + table)]


def cost_table(rows: Sequence[tuple[str, Decimal]], title: str) -> list[dict[str, Any]]:
    """Spend per group (raw labels) as a code-block table; the first rows are kept when it
    exceeds a section."""
    width = min(40, max([len(r[0]) for r in rows] + [5]))
    body = "\n".join(f"{label[:40]:<{width}}  {usd(amount):>10}" for label, amount in rows)
    head = f"*{md.inline(title, 300)}*\n"
    table = md.code_block(body or "nothing spent", MAX_SECTION_CHARS - len(head), keep="head")
    return [section(head + table)]


def jobs_blocks(views: Sequence[JobView], title: str) -> list[dict[str, Any]]:
    """A raw ``title`` and one section per job (at most :data:`MAX_JOB_CARDS`)."""
    head = f"*{md.inline(title, 300)}*"
    if not views:
        return [section(f"{head}\nNo jobs.")]
    blocks: list[dict[str, Any]] = [section(head)]
    for view in views[:MAX_JOB_CARDS]:
        blocks.append(section("\n".join(card_lines(view))))
    if len(views) > MAX_JOB_CARDS:
        blocks.append(context(f"… and {len(views) - MAX_JOB_CARDS} more."))
    return blocks


def group_root_text(summary: str, *, requester: str, plan: str | None) -> str:
    """The top-level message of a sweep or sharded run: its live summary (mrkdwn, head line
    first, from :func:`gpubot.render.groups.card_text`), who launched it (the group's one
    mention at launch; its runs mention nobody), then the plan (mrkdwn) while no run has
    started. Clamped to :data:`~gpubot.render.mrkdwn.TEXT_SOFT_MAX`, keeping the head."""
    head, _, rows = summary.partition("\n")
    lines = [head, f"launched by {md.mention(requester)}"]
    if plan:
        lines.append(plan)
    if rows:
        lines.append(rows)
    return md.clamp("\n".join(lines), md.TEXT_SOFT_MAX)
