"""Texts of the replies posted in a job's thread: engine events and chat actions. Pure.

Every builder takes plain data and returns mrkdwn: raw values (job ids, GPU names, provider
ids, failure reasons with their log lines, file names, metric keys) are escaped here through
:mod:`gpubot.render.mrkdwn`; arguments documented as "mrkdwn" must already be escaped. The
database and outbox side lives in :mod:`gpubot.notify.events`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from gpubot.render import mrkdwn as md
from gpubot.render.text import usd

MAX_RESULT_LINKS = 20
"""A success reply lists at most this many result files (then "… and N more files")."""


def _file_name(key: str) -> str:
    """The last path segment of an object key (``a/b/ckpt-3/`` -> ``ckpt-3``)."""
    return key.rstrip("/").rsplit("/", 1)[-1]


# -- engine events -----------------------------------------------------------------------------


def interactive_ready(
    *, ssh_port: int | None, ssh_host: str | None, gpu_name: str, price_per_hour_usd: Decimal
) -> str:
    """An interactive box (``/gpu rent``) accepts SSH: the command to reach it."""
    return (
        f":computer: Your box is ready: "
        f"`{md.inline(f'ssh -p {ssh_port} root@{ssh_host}', 200)}` "
        f"({md.inline(gpu_name, 60)}, {usd(price_per_hour_usd)}/h). "
        "It is destroyed when idle; `/gpu keep &lt;job&gt; &lt;hours&gt;` keeps it."
    )


def interrupted(reason: str, *, has_checkpoint: bool) -> str:
    """The instance was lost for ``reason`` (raw); a replacement is being rented."""
    why = md.inline(reason, 500)
    if has_checkpoint:
        return (
            f":warning: Instance lost ({why}). Renting a replacement and resuming from the "
            "newest checkpoint."
        )
    return f":warning: Instance lost ({why}). Renting a replacement."


def restored(key: str) -> str:
    """The job resumed from the checkpoint at ``key``."""
    return f":arrows_counterclockwise: Resumed from checkpoint {md.inline(_file_name(key))}."


def destroy_escalation(*, job_id: str, provider_id: str | None) -> str:
    """A destroy that was not confirmed in time: the command to run by hand (for the job's
    thread and the ops channel alike)."""
    pid = md.inline(provider_id, 40)
    return (
        f":rotating_light: Could not confirm destruction of instance {pid} "
        f"(job {md.inline(job_id, 60)}). Destroy it by hand: `vastai destroy instance {pid}`."
    )


def orphan_destroyed(
    *, provider_id: str, label: str, price_per_hour_usd: Decimal, status: str, age: str
) -> str:
    """The ops channel's note of an orphan the sweep destroyed. The label and the status come
    from the provider's listing: escaped, never markup."""
    return (
        f"Orphan destroyed: instance {md.inline(provider_id, 40)} labelled "
        f"{md.inline(label, 200)} ({usd(price_per_hour_usd)}/h, {md.inline(status, 40)}) had "
        f"no live record for {md.inline(age, 40)}."
    )


def idle_warning(*, job_id: str, interactive: bool, grace_minutes: int) -> str:
    """The idle (interactive box) or stuck (job) warning, before the reaper acts."""
    what = "is idle" if interactive else "looks stuck (GPU idle, no progress)"
    return (
        f":hourglass: {job_id} {what}. It will be destroyed in {grace_minutes} min "
        f"unless kept: `/gpu keep {job_id} 2`."
    )


@dataclass(frozen=True)
class Outcome:
    """What the closing reply of a finished job shows (raw values)."""

    job_id: str
    state: str
    """``succeeded``, ``failed`` or ``cancelled``."""
    spent_usd: Decimal
    reason: str = ""
    files: Sequence[Mapping[str, object]] = ()
    """Result files: ``name``, ``url``, ``size_bytes``, ``sha256``."""
    metrics: Mapping[str, object] = field(default_factory=dict)
    requester: str | None = None
    """Mentioned at the start of the reply (the one notification of the outcome); None for a
    group's run (the group's end mentions the requester once)."""


@dataclass(frozen=True)
class FinishedText:
    """The closing reply, and the failure's full log when the reply had to drop lines."""

    text: str
    dropped_log: str | None = None
    """The raw log lines of the failure reason when the code block kept only the newest; the
    caller may post them as a file. None when nothing was dropped."""


