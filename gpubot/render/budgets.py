"""Every Slack-facing text and block about money: budget alerts, stop notices, the launch gate's
reasons, ``/gpu budget show|set`` replies, billing escalations and the ``/gpu cost`` table.

Pure: builds mrkdwn from plain data (the dataclasses below, ids, ``Decimal`` USD); no database,
no provider, no vendor library. Governance computes the numbers and hands them here. Values that
come from users or jobs (job ids, provider ids, labels, group keys) go through
:mod:`gpubot.render.mrkdwn`; Slack ids become mentions only when they are valid ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from gpubot import costs
from gpubot.governance.periods import period_adjective
from gpubot.render import mrkdwn as md
from gpubot.render.blocks import ACTION_CANCEL, ACTION_EXTEND_BUDGET, button, cancel_confirm

# -- data handed in by governance -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobUsage:
    """A live job's spend over its whole life against its own cap (None: no cap)."""

    job_id: str
    spent_usd: Decimal
    budget_usd: Decimal | None


@dataclass(frozen=True, slots=True)
class ScopeUsage:
    """A user's, channel's or the team's spend in the current ``period`` against one limit
    (``limit_usd`` None: nothing limits the scope; the period is then ``month``)."""

    scope: str
    scope_id: str
    period: str
    spent_usd: Decimal
    limit_usd: Decimal | None


@dataclass(frozen=True, slots=True)
class BudgetOverview:
    """What ``/gpu budget show`` reports for a user in a channel."""

    jobs: tuple[JobUsage, ...]
    scopes: tuple[ScopeUsage, ...]
    """The user's, then the channel's, then the team's usages, shortest period first."""
    over_budget_needs_approval: bool
    """``[budgets] on_exceed = "approval"`` (else launches over a budget are refused)."""


@dataclass(frozen=True, slots=True)
class BudgetChange:
    """The outcome of ``/gpu budget set``."""

    scope: str
    scope_id: str
    period: str
    amount_usd: Decimal
    previous_usd: Decimal | None
    """The limit before the change (None: there was none)."""
    previous_is_default: bool
    """``previous_usd`` came from gpubot.toml's ``[budgets]``, not from a stored budget."""
    spent_usd: Decimal
    """A job's spend so far, else the scope's spend in the current period."""


@dataclass(frozen=True, slots=True)
class CostReport:
    """``/gpu cost``: ledger totals for the current period, grouped."""

    period: str
    since: datetime
    group_by: str
    groups: tuple[tuple[str, Decimal], ...]
    """``(group key, total)``, largest first; the key ``-`` means "no value"."""
    total_usd: Decimal
    chart_path: str | None
    """A PNG bar chart of ``groups``; None when nothing was spent."""


# -- names ------------------------------------------------------------------------------------


def scope_display(scope: str, scope_id: str) -> str:
    """How a scope is named in chat: ``user <@U1>``, ``channel <#C1>``, ``the team``."""
    match scope:
        case "user":
            return f"user {md.mention(scope_id)}"
        case "channel":
            return f"channel {md.channel_ref(scope_id)}"
        case "team":
            return "the team"
        case _:
            return f"job {md.inline(scope_id, 60)}"


def _job(job_id: str) -> str:
    return md.inline(job_id, 60)


# -- launch gate ------------------------------------------------------------------------------


def launch_excess_reason(
    scope: str,
    scope_id: str,
    period: str,
    limit_usd: Decimal,
    spent_usd: Decimal,
    estimate_usd: Decimal,
) -> str:
    """Why a launch does not fit one budget (the launch gate joins several with ``; ``)."""
    return (
        f"the {period_adjective(period)} budget of {costs.format_usd(limit_usd)} for "
        f"{scope_display(scope, scope_id)} would be exceeded ({costs.format_usd(spent_usd)} "
        f"spent + {costs.format_usd(estimate_usd)} estimated = "
        f"{costs.format_usd(spent_usd + estimate_usd)})"
    )


# -- alerts and stops -------------------------------------------------------------------------


def forecast_line(spent_usd: Decimal, limit_usd: Decimal, burn_per_hour_usd: Decimal) -> str:
    """One sentence: when the budget runs out at the current burn rate.

    ``At the current $0.40/h the budget runs out in 3 h 10 m.``; nothing billing →
    ``Nothing is billing right now.``; already reached → ``The budget is used up.``
    """
    runout = costs.forecast_runout(spent_usd, limit_usd, burn_per_hour_usd)
    if runout is None:
        return "Nothing is billing right now."
    if runout == timedelta(0):
        return "The budget is used up."
    return (
        f"At the current {costs.format_usd(burn_per_hour_usd)}/h the budget runs out in "
        f"{costs.format_duration(runout)}."
    )


