"""The one command dispatcher behind every chat front (Slack listeners and ``gpubot chat``).

:func:`handle_command` turns the text a user typed into a :class:`Reply`; :func:`handle_action`
does the same for a button click. Both:

* parse with :func:`gpubot.commands.parse_command` -- bad input gets the usage text and
  changes nothing;
* check permissions (:mod:`gpubot.chat.permissions`) -- refusals are ephemeral, say why,
  change nothing but the audit trail;
* record what they did in the audit trail (:mod:`gpubot.notify.audit`);
* are idempotent per ``request_key``: a redelivered Slack request gets the first answer back and
  never launches twice (``JobRow.request_key`` + ``ProcessedRequestRow``).

Launches make one provider search (``plan_launch``) and database writes only, so a slash
command is answered within Slack's 3 s. ``logs`` connects over SSH and ``cost``/``status <job>``
may draw a chart: :func:`is_slow` tells a front to run those after acknowledging.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gpubot import offers as offer_rules
from gpubot.chat import launch, permissions
from gpubot.commands import (
    AuditCommand,
    BudgetAction,
    BudgetCommand,
    CancelCommand,
    Command,
    CostCommand,
    HelpCommand,
    JobsCommand,
    KeepCommand,
    LaunchCommand,
    LogsCommand,
    OffersCommand,
    RentCommand,
    StatusCommand,
    SweepCommand,
    help_text,
    parse_command,
    usage,
)
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow, ProcessedRequestRow
from gpubot.deps import EngineDeps
from gpubot.engine import planning
from gpubot.errors import (
    CommandError,
    CommandSyntaxError,
    GpubotError,
    NoOfferError,
    PermissionDenied,
    RemoteError,
    TransientProviderError,
)
from gpubot.models import InterruptibleMode, JobState, OfferRanking, RentalType
from gpubot.notify import audit, events, outbox
from gpubot.redact import redact
from gpubot.render import blocks as action_ids
from gpubot.render import mrkdwn as md
from gpubot.render import slack as slack_render
from gpubot.render.text import card_lines, usd

logger = logging.getLogger(__name__)

NOT_AVAILABLE = "not available yet"
MAX_BUDGET_EXTENSION_USD = Decimal(100_000)
"""The most one "Extend budget" click may add."""
SLOW_VERBS = frozenset({"logs", "cost"})
MAX_LOG_CHARS = 3500
JOB_ACTIONS = frozenset(
    {
        action_ids.ACTION_CANCEL,
        action_ids.ACTION_KEEP,
        action_ids.ACTION_DESTROY,
        action_ids.ACTION_APPROVE,
        action_ids.ACTION_REJECT,
        action_ids.ACTION_EXTEND_BUDGET,
    }
)


@dataclass
class Reply:
    """What a front shows the user.

    ``text`` is always set (plain mrkdwn, also the console rendering); ``blocks`` is optional
    Block Kit. ``ephemeral`` replies are shown to the requester only. ``job_id`` names the job
    the command created or is about (the console follows its thread). ``file_path`` is a PNG
    to attach (loss chart, cost chart). ``ok`` is False for usage errors and refusals.
    """

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    ephemeral: bool = True
    job_id: str | None = None
    file_path: str | None = None
    ok: bool = True
    duplicate: bool = False
    """True when the request was already handled (a redelivery): nothing was done again."""
    job_ids: list[str] = field(default_factory=list)
    """The child jobs a group launch (sweep, shards) created."""


def is_slow(text: str) -> bool:
    """True when the command may take more than a moment (SSH, charts): run it after the ack."""
    tokens = text.strip().split()
    if tokens and tokens[0].lower() == "/gpu":
        tokens = tokens[1:]
    if not tokens:
        return False
    verb = tokens[0].lower()
    return verb in SLOW_VERBS or (verb == "status" and len(tokens) > 1)


def _refusal(message: str) -> Reply:
    return Reply(text=message, ok=False)


# -- entry points -----------------------------------------------------------------------------


def handle_command(
    deps: EngineDeps, text: str, *, user: str, channel: str, request_key: str | None
) -> Reply:
    """Run one command typed by ``user`` in ``channel`` and return what to show.

    Never raises for user-caused problems: usage errors, refusals, missing jobs, an empty
    market and provider hiccups all come back as a Reply with ``ok=False``. A ``request_key``
    seen before returns the earlier answer (``duplicate=True``) and does nothing.
    """
    if request_key:
        earlier = _earlier_reply(deps, request_key)
        if earlier is not None:
            return earlier
    try:
        command = parse_command(text, deps.config)
    except CommandSyntaxError as e:
        body = md.escape(e.user_message)
        if e.usage:
            body += "\n\n" + md.escape(e.usage)
        return Reply(text=body, blocks=slack_render.text_blocks(body), ok=False)
    try:
        if not isinstance(command, HelpCommand):
            permissions.check_may_use(deps.config, user, channel)
        reply = _dispatch(deps, command, user=user, channel=channel, request_key=request_key)
    except PermissionDenied as e:
        _audit(deps, user, "denied", command.verb, e.user_message, {"text": text})
        return _refusal(e.user_message)
    except NoOfferError as e:
        return _refusal(f"No offer fits: {md.escape(redact(str(e)))}")
    except TransientProviderError:
        return _refusal("The GPU market is not answering right now; try again in a minute.")
    except CommandError as e:
        return _refusal(md.escape(redact(e.user_message)))
    except GpubotError as e:
        logger.warning("command %r failed: %s", command.verb, redact(str(e)))
        return _refusal(f"That failed: {md.escape(redact(e.user_message))}")
    if reply.duplicate:
        return reply
    if not isinstance(command, LaunchCommand | RentCommand):
        # Launches are audited (and their key stored) by launch.submit in its transaction.
        _audit(deps, user, "command", command.verb, "", {"text": text, "channel": channel})
        if request_key:
            _remember(deps, request_key, reply)
    return reply


def handle_action(
    deps: EngineDeps,
    action_id: str,
    value: str,
    *,
    user: str,
    channel: str,
    request_key: str | None = None,
) -> Reply:
    """Handle a button click. The clicker's permission is checked again on every click.

    ``value`` is the job id, or ``<job id>:<number>`` for ``job.keep`` (hours) and
    ``job.extend_budget`` (USD to add; default doubles the cap). A ``request_key`` already
    handled (a replayed click) returns the earlier answer and changes nothing.
    """
    if action_id not in JOB_ACTIONS:
        return _refusal(f"Unknown action {md.inline(repr(action_id[:40]))}.")
    if request_key:
        earlier = _earlier_reply(deps, request_key)
        if earlier is not None:
            return earlier
    reply = _handle_action(deps, action_id, value, user=user, channel=channel)
    if request_key and reply.ok:
        _remember(deps, request_key, reply)
    return reply


def _handle_action(
    deps: EngineDeps, action_id: str, value: str, *, user: str, channel: str
) -> Reply:
    job_id, _, arg = (value or "").partition(":")
    try:
        permissions.check_may_use(deps.config, user, channel)
        match action_id:
            case action_ids.ACTION_CANCEL:
                return _cancel(deps, job_id, user, reason=f"cancelled by {md.mention(user)}")
            case action_ids.ACTION_DESTROY:
                return _cancel(
                    deps, job_id, user, reason=f"destroyed on request of {md.mention(user)}"
                )
            case action_ids.ACTION_KEEP:
                return _keep(deps, job_id, user, hours=_number(arg, 2.0))
            case action_ids.ACTION_APPROVE:
                return _approve(deps, job_id, user)
            case action_ids.ACTION_REJECT:
                return _reject(deps, job_id, user)
            case _:
                return _extend_budget(deps, job_id, user, arg)
    except PermissionDenied as e:
        _audit(deps, user, "denied", job_id, e.user_message, {"action": action_id})
        return _refusal(e.user_message)


# -- helpers ----------------------------------------------------------------------------------


def _number(text: str, default: float) -> float:
    try:
        value = float(text)
    except ValueError:
        return default
    return value if value > 0 else default


def _audit(
    deps: EngineDeps,
    actor: str,
    action: str,
    target: str,
    reason: str,
    detail: dict[str, Any] | None = None,
) -> None:
    with session_scope(deps.sessions) as session:
        audit.record(session, actor, action, target, reason, detail)


def _earlier_reply(deps: EngineDeps, request_key: str) -> Reply | None:
    with session_scope(deps.sessions) as session:
        row = session.get(ProcessedRequestRow, request_key)
        if row is None:
            return None
        result = dict(row.result or {})
    job_id = result.get("job_id")
    text = result.get("text") or (
        f"Already handled: {job_id}." if job_id else "Already handled."
    )
    return Reply(text=str(text), job_id=job_id, duplicate=True)


def _remember(deps: EngineDeps, request_key: str, reply: Reply) -> None:
    try:
        with session_scope(deps.sessions) as session:
            session.add(
                ProcessedRequestRow(
                    key=request_key,
                    at=deps.clock(),
                    result={"text": redact(reply.text)[:4000], "job_id": reply.job_id},
                )
            )
    except IntegrityError:
        pass  # a concurrent redelivery stored it first; same answer


def _job_or_none(session: Session, job_id: str) -> JobRow | None:
    return session.get(JobRow, job_id) if job_id else None


def _cancel_unstarted(session: Session, job_id: str, reason: str, now: datetime) -> bool:
    """Finish a job still awaiting approval as cancelled. Nothing was rented and no worker
    claims such rows, so this guarded UPDATE is the whole job; False if it moved on."""
    done = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.state == JobState.AWAITING_APPROVAL.value)
        .values(
            state=JobState.CANCELLED.value,
            outcome=JobState.CANCELLED.value,
            reason=reason,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def _no_job(job_id: str) -> Reply:
    return _refusal(f"There is no job {md.inline(repr(job_id[:20]))}. `/gpu jobs` lists yours.")


def _dispatch(
    deps: EngineDeps, command: Command, *, user: str, channel: str, request_key: str | None
) -> Reply:
    match command:
        case LaunchCommand() if _is_sharded(deps, command):
            return _launch_group(deps, command, user=user, channel=channel, request_key=request_key)  # noqa: E501
        case LaunchCommand() | RentCommand():
            return _launch(deps, command, user=user, channel=channel, request_key=request_key)
        case SweepCommand():
            return _launch_group(deps, command, user=user, channel=channel, request_key=request_key)  # noqa: E501
        case OffersCommand():
            return _offers(deps, command)
        case StatusCommand(job_id=None):
            return _jobs(deps, user, include_finished=False)
        case StatusCommand(job_id=str(job_id)):
            return _status(deps, job_id)
        case JobsCommand():
            return _jobs(deps, user, include_finished=command.include_finished)
        case LogsCommand():
            return _logs(deps, command, user, channel)
        case CancelCommand() if command.job_id.startswith("g-"):
            return _cancel_group(deps, command.job_id, user)
        case CancelCommand():
            return _cancel(deps, command.job_id, user, reason=f"cancelled by {md.mention(user)}")
        case KeepCommand():
            return _keep(deps, command.job_id, user, hours=command.hours)
        case BudgetCommand():
            return _budget(deps, command, user, channel)
        case CostCommand():
            return _cost(deps, command)
        case AuditCommand():
            return _audit_list(deps, command, user)
        case HelpCommand():
            text = usage(command.topic, deps.config) if command.topic else help_text(deps.config)
            return Reply(text=md.escape(text), blocks=slack_render.code_sections(text))
    raise CommandError(f"unhandled command {command!r}")  # pragma: no cover


# -- groups (sweeps, sharded runs) -------------------------------------------------------------


def _is_sharded(deps: EngineDeps, command: LaunchCommand) -> bool:
    """A shardable template with ``shards=N > 1`` runs as a group of N child jobs."""
    template = deps.config.templates.get(command.template)
    if template is None or not template.shardable:
        return False
    try:
        return int(command.params.get("shards", 1)) > 1
    except (TypeError, ValueError):
        return False


def _launch_group(
    deps: EngineDeps,
    command: LaunchCommand | SweepCommand,
    *,
    user: str,
    channel: str,
    request_key: str | None,
) -> Reply:
    from gpubot.groups import submit as groups
    permissions.check_may_use(deps.config, user, channel)
    if isinstance(command, SweepCommand):
        sub = groups.submit_sweep(
            deps, command, requester=user, channel=channel, request_key=request_key
        )
    else:
        sub = groups.submit_shards(
            deps,
            command,
            shards=int(command.params.get("shards", 1)),
            requester=user,
            channel=channel,
            request_key=request_key,
        )
    with session_scope(deps.sessions) as session:
        audit.record(
            session,
            user,
            "launch_group",
            sub.group_id,
            sub.approval_reason or "",
            {"children": list(sub.job_ids), "estimate_usd": str(sub.estimate_usd)},
        )
    return Reply(
        text=sub.text,
        ephemeral=False,
        job_id=sub.group_id,
        job_ids=list(sub.job_ids),
        duplicate=not sub.created,
    )


def _cancel_group(deps: EngineDeps, group_id: str, user: str) -> Reply:
    from gpubot.db.tables import JobGroupRow
    from gpubot.groups import submit as groups
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        if group is None:
            return _no_job(group_id)
        if group.requester != user and not permissions.is_admin(deps.config, user):
            return _refusal(
                f"Only {md.mention(group.requester)} or an admin can cancel {group_id}."
            )
    count = groups.cancel_group(deps, group_id, user)
    with session_scope(deps.sessions) as session:
        audit.record(session, user, "cancel_group", group_id, f"cancelled by {md.mention(user)}")
    return Reply(text=f"{group_id}: cancelling {count} run(s).", job_id=group_id)


# -- launch -----------------------------------------------------------------------------------


def _launch(
    deps: EngineDeps,
    command: LaunchCommand | RentCommand,
    *,
    user: str,
    channel: str,
    request_key: str | None,
) -> Reply:
    with session_scope(deps.sessions) as session:
        permissions.check_quota(session, deps.config, user, channel)
    plan = launch.plan_launch(deps, command)
    reason = permissions.approval_reason(
        deps.config, price_per_hour_usd=plan.price_per_hour_usd, estimate_usd=plan.estimate_usd
    )
    budget_reason = _budget_verdict(deps, user, channel, plan.estimate_usd)
    if budget_reason:
        reason = "; ".join(r for r in (reason, budget_reason) if r)
    if reason:
        plan = replace(plan, approval_reason=reason)
    try:
        job_id, created = launch.submit(
            deps, plan, requester=user, channel=channel, request_key=request_key
        )
    except IntegrityError:
        # A concurrent redelivery of the same request won the insert.
        earlier = _earlier_reply(deps, request_key) if request_key else None
        if earlier is not None:
            return earlier
        raise
    if not created:
        return Reply(text=f"Already handled: {job_id}.", job_id=job_id, duplicate=True)
    lines = plan.summary_lines()
    if reason:
        with session_scope(deps.sessions) as session:
            outbox.reply(
                session,
                channel=channel,
                thread_key=job_id,
                job_id=job_id,
                text=f"{job_id} needs an admin's approval: {md.inline(reason, 1000)}",
                blocks=slack_render.approval_blocks(
                    job_id, user, lines, reason, deps.config.roles.admins
                ),
            )
            audit.record(session, user, "approval.request", job_id, reason)
        after = f"{job_id} waits for an admin's approval ({md.inline(reason, 1000)})."
    else:
        after = f"{job_id} is queued; follow it in the thread."
    text = "\n".join(md.escape(line) for line in lines) + "\n" + after
    return Reply(
        text=text,
        blocks=slack_render.plan_blocks(job_id, lines, awaiting_approval=bool(reason)),
        job_id=job_id,
    )


def _budget_verdict(deps: EngineDeps, user: str, channel: str, estimate_usd: Decimal) -> str:
    """'' when the launch fits the budgets, else why it needs approval.

    Raises:
        PermissionDenied: a budget would be exceeded and ``[budgets] on_exceed = "refuse"``.
    """
    check_launch = _optional("gpubot.governance.budgets", "check_launch")
    if check_launch is None:
        return ""
    with session_scope(deps.sessions) as session:
        verdict = check_launch(
            deps, session, requester=user, channel=channel, estimate_usd=estimate_usd
        )
    if verdict.ok:
        return ""
    if str(verdict.outcome) == "needs_approval":
        return str(verdict.reason)
    raise PermissionDenied(
        f"budget exceeded for {user}", user_message=f"Not launched: {verdict.reason}."
    )


# -- read-only commands -----------------------------------------------------------------------


def _offers(deps: EngineDeps, command: OffersCommand) -> Reply:
    if command.template is not None and command.template not in deps.config.templates:
        raise CommandError(f"unknown template {command.template!r}")
    filters = command.filters
    requirements = planning.requirements_for(deps.config, command.template, filters)
    interruptible = filters.interruptible is InterruptibleMode.YES
    rental_type = RentalType.INTERRUPTIBLE if interruptible else RentalType.ON_DEMAND
    market = deps.provider.search_offers(requirements, interruptible=interruptible)
    matching = [
        o
        for o in market
        if not offer_rules.offer_matches(o, requirements, rental_type=rental_type)
    ]
    best = offer_rules.rank_offers(matching, OfferRanking.PRICE, rental_type=rental_type)
    best = best[: command.limit]
    title = f"{len(best)} cheapest matching offers" + (" (bid prices)" if interruptible else "")
    table = slack_render.offers_table(best)
    return Reply(
        text=f"{title}\n{md.code_block(table, md.TEXT_SOFT_MAX, keep='head')}",
        blocks=slack_render.offers_blocks(best, title),
    )


def _status(deps: EngineDeps, job_id: str) -> Reply:
    with session_scope(deps.sessions) as session:
        job = _job_or_none(session, job_id)
        if job is None:
            return _no_job(job_id)
        view = events.job_view(session, job)
        points = list((job.metrics_history or {}).get("points") or [])
    text = "\n".join(card_lines(view))
    file_path = None
    if points:
        from gpubot.render.charts import loss_chart_png

        path = deps.settings.home / "charts" / f"{job_id}-loss.png"
        file_path = str(loss_chart_png([(int(p[0]), float(p[1])) for p in points], path))
        text += f"\nloss chart: {md.inline(file_path, 500)}"
    return Reply(
        text=text,
        blocks=slack_render.text_blocks(text),
        job_id=job_id,
        file_path=file_path,
    )


def _jobs(deps: EngineDeps, user: str, *, include_finished: bool) -> Reply:
    live = [s.value for s in JobState.live_states()]
    with session_scope(deps.sessions) as session:
        rows = list(
            session.scalars(
                select(JobRow)
                .where(JobRow.requester == user, JobRow.state.in_(live))
                .order_by(JobRow.created_at.desc())
                .limit(40)
            )
        )
        if include_finished:
            rows += list(
                session.scalars(
                    select(JobRow)
                    .where(JobRow.requester == user, JobRow.state.not_in(live))
                    .order_by(JobRow.created_at.desc())
                    .limit(10)
                )
            )
        views = [events.job_view(session, job) for job in rows]
    title = "Your jobs" if include_finished else "Your live jobs"
    if not views:
        return Reply(text=f"{title}: none.", blocks=slack_render.jobs_blocks(views, title))
    text = title + ":\n" + "\n".join(card_lines(v)[0] for v in views)
    return Reply(text=text, blocks=slack_render.jobs_blocks(views, title))


def _logs(deps: EngineDeps, command: LogsCommand, user: str, channel: str) -> Reply:
    from gpubot.engine import remote_job
    from gpubot.engine.steps import current_instance

    with session_scope(deps.sessions) as session:
        job = _job_or_none(session, command.job_id)
        if job is None:
            return _no_job(command.job_id)
        if job.channel != channel:
            permissions.check_owner_or_admin(deps.config, user, job, "read the log of")
        instance = current_instance(session, job.id)
        if instance is not None:
            session.expunge(instance)
        session.expunge(job)
    if instance is None or not instance.ssh_host:
        return _refusal(f"{job.id} has no running instance to read a log from ({job.state}).")
    try:
        with remote_job.connect(deps, instance) as remote:
            tail = remote.tail(job, command.lines)
    except RemoteError as e:
        return _refusal(f"Could not read the log of {job.id}: {redact(e.user_message)}")
    tail_lines = redact(tail).split("\n")
    title = f"Last {command.lines} lines of {job.id}:"
    text = f"{md.escape(title)}\n{md.code_block(tail_lines, MAX_LOG_CHARS)}"
    return Reply(
        text=text, blocks=slack_render.code_blocks(title, tail_lines), job_id=job.id
    )


# -- changes ----------------------------------------------------------------------------------


def _cancel(deps: EngineDeps, job_id: str, user: str, *, reason: str) -> Reply:
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        job = _job_or_none(session, job_id)
        if job is None:
            return _no_job(job_id)
        permissions.check_owner_or_admin(deps.config, user, job, "cancel")
        state = JobState(job.state)
        if state.is_finished():
            return Reply(text=f"{job_id} already {state.value}; nothing to cancel.", job_id=job_id)
        if state is JobState.AWAITING_APPROVAL:
            # Nothing was rented and no worker claims such rows: finish it here, guarded.
            if _cancel_unstarted(session, job_id, reason, now):
                session.refresh(job)
                events.note(session, job, f":no_entry: {job_id} {reason} before it started.")
                events.refresh_card(session, job)
                audit.record(session, user, "cancel", job_id, reason)
                return Reply(text=f"{job_id} cancelled.", job_id=job_id)
        if job.cancel_requested:
            return Reply(text=f"{job_id} is already being cancelled.", job_id=job_id)
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(cancel_requested=True, reason=reason, due_at=now)
            .execution_options(synchronize_session=False)
        )
        session.refresh(job)
        events.note(session, job, f":octagonal_sign: {reason}; checkpointing and destroying.")
        audit.record(session, user, "cancel", job_id, reason)
    deps.enqueuer.kick()
    return Reply(text=f"{job_id}: cancelling; the instance will be destroyed.", job_id=job_id)


def _keep(deps: EngineDeps, job_id: str, user: str, *, hours: float) -> Reply:
    hours = min(max(hours, 0.1), 24.0)
    now = deps.clock()
    until = now + timedelta(hours=hours)
    with session_scope(deps.sessions) as session:
        job = _job_or_none(session, job_id)
        if job is None:
            return _no_job(job_id)
        permissions.check_owner_or_admin(deps.config, user, job, "keep")
        if JobState(job.state).is_finished():
            return _refusal(f"{job_id} already {job.state}; there is nothing to keep.")
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(keep_until=until, idle_warned_at=None)
            .execution_options(synchronize_session=False)
        )
        session.refresh(job)
        when = until.strftime("%Y-%m-%d %H:%M UTC")
        events.note(
            session, job, f":hourglass: {md.mention(user)} keeps {job_id} alive until {when}."
        )
        audit.record(session, user, "keep", job_id, f"{hours:g} h", {"until": until.isoformat()})
    return Reply(text=f"{job_id} is kept alive until {when}.", job_id=job_id)


def _approve(deps: EngineDeps, job_id: str, user: str) -> Reply:
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        job = _job_or_none(session, job_id)
        if job is None:
            return _no_job(job_id)
        permissions.check_approver(deps.config, user, job.requester)
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state == JobState.AWAITING_APPROVAL.value)
            .values(state=JobState.QUEUED.value, due_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return Reply(text=f"{job_id} is {job.state}; nothing to approve.", job_id=job_id)
        session.refresh(job)
        events.note(
            session, job, f":white_check_mark: Approved by {md.mention(user)}; renting now."
        )
        events.refresh_card(session, job)
        audit.record(session, user, "approve", job_id, "", {"requester": job.requester})
    deps.enqueuer.kick()
    return Reply(text=f"{job_id} approved.", job_id=job_id)


def _reject(deps: EngineDeps, job_id: str, user: str) -> Reply:
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        job = _job_or_none(session, job_id)
        if job is None:
            return _no_job(job_id)
        permissions.check_admin(deps.config, user, "reject a launch")
        reason = f"rejected by {md.mention(user)}"
        if not _cancel_unstarted(session, job_id, reason, now):
            return Reply(text=f"{job_id} is {job.state}; nothing to reject.", job_id=job_id)
        session.refresh(job)
        events.note(session, job, f":no_entry: {job_id} was {reason}. Nothing was rented.")
        events.refresh_card(session, job)
        audit.record(session, user, "reject", job_id, reason, {"requester": job.requester})
    return Reply(text=f"{job_id} rejected.", job_id=job_id)


def _extend_budget(deps: EngineDeps, job_id: str, user: str, amount_text: str) -> Reply:
    with session_scope(deps.sessions) as session:
        job = _job_or_none(session, job_id)
        if job is None:
            return _no_job(job_id)
        permissions.check_owner_or_admin(deps.config, user, job, "extend the budget of")
        old = job.budget_usd
        try:
            extra = Decimal(amount_text) if amount_text else (old or Decimal(0))
        except InvalidOperation:
            extra = old or Decimal(0)
        if not extra.is_finite() or extra > MAX_BUDGET_EXTENSION_USD:
            return _refusal(f"{job_id}: not an amount in USD.")
        if extra <= 0:
            return _refusal(f"{job_id} has no budget cap to extend.")
        new = (old or Decimal(0)) + extra
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(budget_usd=new)
            .execution_options(synchronize_session=False)
        )
        session.refresh(job)
        events.note(
            session, job, f":moneybag: {md.mention(user)} raised the budget to {usd(new)}."
        )
        events.refresh_card(session, job)
        audit.record(
            session, user, "budget.extend", job_id, "", {"from": str(old), "to": str(new)}
        )
    return Reply(text=f"{job_id}: budget raised from {usd(old)} to {usd(new)}.", job_id=job_id)


# -- budgets, cost, audit ---------------------------------------------------------------------


def _optional(module: str, name: str) -> Any | None:
    """A function of a service another part provides, or None while it does not exist."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, name, None)


