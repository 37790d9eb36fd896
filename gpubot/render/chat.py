"""Texts of the answers to chat commands and button clicks (the requester's replies). Pure.

Builders take plain data and return mrkdwn. Raw values (user input, job states, error
messages, file paths) are escaped here through :mod:`gpubot.render.mrkdwn`; job ids produced
by the bot are used as they are (``j-`` + hex, ``g-`` + hex) unless a user may have typed them,
in which case they go through :func:`gpubot.render.mrkdwn.inline`. Block Kit lives in
:mod:`gpubot.render.slack`, thread replies in :mod:`gpubot.render.events`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from gpubot.render import mrkdwn as md
from gpubot.render.events import per_hour
from gpubot.render.text import usd

# -- the dispatcher: usage errors, refusals, redeliveries -------------------------------------


def usage_error(message: str, usage: str | None) -> str:
    """A command that did not parse (raw ``message``), with the verb's usage when known."""
    body = md.escape(message)
    if usage:
        body += "\n\n" + md.escape(usage)
    return body


def no_offer(detail: str) -> str:
    """No offer on the market fits the command (``detail`` raw, already redacted)."""
    return f"No offer fits: {md.escape(detail)}"


MARKET_UNAVAILABLE = "The GPU market is not answering right now; try again in a minute."


def refused(message: str) -> str:
    """A command refused for a user-facing reason (``message`` raw, already redacted)."""
    return md.escape(message)


def failed(message: str) -> str:
    """A command that failed on our side (``message`` raw, already redacted)."""
    return f"That failed: {md.escape(message)}"


def unknown_action(action_id: str) -> str:
    """A button click with an action id the bot does not know."""
    return f"Unknown action {md.inline(repr(action_id[:40]))}."


def already_handled(job_id: str | None) -> str:
    """A redelivered request whose first answer was not stored."""
    return f"Already handled: {job_id}." if job_id else "Already handled."


def no_job(job_id: str) -> str:
    """The job (or group) id the user typed does not exist."""
    return f"There is no job {md.inline(repr(job_id[:20]))}. `/gpu jobs` lists yours."


# -- launches and groups -----------------------------------------------------------------------


def launch_text(job_id: str, plan_lines: Sequence[str], approval_reason: str) -> str:
    """The requester's answer to a launch: the plan (raw lines) and what happens next."""
    if approval_reason:
        after = f"{job_id} waits for an admin's approval ({md.inline(approval_reason, 1000)})."
    else:
        after = f"{job_id} is queued; follow it in the thread."
    return "\n".join(md.escape(line) for line in plan_lines) + "\n" + after


def group_cancel_refused(group_id: str, requester: str) -> str:
    """Someone other than the group's requester (or an admin) tried to cancel it."""
    return f"Only {md.mention(requester)} or an admin can cancel {group_id}."


def group_cancelling(group_id: str, count: int) -> str:
    """A group cancel was accepted for ``count`` child runs."""
    return f"{group_id}: cancelling {count} run(s)."


# -- read-only verbs ---------------------------------------------------------------------------


def offers_title(count: int, *, interruptible: bool) -> str:
    """Raw title of the ``/gpu offers`` table."""
    return f"{count} cheapest matching offers" + (" (bid prices)" if interruptible else "")


def offers_text(title: str, table: str) -> str:
    """The offers table (raw) under its title, first (cheapest) rows kept."""
    return f"{title}\n{md.code_block(table, md.TEXT_SOFT_MAX, keep='head')}"


def status_text(card_lines: Sequence[str], *, chart_in_thread: bool = False) -> str:
    """A job's card (mrkdwn lines) and, when its loss chart was drawn, where to find it: the
    job's thread (never a file path)."""
    text = "\n".join(card_lines)
    if chart_in_thread:
        text += "\n:chart_with_downwards_trend: Loss chart: posted in the job's thread."
    return text


def status_chart_title(job_id: str, points: int) -> str:
    """Title (raw) of the loss chart ``/gpu status`` posts in the job's thread."""
    return f"{job_id} loss curve ({points} points)"


def jobs_title(*, include_finished: bool) -> str:
    """Raw title of ``/gpu jobs`` (all) or ``/gpu status`` (live only)."""
    return "Your jobs" if include_finished else "Your live jobs"


def jobs_text(title: str, headlines: Sequence[str]) -> str:
    """The job list: one card headline (mrkdwn) per job."""
    if not headlines:
        return f"{title}: none."
    return title + ":\n" + "\n".join(headlines)


MAX_LOG_CHARS = 3500
"""A ``/gpu logs`` answer quotes at most this many characters (newest lines kept)."""


def no_log_instance(job_id: str, state: str) -> str:
    """``/gpu logs`` on a job that has no instance to read from."""
    return f"{job_id} has no running instance to read a log from ({state})."


def log_unreadable(job_id: str, message: str) -> str:
    """The log could not be read over SSH (``message`` already redacted)."""
    return f"Could not read the log of {job_id}: {message}"