def job_stop_reason(limit_usd: Decimal, spent_usd: Decimal) -> str:
    """The stop reason stored on a job that reached its own cap."""
    return f"budget of {costs.format_usd(limit_usd)} reached (spent {costs.format_usd(spent_usd)})"


def scope_stop_reason(
    scope: str, scope_id: str, period: str, limit_usd: Decimal, spent_usd: Decimal
) -> str:
    """The stop reason stored on the live jobs of a scope that reached its budget."""
    return (
        f"{period_adjective(period)} budget of {costs.format_usd(limit_usd)} for "
        f"{scope_display(scope, scope_id)} reached (spent {costs.format_usd(spent_usd)})"
    )


def job_alert_text(
    job_id: str, pct: int, spent_usd: Decimal, limit_usd: Decimal, burn_per_hour_usd: Decimal
) -> str:
    """The 50/80 % warning posted in a job's thread."""
    return (
        f":warning: Budget alert: {_job(job_id)} has used {pct}% of its "
        f"{costs.format_usd(limit_usd)} budget ({costs.format_usd(spent_usd)} spent). "
        + forecast_line(spent_usd, limit_usd, burn_per_hour_usd)
    )


def job_alert_blocks(job_id: str, text: str) -> list[dict[str, Any]]:
    """``text`` (a :func:`job_alert_text`) with Raise budget / Stop now buttons."""
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "block_id": f"budget:{job_id}"[:255],
            "elements": [
                button(ACTION_EXTEND_BUDGET, "Raise budget", job_id, "primary"),
                button(ACTION_CANCEL, "Stop now", job_id, "danger",
                       confirm=cancel_confirm(job_id)),
            ],
        },
    ]


def job_stop_text(job_id: str, reason: str) -> str:
    """The 100 % message posted in a job's thread (``reason`` is a stop reason built here)."""
    return (
        f":octagonal_sign: Budget 100%: stopping {_job(job_id)}: {reason}. "
        "Saving a checkpoint where supported, "
        "then destroying the instance."
    )


def scope_alert_text(
    scope: str,
    scope_id: str,
    pct: int,
    period: str,
    limit_usd: Decimal,
    spent_usd: Decimal,
    burn_per_hour_usd: Decimal,
) -> str:
    """The 50/80 % warning for a user's, channel's or the team's budget."""
    return (
        f":warning: Budget alert: {scope_display(scope, scope_id)} has used {pct}% of the "
        f"{period_adjective(period)} budget of {costs.format_usd(limit_usd)} "
        f"({costs.format_usd(spent_usd)} spent). "
        + forecast_line(spent_usd, limit_usd, burn_per_hour_usd)
    )


def scope_stop_text(reason: str, stopped_job_ids: Sequence[str]) -> str:
    """The 100 % message for a scope: which live jobs are being stopped (maybe none)."""
    text = f":octagonal_sign: Budget reached: {reason}."
    if stopped_job_ids:
        return text + (
            f" Stopping {len(stopped_job_ids)} live job(s) (checkpoint where supported, then "
            f"destroy): {', '.join(_job(j) for j in stopped_job_ids)}."
        )
    return text + " New launches will be refused or need approval."


# -- /gpu budget show | set -------------------------------------------------------------------


def usage_line(label: str, spent_usd: Decimal, limit_usd: Decimal | None, period: str) -> str:
    """``• label: $5.00 of $100.00 monthly (5.0%)``; without a limit ``…this month, no limit``.
    ``label`` is mrkdwn already."""
    if limit_usd is None:
        return f"• {label}: {costs.format_usd(spent_usd)} this {period}, no limit"
    pct = costs.budget_verdict(spent_usd, limit_usd).used_pct
    return (
        f"• {label}: {costs.format_usd(spent_usd)} of {costs.format_usd(limit_usd)} "
        f"{period_adjective(period)} ({pct}%)"
    )


def _overview_label(scope: str, scope_id: str) -> str:
    match scope:
        case "user":
            return f"you ({md.mention(scope_id)})"
        case "channel":
            return f"this channel ({md.channel_ref(scope_id)})"
        case _:
            return "the team"


def job_usage_line(job: JobUsage) -> str:
    """``• job j-1: $5.00 of $20.00 (25.0%)``; without a cap ``…so far, no cap``."""
    if job.budget_usd is None:
        return f"• job {_job(job.job_id)}: {costs.format_usd(job.spent_usd)} so far, no cap"
    pct = costs.budget_verdict(job.spent_usd, job.budget_usd).used_pct
    return (
        f"• job {_job(job.job_id)}: {costs.format_usd(job.spent_usd)} of "
        f"{costs.format_usd(job.budget_usd)} ({pct}%)"
    )


