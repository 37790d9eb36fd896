"""The one command dispatcher behind every chat front (Slack listeners and ``gpubot chat``).

:func:`handle_command` turns the text a user typed into a :class:`Reply`; :func:`handle_action`
does the same for a button click. Both:

* parse with :func:`gpubot.commands.parse_command` -- bad input gets the usage text and
  changes nothing;
* check permissions (:mod:`gpubot.chat.permissions`) -- refusals are ephemeral, say why,
  change nothing but the audit trail;
* route to the verb's module and record what they did in the audit trail
  (:mod:`gpubot.notify.audit`);
* are idempotent per ``request_key``: a redelivered Slack request gets the first answer back and
  never launches twice (``JobRow.request_key`` + ``ProcessedRequestRow``). Where acting twice
  would matter (launches, Extend budget) the key is inserted in the transaction of the effect,
  so of two concurrent deliveries one acts and the other fails on the key and gets the answer.

Where each verb lives: launches and group launches in :mod:`gpubot.chat.launching`; status,
jobs, logs, cancel and keep in :mod:`gpubot.chat.jobs`; approve, reject, extend budget and
raise the price in :mod:`gpubot.chat.approvals`; offers in :mod:`gpubot.chat.market`; budget
and cost in :mod:`gpubot.chat.spending`; audit in :mod:`gpubot.chat.audit_view`; help here.

Launches make one provider search (``plan_launch``) and database writes only, so a slash
command is answered within Slack's 3 s. ``logs`` connects over SSH and ``cost``/``status <job>``
may draw a chart: :func:`is_slow` tells a front to run those after acknowledging.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import IntegrityError

from gpubot.chat import approvals, audit_view, jobs, launching, market, permissions, spending
from gpubot.chat.reply import Reply, refusal
from gpubot.commands import (
    AuditCommand,
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
from gpubot.db.tables import ProcessedRequestRow
from gpubot.deps import EngineDeps
from gpubot.errors import (
    CommandError,
    CommandSyntaxError,
    GpubotError,
    NoOfferError,
    PermissionDenied,
    TransientProviderError,
)
from gpubot.notify import audit
from gpubot.redact import redact
from gpubot.render import blocks as action_ids
from gpubot.render import chat as texts
from gpubot.render import mrkdwn as md
from gpubot.render import slack as slack_render

__all__ = ["JOB_ACTIONS", "Reply", "handle_action", "handle_command", "is_slow"]

logger = logging.getLogger(__name__)

SLOW_VERBS = frozenset({"logs", "cost"})
JOB_ACTIONS = frozenset(
    {
        action_ids.ACTION_CANCEL,
        action_ids.ACTION_KEEP,
        action_ids.ACTION_DESTROY,
        action_ids.ACTION_APPROVE,
        action_ids.ACTION_REJECT,
        action_ids.ACTION_EXTEND_BUDGET,
        action_ids.ACTION_RAISE_CEILING,
    }
)
"""The button action ids :func:`handle_action` accepts; any other is refused."""
CLAIMED_IN_EFFECT = frozenset({action_ids.ACTION_EXTEND_BUDGET})
"""Actions that are not idempotent: their handler claims the request key (an INSERT into
``processed_requests`` that fails on conflict) in the transaction of the effect, before the
effect, so concurrent deliveries of one click apply it once. The others are guarded by their
own conditional updates (approve/reject/cancel act on a state) or repeat harmlessly (keep sets
a time, raise the price sets a ceiling under a guard) and are remembered after the fact."""


def is_slow(text: str) -> bool:
    """True when the command may take more than a moment (SSH, charts): run it after the ack."""
    tokens = text.strip().split()
    if tokens and tokens[0].lower() == "/gpu":
        tokens = tokens[1:]
    if not tokens:
        return False
    verb = tokens[0].lower()
    return verb in SLOW_VERBS or (verb == "status" and len(tokens) > 1)


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
        body = texts.usage_error(e.user_message, e.usage)
        return Reply(text=body, blocks=slack_render.text_blocks(body), ok=False)
    try:
        if not isinstance(command, HelpCommand):
            permissions.check_may_use(deps.config, user, channel)
        reply = _dispatch(deps, command, user=user, channel=channel, request_key=request_key)
    except PermissionDenied as e:
        _audit(deps, user, "denied", command.verb, e.user_message, {"text": text})
        return refusal(e.user_message)
    except NoOfferError as e:
        return refusal(texts.no_offer(redact(str(e))))
    except TransientProviderError:
        return refusal(texts.MARKET_UNAVAILABLE)
    except CommandError as e:
        return refusal(texts.refused(redact(e.user_message)))
    except GpubotError as e:
        logger.warning("command %r failed: %s", command.verb, redact(str(e)))
        return refusal(texts.failed(redact(e.user_message)))
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

    ``value`` is the job id, or ``<job id>:<number>`` for ``job.keep`` (hours),
    ``job.extend_budget`` (USD to add; default doubles the cap) and ``job.raise_ceiling``
    (the new price ceiling, a decimal in $/h such as ``0.0792``). ``job.approve`` and
    ``job.reject`` also take a group id (``g-…``): the whole group's approval request. A
    ``request_key`` already handled (a replayed click) returns the earlier answer and changes
    nothing.
    """
    if action_id not in JOB_ACTIONS:
        return refusal(texts.unknown_action(action_id))
    if request_key:
        earlier = _earlier_reply(deps, request_key)
        if earlier is not None:
            return earlier
    try:
        reply = _route_action(
            deps, action_id, value, user=user, channel=channel, request_key=request_key
        )
    except IntegrityError:
        # A concurrent delivery of the same click claimed the key first (in the effect's own
        # transaction, which then committed): this one changed nothing; answer like it.
        earlier = _earlier_reply(deps, request_key) if request_key else None
        if earlier is not None:
            return earlier
        raise
    if request_key and reply.ok and action_id not in CLAIMED_IN_EFFECT:
        _remember(deps, request_key, reply)
    return reply


