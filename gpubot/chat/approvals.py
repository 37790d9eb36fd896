"""The admin verbs on a launch, its budget and its price: the Approve / Reject buttons of an
approval request (a job's, or a group's: :func:`approve_group` / :func:`reject_group`), Extend
budget on a budget alert, and Raise the price on a "no offer within the approved price"
prompt (:func:`raise_ceiling`).

Approving queues the job (a worker rents it on the next tick); rejecting finishes it
(nothing was rented). Each change, its thread reply and its audit entry commit together. A
job's or group's approve/reject answer carries ``blocks``: what the approval request becomes
(who decided, when, no buttons), which the Slack front puts in place of the clicked message.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

from sqlalchemy import case, func, or_, update

from gpubot.chat import permissions
from gpubot.chat.jobs import cancel_unstarted
from gpubot.chat.reply import Reply, job_or_none, no_job, refusal
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow, ProcessedRequestRow
from gpubot.deps import EngineDeps
from gpubot.errors import CommandError, PermissionDenied
from gpubot.models import JobState
from gpubot.notify import audit, events
from gpubot.redact import redact
from gpubot.render import chat as texts
from gpubot.render import events as thread
from gpubot.render import limits as render_limits
from gpubot.render import slack as slack_render

MAX_BUDGET_EXTENSION_USD = Decimal(100_000)
"""The most one "Extend budget" click may add."""
MAX_PRICE_CEILING_PER_HOUR_USD = Decimal(1000)
"""The highest price ceiling ($/h) a "Raise the price" click may set."""
PRICE_CEILING_QUANTUM = Decimal("0.00000001")
"""The scale of ``jobs.price_ceiling_per_hour_usd``: a new ceiling is rounded down to it."""
_FINISHED = tuple(sorted(s.value for s in JobState.finished_states()))
_NO_RAISE = (*_FINISHED, JobState.AWAITING_APPROVAL.value)
"""States whose price ceiling a click never raises: finished, or not yet approved (the
approver judges the launch with the ceiling it was submitted with)."""


def approve(deps: EngineDeps, job_id: str, user: str) -> Reply:
    """Queue a job awaiting approval (an admin; never the requester). A job that moved on
    is left as it is."""
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        job = job_or_none(session, job_id)
        if job is None:
            return no_job(job_id)
        permissions.check_approver(deps.config, user, job.requester)
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state == JobState.AWAITING_APPROVAL.value)
            .values(state=JobState.QUEUED.value, due_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return _undecided("approve", job_id, job.state, now)
        session.refresh(job)
        events.note(session, job, thread.approved(user))
        events.refresh_card(session, job)
        audit.record(session, user, "approve", job_id, "", {"requester": job.requester})
    deps.enqueuer.kick()
    return Reply(text=texts.approved(job_id), job_id=job_id,
                 blocks=_decided(job_id, "approved", user, now))


def reject(deps: EngineDeps, job_id: str, user: str) -> Reply:
    """Finish a job awaiting approval as cancelled (an admin). A job that moved on is left
    as it is."""
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        job = job_or_none(session, job_id)
        if job is None:
            return no_job(job_id)
        permissions.check_admin(deps.config, user, "reject a launch")
        reason = texts.rejection_reason(user)
        if not cancel_unstarted(session, job_id, reason, now):
            return _undecided("reject", job_id, job.state, now)
        session.refresh(job)
        events.note(session, job, thread.rejected(job_id, reason))
        events.refresh_card(session, job)
        audit.record(session, user, "reject", job_id, reason, {"requester": job.requester})
    return Reply(text=texts.rejected(job_id), job_id=job_id,
                 blocks=_decided(job_id, "rejected", user, now))


def _decided(job_id: str, decision: str, user: str | None, now: datetime,
             state: str = "") -> list[dict[str, Any]]:
    """The blocks that replace the approval request once answered (who, when, no buttons)."""
    return slack_render.decision_blocks(
        job_id, decision=decision, user=user, at_utc=f"{now.astimezone(UTC):%Y-%m-%d %H:%M}",
        state=state,
    )


def _undecided(verb: str, job_id: str, state: str, now: datetime) -> Reply:
    """Approve/reject on a job that no longer awaits approval: nothing changes; the request's
    buttons are replaced all the same (``blocks``), since nothing is left to decide."""
    return Reply(text=texts.nothing_to(verb, job_id, state), job_id=job_id,
                 blocks=_decided(job_id, verb, None, now, state))


def extend_budget(
    deps: EngineDeps, job_id: str, user: str, amount_text: str, *, request_key: str | None = None
) -> Reply:
    """Raise the job's budget cap by ``amount_text`` USD (owner or admin); an empty amount
    doubles the cap. Refused: not a finite amount, more than
    :data:`MAX_BUDGET_EXTENSION_USD`, or no cap to double.

    Once per ``request_key`` (one click, however often Slack delivers it): the key is claimed
    with an INSERT into ``processed_requests`` in the transaction that raises the cap, before
    the raise, and stores this answer there. A concurrent delivery of the same click blocks on
    that INSERT until this one commits, then gets ``IntegrityError`` (its transaction changes
    nothing): the caller answers it from the stored row. A refusal claims nothing. The raise
    itself is ``budget + extra`` in SQL, so two different clicks never lose one another's.
    """
    with session_scope(deps.sessions) as session:
        job = job_or_none(session, job_id)
        if job is None:
            return no_job(job_id)
        permissions.check_owner_or_admin(deps.config, user, job, "extend the budget of")
        old = job.budget_usd
        try:
            extra = Decimal(amount_text) if amount_text else (old or Decimal(0))
        except InvalidOperation:
            extra = old or Decimal(0)
        if not extra.is_finite() or extra > MAX_BUDGET_EXTENSION_USD:
            return refusal(texts.not_an_amount(job_id))
        if extra <= 0:
            return refusal(texts.no_budget_cap(job_id))
        claim = None
        if request_key:
            claim = ProcessedRequestRow(key=request_key, at=deps.clock(), result={})
            session.add(claim)
            session.flush()  # the INSERT now: raises IntegrityError if the click was handled
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(budget_usd=func.coalesce(JobRow.budget_usd, 0) + extra)
            .execution_options(synchronize_session=False)
        )
        session.refresh(job)
        new = job.budget_usd if job.budget_usd is not None else extra
        old = new - extra if old is not None else None
        events.note(session, job, thread.budget_raised(user=user, new_usd=new))
        events.refresh_card(session, job)
        audit.record(
            session, user, "budget.extend", job_id, "", {"from": str(old), "to": str(new)}
        )
        reply = Reply(text=texts.budget_extended(job_id, old, new), job_id=job_id)
        if claim is not None:
            claim.result = {"text": redact(reply.text)[:4000], "job_id": job_id}
    return reply


def raise_ceiling(deps: EngineDeps, job_id: str, user: str, price_text: str) -> Reply:
    """Let a job rent at up to ``price_text`` $/h: the "Pay up to $X/h" button of the prompt
    the engine posts when offers exist only above the job's approved price ceiling.

    Who: the requester or an admin; when the price is above ``[roles]
    approval_above_price_per_hour_usd``, an admin other than the requester (the approval a
    launch at that price needs). A refusal raises :class:`~gpubot.errors.PermissionDenied`
    (the dispatcher audits it); nothing changes.

    Refused, changing nothing: not a number, not finite, at most 0 (after rounding down to
    the column's $0.00000001) or above :data:`MAX_PRICE_CEILING_PER_HOUR_USD`; a finished
    job, or one awaiting approval (its approver judges the ceiling it was launched with). A
    ceiling already at or above the price: an ok answer saying so; nothing changes and
    nothing is audited.

    Otherwise one guarded UPDATE (job not finished nor awaiting approval, ceiling NULL or
    below the price) sets the ceiling and, for a job waiting on a price approval, clears
    ``phase_detail`` (so the engine prompts again if it still finds nothing) and makes it due
    now, together with a thread note, the card's refresh and a
    ``ceiling.raise`` audit event; then the workers are kicked so it rents at once. Both ok
    answers carry ``blocks``: what the prompt becomes (who raised it to what, when; no
    buttons), which the Slack front puts in place of the clicked prompt. Setting
    a value under that guard is idempotent, so no request key is claimed here: the
    dispatcher remembers the answer afterwards.
    """
    now = deps.clock()
    with session_scope(deps.sessions) as session:
        job = job_or_none(session, job_id)
        if job is None:
            return no_job(job_id)
        # Whoever may not even act on the job is refused before the price is looked at.
        permissions.check_owner_or_admin(deps.config, user, job, "raise the price of")
        price = _price(price_text)
        if price is None:
            return refusal(texts.not_a_price(job_id))
        limit = deps.config.roles.approval_above_price_per_hour_usd
        if limit is not None and price > limit:
            try:
                permissions.check_approver(deps.config, user, job.requester)
            except PermissionDenied as e:
                raise PermissionDenied(
                    str(e), user_message=texts.price_needs_approver(job_id, price, limit)
                ) from e
        # Lock the row (PostgreSQL) so the ceiling read here is the one the UPDATE replaces.
        session.refresh(job, with_for_update=True)
        if job.state in _NO_RAISE:
            return refusal(texts.price_of_finished(job_id, job.state))
        old = job.price_ceiling_per_hour_usd
        waiting = JobRow.phase_detail.like(f"{render_limits.PRICE_WAIT_PREFIX}%")
        done = session.execute(
            update(JobRow)
            .where(
                JobRow.id == job_id,
                JobRow.state.not_in(_NO_RAISE),
                or_(
                    JobRow.price_ceiling_per_hour_usd.is_(None),
                    JobRow.price_ceiling_per_hour_usd < price,
                ),
            )
            .values(price_ceiling_per_hour_usd=price, updated_at=now,
                    phase_detail=case((waiting, ""), else_=JobRow.phase_detail),
                    due_at=case((waiting, now), else_=JobRow.due_at))
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            session.refresh(job)
            if job.state in _NO_RAISE:  # it finished since it was read
                return refusal(texts.price_of_finished(job_id, job.state))
            current = job.price_ceiling_per_hour_usd
            return Reply(text=texts.ceiling_already(job_id, current), job_id=job_id,
                         blocks=_price_decided(job_id, current, None, now))
        session.refresh(job)
        new = job.price_ceiling_per_hour_usd if job.price_ceiling_per_hour_usd is not None \
            else price
        events.note(session, job, thread.ceiling_raised(user=user, old_usd=old, new_usd=new))
        events.refresh_card(session, job)
        audit.record(
            session, user, "ceiling.raise", job_id, "", {"from": str(old), "to": str(new)}
        )
    deps.enqueuer.kick()
    return Reply(text=texts.ceiling_raised(job_id, old, new), job_id=job_id,
                 blocks=_price_decided(job_id, new, user, now))


def _price_decided(job_id: str, ceiling_usd: Decimal | None, user: str | None,
                   now: datetime) -> list[dict[str, Any]]:
    """The blocks that replace the "Pay up to" prompt once answered (who, when, no buttons)."""
    return slack_render.price_decision_blocks(
        job_id, ceiling_usd=thread.per_hour(ceiling_usd), user=user,
        at_utc=f"{now.astimezone(UTC):%Y-%m-%d %H:%M}",
    )


def _price(text: str) -> Decimal | None:
    """``text`` as a price ceiling ($/h, rounded down to the column's scale), or None when it
    is not a number, not finite, not above 0 or above :data:`MAX_PRICE_CEILING_PER_HOUR_USD`."""
    try:
        price = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        return None
    if not price.is_finite() or price > MAX_PRICE_CEILING_PER_HOUR_USD:
        return None
    price = price.quantize(PRICE_CEILING_QUANTUM, rounding=ROUND_DOWN)
    return price if price > 0 else None


def approve_group(deps: EngineDeps, group_id: str, user: str) -> Reply:
    """Approve every child of a sweep or sharded run awaiting approval (an admin; never the
    requester): the Approve button on the group's approval request. The quota then counts
    them (:func:`gpubot.groups.actions.approve_group`); a group with nothing awaiting is
    left as it is. Like a job's, the answer carries ``blocks``: what the group's approval
    request becomes (who decided, when, no buttons; or "no longer waits" when nothing was
    awaiting)."""
    from gpubot.groups import actions as group_actions

    try:
        approved = group_actions.approve_group(deps, group_id, user)
    except CommandError:
        return no_job(group_id)
    now = deps.clock()
    if not approved:
        return Reply(text=texts.nothing_to("approve", group_id, "not awaiting approval"),
                     job_id=group_id,
                     blocks=_decided(group_id, "approve", None, now, "not awaiting approval"))
    return Reply(text=render_limits.group_approved(group_id, len(approved)), job_id=group_id,
                 blocks=_decided(group_id, "approved", user, now))


def reject_group(deps: EngineDeps, group_id: str, user: str) -> Reply:
    """Reject a group awaiting approval (an admin): its waiting children end as cancelled,
    nothing was rented for them. A group with nothing awaiting is left as it is. The answer
    carries the decision ``blocks`` like :func:`approve_group`."""
    from gpubot.groups import actions as group_actions

    try:
        rejected = group_actions.reject_group(
            deps, group_id, user, texts.rejection_reason(user)
        )
    except CommandError:
        return no_job(group_id)
    now = deps.clock()
    if not rejected:
        return Reply(text=texts.nothing_to("reject", group_id, "not awaiting approval"),
                     job_id=group_id,
                     blocks=_decided(group_id, "reject", None, now, "not awaiting approval"))
    return Reply(text=render_limits.group_rejected(group_id, len(rejected)), job_id=group_id,
                 blocks=_decided(group_id, "rejected", user, now))
