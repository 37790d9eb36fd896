"""Plain data the renderers draw from, built by services from database rows, and the App
Home view drawn from it (:func:`home_view`). Pure.

The Home's builders import :mod:`gpubot.render.text` and :mod:`gpubot.render.blocks` inside
the functions: ``text`` imports :class:`JobView` from here at its top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class JobView:
    """Everything a job's status card shows (the job's top-level message, or its card in
    its group's thread)."""

    job_id: str
    template: str
    kind: str
    state: str
    requester: str
    params: dict[str, object] = field(default_factory=dict)
    phase_detail: str = ""
    reason: str = ""
    step: int | None = None
    total_steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    eta_seconds: float | None = None
    spent_usd: Decimal = Decimal(0)
    price_per_hour_usd: Decimal | None = None
    budget_usd: Decimal | None = None
    gpu_name: str = ""
    provider_id: str | None = None
    rental_type: str | None = None
    attempts: int = 0
    ssh_command: str | None = None
    results: list[dict[str, object]] = field(default_factory=list)
    updated_at: datetime | None = None
    """When the job last changed: the card's "as of" time (checkpoint ages count to it)."""
    plan_lines: list[str] = field(default_factory=list)
    """The launch plan (raw lines, first one the title): the card shows it until an instance
    is rented."""
    last_checkpoint_key: str | None = None
    last_checkpoint_at: datetime | None = None
    in_group: bool = False
    """A sweep or shard run: the card lives in the group's thread and mentions nobody."""


# -- App Home ---------------------------------------------------------------------------------

HOME_JOBS_MAX = 30
"""The Home shows at most this many live jobs (two blocks each), then "and N more": with the
other sections the view stays well within Slack's 100 blocks per view
(https://api.slack.com/reference/surfaces/views: "Maximum of 100 blocks")."""
HOME_ACTIVITY_MAX = 10
"""Recent activity entries shown on the Home."""
HOME_KEEP_HOURS = 2.0
"""What the Home's Keep alive button asks for (the same as the idle warning's button)."""


@dataclass(frozen=True, slots=True)
class HomeJob:
    """A live job as the App Home lists it: its card data and where its thread is.

    ``thread_ts`` is the ``ts`` of the thread's root (the job's card, or its group's card for a
    run of a sweep or sharded run); None while it is not posted yet."""

    view: JobView
    channel: str
    thread_ts: str | None = None


@dataclass(frozen=True, slots=True)
class ActivityEntry:
    """One audit event (raw values, as recorded by :func:`gpubot.notify.audit.record`)."""

    at: datetime
    actor: str
    action: str
    target: str
    reason: str = ""


def thread_link(channel: str, thread_ts: str | None) -> str | None:
    """A link that opens the thread rooted at ``thread_ts`` in ``channel``; None without ts.

    The bot builds it from what it stores (channel id and ts), with no API call:
    ``https://slack.com/app_redirect?channel=C…&message_ts=…``. Slack's deep-linking page
    (https://api.slack.com/reference/deep-linking, "Opening a channel by name or ID")
    documents ``app_redirect`` with ``channel`` (and ``team``), which opens the channel in
    the user's signed-in workspace; ``message_ts`` asks for the message. The permalink form
    ``https://<workspace>.slack.com/archives/<channel>/p<ts without dot>`` (what
    ``chat.getPermalink`` returns) would need the workspace's domain, which the bot only
    learns from an extra call (``auth.test`` / ``team.info`` / ``chat.getPermalink``) per
    publish or a cache of it.
    """
    if not thread_ts or not channel:
        return None
    from urllib.parse import urlencode

    return "https://slack.com/app_redirect?" + urlencode(
        {"channel": channel, "message_ts": thread_ts}
    )


_SENTENCES = {
    "launch": "launched {target}",
    "launch_group": "launched the group {target}",
    "command": "ran `/gpu {target_raw}`",
    "denied": "was refused {target}",
    "cancel": "cancelled {target}",
    "cancel_group": "cancelled the group {target}",
    "keep": "kept {target} alive",
    "approval.request": "asked an admin to approve {target}",
    "approve": "approved {target}",
    "reject": "rejected {target}",
    "budget.extend": "extended the budget of {target}",
    "budget.set": "set the budget of {target}",
    "budget_set": "set the budget of {target}",
    "budget_stop": "stopped {target} at its budget cap",
    "retry": "retried the failed files of {target}",
}
"""Audit actions as sentences (``{target}`` is the escaped target in code style)."""


def activity_sentence(entry: ActivityEntry) -> str:
    """One audit event as a mrkdwn sentence: ``` `01-02 10:00 UTC` <@U1> cancelled `j-1`
    (reason).``` Every value is escaped (:mod:`gpubot.render.mrkdwn`); an unknown action is
    shown as its name. A stored reason is shown as text (a mention in it is not live)."""
    from gpubot.render import mrkdwn as md

    target_raw = md.inline(entry.target, 80)
    target = f"`{target_raw}`" if target_raw else "something"
    template = _SENTENCES.get(entry.action)
    if template is None:
        what = f"{md.inline(entry.action, 40)} {target}"
    else:
        what = template.format(target=target, target_raw=target_raw or "?")
    when = f"`{entry.at:%m-%d %H:%M} UTC`"
    reason = f" ({md.inline(entry.reason, 160)})" if entry.reason else ""
    return f"{when} {md.mention(entry.actor)} {what}{reason}."