def log_title(job_id: str, lines: int) -> str:
    """Raw title of a ``/gpu logs`` answer."""
    return f"Last {lines} lines of {job_id}:"


def log_text(title: str, tail_lines: Sequence[str]) -> str:
    """The log tail (raw lines, already redacted) under its raw title."""
    return f"{md.escape(title)}\n{md.code_block(tail_lines, MAX_LOG_CHARS)}"


@dataclass(frozen=True, slots=True)
class AuditLine:
    """One audit event as ``/gpu audit`` lists it (raw values)."""

    at: datetime
    actor: str
    action: str
    target: str
    reason: str


def audit_text(events: Sequence[AuditLine]) -> str:
    """``/gpu audit``: the newest events, one line each (the caller redacts the result)."""
    lines = [
        f"{e.at:%Y-%m-%d %H:%M} {md.mention(e.actor)} {md.inline(e.action, 60)} "
        f"{md.inline(e.target, 120)}"
        + (f" ({md.inline(e.reason, 300)})" if e.reason else "")
        for e in events
    ]
    return "Recent audit events:\n" + ("\n".join(lines) if lines else "none")


# -- changes to a job --------------------------------------------------------------------------


def cancel_reason(user: str, *, destroy: bool = False) -> str:
    """The job's recorded reason (mrkdwn) for a cancel or a Destroy-now click by ``user``."""
    if destroy:
        return f"destroyed on request of {md.mention(user)}"
    return f"cancelled by {md.mention(user)}"


def already_finished(job_id: str, state: str) -> str:
    """A cancel on a job that already ended."""
    return f"{job_id} already {state}; nothing to cancel."


def cancelled(job_id: str) -> str:
    """A job still awaiting approval was cancelled outright."""
    return f"{job_id} cancelled."


def already_cancelling(job_id: str) -> str:
    """A cancel on a job whose cancel is already under way."""
    return f"{job_id} is already being cancelled."


def cancelling(job_id: str) -> str:
    """A cancel was requested on a started job."""
    return f"{job_id}: cancelling; the instance will be destroyed."


def nothing_to_keep(job_id: str, state: str) -> str:
    """Keep alive on a job that already ended."""
    return f"{job_id} already {state}; there is nothing to keep."


def kept(job_id: str, until_text: str) -> str:
    """Keep alive accepted until ``until_text`` (see :func:`gpubot.render.events.keep_time`)."""
    return f"{job_id} is kept alive until {until_text}."


def nothing_to(verb: str, job_id: str, state: str) -> str:
    """Approve/reject on a job that no longer awaits approval (``verb``: approve, reject)."""
    return f"{job_id} is {state}; nothing to {verb}."


def approved(job_id: str) -> str:
    return f"{job_id} approved."


def rejected(job_id: str) -> str:
    return f"{job_id} rejected."


def rejection_reason(user: str) -> str:
    """The job's recorded reason (mrkdwn) when ``user`` rejected it."""
    return f"rejected by {md.mention(user)}"


def not_an_amount(job_id: str) -> str:
    """An Extend budget value that is not a usable USD amount."""
    return f"{job_id}: not an amount in USD."


def no_budget_cap(job_id: str) -> str:
    """Extend budget (doubling by default) on a job without a cap."""
    return f"{job_id} has no budget cap to extend."


def budget_extended(job_id: str, old_usd: Decimal | None, new_usd: Decimal) -> str:
    """The job's budget cap was raised."""
    return f"{job_id}: budget raised from {usd(old_usd)} to {usd(new_usd)}."


def not_a_price(job_id: str) -> str:
    """A Raise the price value that is not a usable price per hour."""
    return f"{job_id}: not a usable price per hour in USD."


def price_needs_approver(job_id: str, price_usd: Decimal, limit_usd: Decimal) -> str:
    """Raise the price above the approval threshold by someone who may not approve it."""
    return (
        f"{per_hour(price_usd)} is above the {per_hour(limit_usd)} that needs an admin's "
        f"approval: only an admin other than the requester can let {job_id} pay it."
    )


def price_of_finished(job_id: str, state: str) -> str:
    """Raise the price on a job that already ended, or awaits approval."""
    if state == "awaiting_approval":
        return (f"{job_id} is waiting for an admin's approval of its launch; its price can "
                "be raised once it is approved.")
    return f"{job_id} already {md.inline(state, 24)}; there is no price to raise."


def ceiling_already(job_id: str, ceiling_usd: Decimal | None) -> str:
    """Raise the price to no more than the job may already pay: nothing changed."""
    return f"{job_id} may already pay up to {per_hour(ceiling_usd)}; nothing changed."


def ceiling_raised(job_id: str, old_usd: Decimal | None, new_usd: Decimal) -> str:
    """The job's price ceiling (its approved price) was raised."""
    return f"{job_id}: approved price raised from {per_hour(old_usd)} to {per_hour(new_usd)}."