def overview_text(overview: BudgetOverview) -> str:
    """The ``/gpu budget show`` reply: live jobs' caps, then the user's, the channel's and the
    team's budgets with spend in each period, then what happens over a budget."""
    lines = ["*Budgets*"]
    lines += [job_usage_line(job) for job in overview.jobs]
    lines += [
        usage_line(_overview_label(u.scope, u.scope_id), u.spent_usd, u.limit_usd, u.period)
        for u in overview.scopes
    ]
    action = "need an admin's approval" if overview.over_budget_needs_approval else "are refused"
    lines.append(f"Launches that would exceed a budget {action}; at 100% live jobs are stopped.")
    return "\n".join(lines)


def home_spend_lines(usages: Sequence[ScopeUsage]) -> list[str]:
    """App Home's "Spend and budgets" lines: one :func:`usage_line` per usage, labelled
    ``You`` / ``This channel`` / ``Team`` (the figures are those of ``/gpu budget show``)."""
    labels = {"user": "You", "channel": "This channel", "team": "Team"}
    return [
        usage_line(labels.get(u.scope, u.scope), u.spent_usd, u.limit_usd, u.period)
        for u in usages
    ]


def budget_set_text(change: BudgetChange) -> str:
    """The ``/gpu budget set`` reply: the new limit, the previous one and the spend so far."""
    amount = costs.format_usd(change.amount_usd)
    if change.scope == "job":
        was = (
            costs.format_usd(change.previous_usd) if change.previous_usd is not None else "no cap"
        )
        return (
            f"Budget of job {_job(change.scope_id)} set to {amount} (was {was}); "
            f"spent so far {costs.format_usd(change.spent_usd)}."
        )
    was = "no limit"
    if change.previous_usd is not None:
        was = str(change.previous_usd) + (" (default)" if change.previous_is_default else "")
    return (
        f"{period_adjective(change.period).capitalize()} budget for "
        f"{scope_display(change.scope, change.scope_id)} set to {amount} (was {was}); "
        f"spent this {change.period}: {costs.format_usd(change.spent_usd)}."
    )


def job_budget_set_note(actor: str, amount_usd: Decimal) -> str:
    """Posted in a job's thread when someone sets its cap."""
    return f"{md.mention(actor)} set the budget to {costs.format_usd(amount_usd)}."


# -- billing checks ---------------------------------------------------------------------------


def unrecorded_charge_text(provider_id: str, label: str, amount_usd: Decimal) -> str:
    """Ops escalation: the provider charged an instance of ours we have no record of."""
    return (
        f"Billing: instance {md.inline(provider_id, 40)} (label {md.inline(label, 100)}) was "
        f"charged {costs.format_usd(amount_usd)} but has no record in our ledger."
    )


def charge_difference_text(
    provider_id: str, job_ids: Sequence[str], charged_usd: Decimal, ledger_usd: Decimal
) -> str:
    """Ops escalation: the provider's charges and our ledger differ for one instance."""
    jobs = ", ".join(_job(j) for j in job_ids)
    difference = costs.format_usd(charged_usd - ledger_usd)
    return (
        f"Billing difference on instance {md.inline(provider_id, 40)} (job {jobs}): the "
        f"provider charged {costs.format_usd(charged_usd)}, our ledger has "
        f"{costs.format_usd(ledger_usd)} (difference {difference})."
    )


# -- /gpu cost --------------------------------------------------------------------------------


def _group_label(group_by: str, key: str) -> str:
    if key == "-":
        return "(none)"
    if group_by == "user":
        return f"<@{md.escape(key)}>"
    if group_by == "channel":
        return f"<#{md.escape(key)}>"
    return md.escape(key)


def cost_table(
    title: str, group_by: str, groups: Sequence[tuple[str, Decimal]], total_usd: Decimal
) -> str:
    """A monospace table (Slack code block): one line per group, then the total."""
    header = group_by
    names = [_group_label(group_by, k) for k, _ in groups]
    amounts = [costs.format_usd(v) for _, v in groups]
    total_s = costs.format_usd(total_usd)
    empty = "(no spend)"
    w1 = max([len(header), len("total"), len(empty) if not groups else 0, *map(len, names)])
    w2 = max([len("cost"), len(total_s), *map(len, amounts)])
    lines = [title, "```", f"{header:<{w1}}  {'cost':>{w2}}", "-" * (w1 + w2 + 2)]
    if not groups:
        lines.append(empty)
    lines += [f"{n:<{w1}}  {a:>{w2}}" for n, a in zip(names, amounts, strict=True)]
    lines += ["-" * (w1 + w2 + 2), f"{'total':<{w1}}  {total_s:>{w2}}", "```"]
    return "\n".join(lines)


def cost_report_text(report: CostReport) -> str:
    """The ``/gpu cost`` reply: a title with the period's start, then :func:`cost_table`."""
    title = f"*Cost this {report.period}* (since {report.since:%Y-%m-%d %H:%M} UTC)"
    return cost_table(title, report.group_by, report.groups, report.total_usd)
