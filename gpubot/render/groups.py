"""Every text a job group shows in Slack or the console, built from plain data. Pure.

The group code (:mod:`gpubot.groups`) reads rows and hands this module dataclasses
(:class:`GroupPlanView`, :class:`GroupCard`, :class:`GroupFinal`) or plain values; nothing
here touches the database. Every value that comes from a user or a job (labels, metric names,
result locations, failed file names, user ids) goes through :mod:`gpubot.render.mrkdwn`
before it becomes mrkdwn; labels and reasons returned *unescaped* (they are stored, then
escaped where they are shown) say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from gpubot.render import mrkdwn as md
from gpubot.render.text import STATE_EMOJI, usd
from gpubot.templates import ParamValue, format_param

PLAN_LABELS_MAX = 50
"""The plan lists at most this many runs, then says how many more there are."""
FAILED_FILES_SHOWN = 20
"""The summary card names at most this many failed files."""


def kind_title(kind: str) -> str:
    """``Sweep`` for a sweep, ``Sharded run`` for anything else."""
    return "Sweep" if kind == "sweep" else "Sharded run"


def fmt_metric(value: float | None) -> str:
    """A metric value in four significant digits, ``—`` when there is none."""
    return "—" if value is None else f"{value:.4g}"


# -- labels and reasons (stored unescaped, escaped where shown) --------------------------------


def sweep_label(params: Mapping[str, ParamValue], axes: Sequence[str]) -> str:
    """``k=v k2=v2`` for the swept ``axes`` present in ``params``; ``defaults`` when none is.
    Unescaped."""
    return " ".join(f"{k}={format_param(params[k])}" for k in axes if k in params) or "defaults"


def shard_label(number: int, count: int, files: int, size_bytes: int) -> str:
    """``shard 2/4: 10 files, 1234 B`` (``number`` is 1-based). Unescaped."""
    return f"shard {number}/{count}: {files} files, {size_bytes} B"


def retry_label(attempt: int, files: int) -> str:
    """``retry 1: 3 failed files``. Unescaped."""
    return f"retry {attempt}: {files} failed files"


def held_detail(limit: int, group_id: str) -> str:
    """The phase detail of a held child (shown on its card)."""
    return f"waiting: at most {limit} runs of {group_id} at once"


def cancel_reason(group_id: str, actor: str) -> str:
    """The reason stored on every child of a cancelled group (mrkdwn: the actor's mention)."""
    return f"group {group_id} cancelled by {md.mention(actor)}"


def budget_stop_reason(group_id: str, limit_usd: Decimal, spent_usd: Decimal) -> str:
    """The stop reason stored on every child when the group budget is reached."""
    return f"group budget of {usd(limit_usd)} for {group_id} reached (spent {usd(spent_usd)})"


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupPlanView:
    """What a group launch intends: one offer for every run, the estimate of each and of all.

    ``labels`` are unescaped (one per run, in launch order); ``target_metric`` and
    ``template`` come from the operator's configuration.
    """

    kind: str
    template: str
    labels: list[str]
    max_concurrent: int
    num_gpus: int
    gpu_name: str
    price_per_hour_usd: Decimal
    rental_type: str
    expected_hours: float
    run_estimate_usd: Decimal
    total_estimate_usd: Decimal
    budget_usd: Decimal | None = None
    target_metric: str | None = None
    target_mode: str = "min"
    approval_reason: str | None = None


def plan_lines(view: GroupPlanView) -> list[str]:
    """The plan of a group launch, one mrkdwn line each (the first PLAN_LABELS_MAX runs)."""
    runs = len(view.labels)
    lines = [
        f"{kind_title(view.kind)} of {view.template}: {runs} runs, "
        f"at most {view.max_concurrent} at once.",
        f"• each on {view.num_gpus}x {view.gpu_name} at {usd(view.price_per_hour_usd)}/h "
        f"({view.rental_type}); about {view.expected_hours:g} h "
        f"≈ {usd(view.run_estimate_usd)} per run",
        f"• total estimate: {runs} × {usd(view.run_estimate_usd)} = "
        f"{usd(view.total_estimate_usd)}",
    ]
    if view.budget_usd is not None:
        lines.append(f"• group budget: {usd(view.budget_usd)} (all runs stop when it is reached)")
    if view.kind == "sweep" and view.target_metric:
        lines.append(f"• ranked by {view.target_metric} ({view.target_mode})")
    lines += [
        f"  {i + 1}. {md.inline(label, 200)}"
        for i, label in enumerate(view.labels[:PLAN_LABELS_MAX])
    ]
    if runs > PLAN_LABELS_MAX:
        lines.append(f"  … and {runs - PLAN_LABELS_MAX} more")
    if view.approval_reason:
        lines.append(f"• needs an admin's approval: {md.inline(view.approval_reason, 1000)}")
    return lines


# -- the summary card and the final reply -----------------------------------------------------


@dataclass(frozen=True)
class ChildRow:
    """One run of a group as shown: ``label`` unescaped, ``metric`` the target metric's
    latest value (None when unknown), ``spent_usd`` what the ledger holds for it."""

    job_id: str
    label: str
    state: str
    spent_usd: Decimal = Decimal(0)
    metric: float | None = None


@dataclass(frozen=True)
class ShardResults:
    """Where the merged results of a sharded group are and how many input files came out ok
    (``failed``: the names of the others, unescaped)."""

    location: str | None
    ok: int | None
    total: int | None
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GroupCard:
    """The live summary card on the group's parent message.

    ``rows`` are in display order (launch order; best first once a sweep has finished);
    ``best_job_id`` gets the trophy; ``metric_name`` adds a metric column when set.
    """

    group_id: str
    kind: str
    template: str
    state: str
    rows: list[ChildRow]
    budget_usd: Decimal | None = None
    metric_name: str | None = None
    best_job_id: str | None = None
    results: ShardResults | None = None


def card_text(card: GroupCard) -> str:
    """The summary card: one head line (state, $ spent of the budget, a tally of the runs'
    states), one line per run, then the merged results when there are any. Clamped to
    :data:`~gpubot.render.mrkdwn.TEXT_SOFT_MAX`."""
    spent = sum((r.spent_usd for r in card.rows), Decimal(0))
    cap = f" of {usd(card.budget_usd)}" if card.budget_usd is not None else ""
    counts: dict[str, int] = {}
    for row in card.rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [
        f"{kind_title(card.kind)} {card.group_id} · {card.template} · {card.state} · "
        f"{usd(spent)}{cap} · {tally}"
    ]
    for row in card.rows:
        mark = " :trophy: best" if row.job_id == card.best_job_id else ""
        metric_text = (
            f" · {md.inline(card.metric_name, 40)}={fmt_metric(row.metric)}"
            if card.metric_name
            else ""
        )
        lines.append(
            f"• {row.job_id} {md.inline(row.label, 200)} · {row.state} · {usd(row.spent_usd)}"
            f"{metric_text}{mark}"
        )
    if card.results is not None:
        result = card.results
        lines.append(
            f"Results: {md.inline(result.location, 300)} "
            f"({result.ok}/{result.total} files ok)"
        )
        if result.failed:
            lines.append(
                f"Failed files ({len(result.failed)}): "
                + ", ".join(md.inline(f, 200) for f in result.failed[:FAILED_FILES_SHOWN])
            )
    return md.clamp("\n".join(lines), md.TEXT_SOFT_MAX)


@dataclass(frozen=True)
class GroupFinal:
    """A finished group: its final state, every child's ``(job_id, state)``, and either the
    sweep's ranking (best first, labels unescaped) or the sharded run's merged results."""

    group_id: str
    kind: str
    state: str
    children: list[tuple[str, str]]
    ranking: list[ChildRow] = field(default_factory=list)
    metric_name: str | None = None
    target_mode: str = "min"
    best_job_id: str | None = None
    results: ShardResults | None = None
    requester: str | None = None
    """Who launched the group: the final reply mentions them (None: nobody)."""


def final_text(final: GroupFinal) -> str:
    """The reply posted once when a group ends: the outcome, mentioning the requester (like a
    single job's final result: :func:`gpubot.render.events.finished`), then the sweep's
    ranking or the merged results. The head line is kept when the text is clamped to
    :data:`~gpubot.render.mrkdwn.TEXT_SOFT_MAX`."""
    head = STATE_EMOJI.get(final.state, "")
    who = f"{md.mention(final.requester)} " if final.requester else ""
    lines = [
        f"{head} {who}{final.group_id} {final.state}: "
        + ", ".join(f"{job_id} {state}" for job_id, state in final.children)
    ]
    if final.kind == "sweep":
        metric = final.metric_name
        if metric:
            lines.append(f"Results by {md.inline(metric, 40)} ({final.target_mode}):")
        for row in final.ranking:
            mark = " :trophy: best" if row.job_id == final.best_job_id else ""
            lines.append(
                f"• {row.job_id} {md.inline(row.label, 200)} · {row.state} · "
                f"{md.inline(metric or 'metric', 40)}={fmt_metric(row.metric)}{mark}"
            )
    else:
        result = final.results or ShardResults(location=None, ok=None, total=None)
        lines.append(
            f"Merged results: {md.inline(result.location, 300)} "
            f"({result.ok}/{result.total} files ok; manifest.jsonl)"
        )
        if result.failed:
            lines.append(
                f"{len(result.failed)} files failed; `retry` {final.group_id} runs "
                "them again in one new shard."
            )
    return md.clamp("\n".join(lines), md.TEXT_SOFT_MAX)


# -- replies in the group's thread ------------------------------------------------------------


def budget_alert_text(group_id: str, pct: int, limit_usd: Decimal, spent_usd: Decimal) -> str:
    """The 50/80 % alert of a group budget."""
    return (
        f":warning: Budget alert: {group_id} has used {pct}% of its "
        f"{usd(limit_usd)} group budget ({usd(spent_usd)} spent)."
    )


def budget_stop_text(group_id: str, reason: str) -> str:
    """The reply when the group budget stops every run."""
    return (
        f":octagonal_sign: Stopping every run of {group_id}: {reason}. Saving "
        "checkpoints where supported, then destroying the instances."
    )


def cancelled_text(reason: str, count: int) -> str:
    """The reply to ``/gpu cancel g-…`` (``reason`` from :func:`cancel_reason`)."""
    return f":octagonal_sign: {reason}; stopping {count} runs."


def approved_text(actor: str) -> str:
    """The reply when an admin approves a group."""
    return f":white_check_mark: Approved by {md.mention(actor)}; starting the runs."


def retry_text(actor: str, files: int, job_id: str) -> str:
    """The reply when failed files are retried in a new shard."""
    return (
        f":arrows_counterclockwise: {md.mention(actor)} retries {files} failed files in {job_id}."
    )


def not_owner_text(requester: str, group_id: str, what: str) -> str:
    """Why someone other than the requester or an admin may not ``what`` the group."""
    return (
        f"Only {md.mention(requester)} (who launched {group_id}) or an admin can {what} it."
    )