def _budget(deps: EngineDeps, command: BudgetCommand, user: str, channel: str) -> Reply:
    if command.action is BudgetAction.SET:
        permissions.check_admin(deps.config, user, "set budgets")
        set_budget = _optional("gpubot.governance.budgets", "set_budget")
        if set_budget is None:
            return _refusal(f"budget set is {NOT_AVAILABLE}.")
        scope = command.scope.value if command.scope is not None else "team"
        # set_budget records the change in the audit trail (``budget_set``) itself.
        text = str(
            set_budget(
                deps,
                actor=user,
                scope=scope,
                scope_id=command.target,
                amount_usd=command.amount_usd,
                period=command.period.value,
            )
        )
        return Reply(text=text, blocks=slack_render.text_blocks(text))
    show = _optional("gpubot.governance.budgets", "show")
    if show is None:
        return _refusal(f"budget is {NOT_AVAILABLE}.")
    text = str(show(deps, user=user, channel=channel))
    return Reply(text=text, blocks=slack_render.text_blocks(text))


def _cost(deps: EngineDeps, command: CostCommand) -> Reply:
    cost_report = _optional("gpubot.governance.reports", "cost_report")
    if cost_report is None:
        return _refusal(f"cost is {NOT_AVAILABLE}.")
    group = command.group_by.value if command.group_by is not None else None
    text, chart = cost_report(deps, period=command.period.value, group_by=group)
    return Reply(
        text=str(text),
        blocks=slack_render.text_blocks(str(text)),
        file_path=str(chart) if chart else None,
        ephemeral=False,
    )


def _audit_list(deps: EngineDeps, command: AuditCommand, user: str) -> Reply:
    permissions.check_admin(deps.config, user, "read the audit trail")
    with session_scope(deps.sessions) as session:
        rows = audit.recent(session, command.limit)
        lines = [
            f"{r.at:%Y-%m-%d %H:%M} {md.mention(r.actor)} {md.inline(r.action, 60)} "
            f"{md.inline(r.target, 120)}"
            + (f" ({md.inline(r.reason, 300)})" if r.reason else "")
            for r in rows
        ]
    text = "Recent audit events:\n" + ("\n".join(lines) if lines else "none")
    return Reply(text=redact(text), blocks=slack_render.text_blocks(redact(text)))