def finished(outcome: Outcome) -> FinishedText:
    """The outcome, result links, final metrics and final cost of a finished job.

    A failure's log lines are quoted as a code block of at most one section (newest lines
    kept); the text always fits a section.
    """
    jid = md.inline(outcome.job_id, 60)
    who = f"{md.mention(outcome.requester)} " if outcome.requester else ""
    if outcome.state == "succeeded":
        lines = [
            f":white_check_mark: {who}{jid} succeeded. Final cost {usd(outcome.spent_usd)}."
        ]
        for item in outcome.files[:MAX_RESULT_LINKS]:
            url = item.get("url")
            lines.append(
                f"• {md.link(str(url) if url else None, item.get('name'))} "
                f"({md.inline(item.get('size_bytes'), 20)} B, "
                f"sha256 {md.inline(str(item.get('sha256', ''))[:12], 12)}…)"
            )
        if len(outcome.files) > MAX_RESULT_LINKS:
            lines.append(f"… and {len(outcome.files) - MAX_RESULT_LINKS} more files.")
        if outcome.metrics:
            lines.append(
                "Final metrics: "
                + ", ".join(
                    f"{md.inline(k, 80)}={_metric(v)}" for k, v in outcome.metrics.items()
                )
            )
        return FinishedText(md.clamp("\n".join(lines), md.SECTION_TEXT_MAX))
    verb = "was cancelled" if outcome.state == "cancelled" else "failed"
    reason = md.strip_control(outcome.reason or "no reason recorded").strip()
    first, _, log = reason.partition("\n")
    text = f":x: {who}{jid} {verb}: {md.inline(first.rstrip(':. '), 500)}. "
    text += f"Instance destroyed. Final cost {usd(outcome.spent_usd)}."
    dropped = None
    if log.strip():
        room = md.SECTION_TEXT_MAX - len(text) - 1
        text += "\n" + md.code_block(log.split("\n"), room)
        if len(md.code_block(log.split("\n"), 10**9)) > room:
            dropped = log
    return FinishedText(text, dropped)


def _metric(value: object) -> str:
    """A metric value as ``4g`` when numeric, else escaped text."""
    try:
        return f"{float(value):.4g}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return md.inline(value, 40)


# -- chat actions (replies in the job's thread) ------------------------------------------------


def cancelled_before_start(job_id: str, reason: str) -> str:
    """A job still awaiting approval was cancelled. ``reason`` is mrkdwn."""
    return f":no_entry: {job_id} {reason} before it started."


def cancelling(reason: str) -> str:
    """A cancel was requested on a started job. ``reason`` is mrkdwn."""
    return f":octagonal_sign: {reason}; checkpointing and destroying."


def kept_alive(*, user: str, job_id: str, until: datetime) -> str:
    """``user`` postponed the idle reaper until ``until``."""
    return f":hourglass: {md.mention(user)} keeps {job_id} alive until {keep_time(until)}."


def keep_time(until: datetime) -> str:
    """How a Keep alive deadline is written (``2025-01-31 14:05 UTC``)."""
    return until.strftime("%Y-%m-%d %H:%M UTC")


def approved(user: str) -> str:
    """An admin approved the launch."""
    return f":white_check_mark: Approved by {md.mention(user)}; renting now."


def rejected(job_id: str, reason: str) -> str:
    """An admin rejected the launch. ``reason`` is mrkdwn."""
    return f":no_entry: {job_id} was {reason}. Nothing was rented."


def budget_raised(*, user: str, new_usd: Decimal) -> str:
    """``user`` raised the job's budget cap to ``new_usd``."""
    return f":moneybag: {md.mention(user)} raised the budget to {usd(new_usd)}."


def per_hour(price_usd: Decimal | None) -> str:
    """A price per hour as the market quotes it, four decimals (``$0.0792/h``); a price below
    $0.0001 in full, never rounded to zero; ``no limit`` for None (a job without a ceiling)."""
    if price_usd is None:
        return "no limit"
    if Decimal(0) < price_usd < Decimal("0.0001"):
        return f"${price_usd.normalize():f}/h"
    return f"${price_usd:.4f}/h"


def ceiling_raised(*, user: str, old_usd: Decimal | None, new_usd: Decimal) -> str:
    """``user`` raised the most the job may pay per hour (its approved price) from
    ``old_usd`` (None: no limit) to ``new_usd``."""
    return (
        f":heavy_dollar_sign: {md.mention(user)} raised the approved price from "
        f"{per_hour(old_usd)} to {per_hour(new_usd)}."
    )


def approval_requested(job_id: str, reason: str) -> str:
    """Fallback text of the approval request posted in the thread (``reason`` raw)."""
    return f"{job_id} needs an admin's approval: {md.inline(reason, 1000)}"