def _home_job_blocks(job: HomeJob) -> list[dict[str, Any]]:
    """A live job on the Home: a summary section with a link to its thread, then Cancel and
    Keep alive, each with a confirmation dialog (Block Kit confirm object:
    https://api.slack.com/reference/block-kit/composition-objects#confirm)."""
    from gpubot.render import blocks as bk
    from gpubot.render import mrkdwn as md
    from gpubot.render.text import PHASE_LABELS, STATE_EMOJI, eta_text, progress_bar, usd

    v = job.view
    phase = PHASE_LABELS.get(v.state, md.inline(v.state, 40))
    head = (
        f"{STATE_EMOJI.get(v.state, ':gear:')} *{md.inline(v.job_id, 40)}* "
        f"{md.inline(v.template, 60)}: {phase}"
    )
    if v.phase_detail:
        head += f" ({md.inline(v.phase_detail, 200)})"
    link = thread_link(job.channel, job.thread_ts)
    where = md.channel_ref(job.channel) if job.channel else ""
    head += " · " + (md.link(link, "open thread") if link else "thread not posted yet")
    if where:
        head += f" in {where}"
    lines = [head]
    if v.step is not None:
        bar = progress_bar(v.step, v.total_steps)
        of = f"/{v.total_steps}" if v.total_steps else ""
        eta = eta_text(v.eta_seconds)
        lines.append(f"step {v.step}{of} {bar}" + (f" ETA {eta}" if eta else ""))
    money = f"spent {usd(v.spent_usd)}"
    if v.price_per_hour_usd is not None:
        money += f" at {usd(v.price_per_hour_usd)}/h"
    if v.budget_usd is not None:
        money += f" of budget {usd(v.budget_usd)}"
    if v.gpu_name:
        money += f" · {md.inline(v.gpu_name, 60)}"
    lines.append(money)
    value = v.job_id[: md.BUTTON_VALUE_MAX - 4]
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": md.clamp("\n".join(lines))}},
        {
            "type": "actions",
            "block_id": f"home:{v.job_id}"[: md.ACTION_ID_MAX],
            "elements": [
                bk.button(bk.ACTION_CANCEL, "Cancel", value, "danger",
                          confirm=bk.cancel_confirm(v.job_id)),
                bk.button(bk.ACTION_KEEP, f"Keep alive {HOME_KEEP_HOURS:g} h",
                          f"{value}:{HOME_KEEP_HOURS:g}", confirm=bk.keep_confirm(
                              v.job_id, HOME_KEEP_HOURS)),
            ],
        },
    ]


def home_view(
    *,
    user: str,
    jobs: Sequence[HomeJob],
    total_jobs: int | None = None,
    spend_lines: Sequence[str],
    activity: Sequence[ActivityEntry],
) -> dict[str, Any]:
    """The App Home tab of ``user`` (a ``home`` view for ``views.publish``:
    https://api.slack.com/methods/views.publish).

    Sections: the user's live jobs (at most :data:`HOME_JOBS_MAX`, each with its thread link,
    Cancel and Keep alive; "and N more" when ``total_jobs`` or ``len(jobs)`` is larger), spend
    against budgets (``spend_lines``: mrkdwn, values escaped by the caller), and recent
    activity (:func:`activity_sentence`, at most :data:`HOME_ACTIVITY_MAX`). Always within
    Slack's 100 blocks per view and its text limits. Pure.
    """
    from gpubot.render import mrkdwn as md

    def section(text: str) -> dict[str, Any]:
        return {"type": "section", "text": {"type": "mrkdwn", "text": md.clamp(text)}}

    def context(text: str) -> dict[str, Any]:
        return {"type": "context", "elements": [{"type": "mrkdwn", "text": md.clamp(text)}]}

    total = max(total_jobs or 0, len(jobs))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "gpubot"}},
        section(f"Hi {md.mention(user)}. Type `/gpu help` in a channel to start."),
        {"type": "divider"},
        section(f"*Your live jobs* ({total})" if total else "*Your live jobs*"),
    ]
    if jobs:
        for job in jobs[:HOME_JOBS_MAX]:
            blocks += _home_job_blocks(job)
        if total > HOME_JOBS_MAX:
            blocks.append(context(f"… and {total - HOME_JOBS_MAX} more: `/gpu jobs` lists "
                                  "them all."))
    else:
        blocks.append(context("No live jobs."))
    blocks += [{"type": "divider"}, section("*Spend and budgets*"),
               section("\n".join(spend_lines) or "No spend recorded.")]
    blocks += [{"type": "divider"}, section("*Recent activity*")]
    sentences = [activity_sentence(e) for e in activity[:HOME_ACTIVITY_MAX]]
    blocks.append(section("\n".join(sentences)) if sentences else context("Nothing yet."))
    assert len(blocks) <= md.VIEW_BLOCKS_MAX
    return {"type": "home", "blocks": blocks}