# -- routing ----------------------------------------------------------------------------------


def _dispatch(
    deps: EngineDeps, command: Command, *, user: str, channel: str, request_key: str | None
) -> Reply:
    match command:
        case LaunchCommand() if launching.is_sharded(deps, command):
            return launching.launch_group(
                deps, command, user=user, channel=channel, request_key=request_key
            )
        case LaunchCommand() | RentCommand():
            return _launch_once(deps, command, user=user, channel=channel, request_key=request_key)
        case SweepCommand():
            return launching.launch_group(
                deps, command, user=user, channel=channel, request_key=request_key
            )
        case OffersCommand():
            return market.offers(deps, command)
        case StatusCommand(job_id=None):
            return jobs.list_jobs(deps, user, include_finished=False)
        case StatusCommand(job_id=str(job_id)):
            return jobs.status(deps, job_id)
        case JobsCommand():
            return jobs.list_jobs(deps, user, include_finished=command.include_finished)
        case LogsCommand():
            return jobs.logs(deps, command, user, channel)
        case CancelCommand() if command.job_id.startswith("g-"):
            return jobs.cancel_group(deps, command.job_id, user)
        case CancelCommand():
            return jobs.cancel(deps, command.job_id, user, reason=texts.cancel_reason(user))
        case KeepCommand():
            return jobs.keep(deps, command.job_id, user, hours=command.hours)
        case BudgetCommand():
            return spending.budget(deps, command, user, channel)
        case CostCommand():
            return spending.cost(deps, command)
        case AuditCommand():
            return audit_view.audit_list(deps, command, user)
        case HelpCommand():
            text = usage(command.topic, deps.config) if command.topic else help_text(deps.config)
            return Reply(text=md.escape(text), blocks=slack_render.code_sections(text))
    raise CommandError(f"unhandled command {command!r}")  # pragma: no cover


def _launch_once(
    deps: EngineDeps,
    command: LaunchCommand | RentCommand,
    *,
    user: str,
    channel: str,
    request_key: str | None,
) -> Reply:
    """A single launch; a concurrent redelivery that won the insert gets its earlier answer."""
    try:
        return launching.launch_job(
            deps, command, user=user, channel=channel, request_key=request_key
        )
    except IntegrityError:
        earlier = _earlier_reply(deps, request_key) if request_key else None
        if earlier is not None:
            return earlier
        raise


def _route_action(
    deps: EngineDeps, action_id: str, value: str, *, user: str, channel: str,
    request_key: str | None,
) -> Reply:
    job_id, _, arg = (value or "").partition(":")
    try:
        permissions.check_may_use(deps.config, user, channel)
        match action_id:
            case action_ids.ACTION_CANCEL:
                return jobs.cancel(deps, job_id, user, reason=texts.cancel_reason(user))
            case action_ids.ACTION_DESTROY:
                reason = texts.cancel_reason(user, destroy=True)
                return jobs.cancel(deps, job_id, user, reason=reason)
            case action_ids.ACTION_KEEP:
                return jobs.keep(deps, job_id, user, hours=_number(arg, 2.0))
            case action_ids.ACTION_APPROVE if job_id.startswith("g-"):
                return approvals.approve_group(deps, job_id, user)
            case action_ids.ACTION_REJECT if job_id.startswith("g-"):
                return approvals.reject_group(deps, job_id, user)
            case action_ids.ACTION_APPROVE:
                return approvals.approve(deps, job_id, user)
            case action_ids.ACTION_REJECT:
                return approvals.reject(deps, job_id, user)
            case action_ids.ACTION_RAISE_CEILING:
                return approvals.raise_ceiling(deps, job_id, user, arg)
            case _:
                return approvals.extend_budget(
                    deps, job_id, user, arg, request_key=request_key
                )
    except PermissionDenied as e:
        _audit(deps, user, "denied", job_id, e.user_message, {"action": action_id})
        return refusal(e.user_message)


def _number(text: str, default: float) -> float:
    """``text`` as a positive number, else ``default``."""
    try:
        value = float(text)
    except ValueError:
        return default
    return value if value > 0 else default


# -- audit and request keys -------------------------------------------------------------------


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
    """The stored answer to ``request_key`` (``duplicate=True``), or None if it is new."""
    with session_scope(deps.sessions) as session:
        row = session.get(ProcessedRequestRow, request_key)
        if row is None:
            return None
        result = dict(row.result or {})
    job_id = result.get("job_id")
    text = result.get("text") or texts.already_handled(job_id)
    return Reply(text=str(text), job_id=job_id, duplicate=True)


def _remember(deps: EngineDeps, request_key: str, reply: Reply) -> None:
    """Store the answer to ``request_key`` (redacted); a concurrent store of the same key
    wins silently (same answer)."""
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
