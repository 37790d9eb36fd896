"""THE launch budget gate: would a launch fit the requester's, the channel's and the team's
budgets for the current period?

Every launch path (``/gpu run`` and ``/gpu rent`` in :mod:`gpubot.chat.dispatch`, sweeps and
sharded runs in :mod:`gpubot.groups.submit`) calls :func:`launch_gate` and reads the one
:class:`LaunchBudgetVerdict` the same way, through :meth:`LaunchBudgetVerdict.approval_reason`:
fits → None; over a budget with ``[budgets] on_exceed = "approval"`` → the reason an admin must
approve; with ``on_exceed = "refuse"`` → :class:`~gpubot.errors.BudgetError`. Reads only.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.orm import Session

from gpubot.config import OnExceed
from gpubot.db.engine import session_scope
from gpubot.deps import EngineDeps
from gpubot.errors import BudgetError
from gpubot.governance.limits import TEAM_ID, Limit, limits_for, spend
from gpubot.governance.periods import dec, period_start
from gpubot.render.budgets import launch_excess_reason


class LaunchOutcome(enum.StrEnum):
    OK = "ok"
    REFUSE = "refuse"
    NEEDS_APPROVAL = "needs_approval"


@dataclass(frozen=True, slots=True)
class LaunchBudgetVerdict:
    """Whether a launch fits the budgets. ``reason`` is mrkdwn, safe to show in Slack."""

    outcome: LaunchOutcome
    reason: str = ""
    exceeded: tuple[Limit, ...] = ()

    @property
    def ok(self) -> bool:
        return self.outcome is LaunchOutcome.OK

    def approval_reason(self) -> str | None:
        """None when the launch fits; the reason when an admin must approve it.

        Raises:
            BudgetError: the launch would exceed a budget and must be refused
                (``str(error)`` is :attr:`reason`).
        """
        if self.outcome is LaunchOutcome.OK:
            return None
        if self.outcome is LaunchOutcome.REFUSE:
            raise BudgetError(self.reason)
        return self.reason


def launch_verdict(
    checks: Sequence[tuple[Limit, Decimal]], estimate_usd: Decimal, on_exceed: OnExceed
) -> LaunchBudgetVerdict:
    """Pure decision: each ``(limit, spent)`` must satisfy spent + estimate <= limit.

    Any excess → ``refuse`` or ``needs_approval`` (per ``on_exceed``) with one reason per
    exceeded budget joined by ``; ``.
    """
    over: list[Limit] = []
    reasons: list[str] = []
    for limit, spent in checks:
        if spent + estimate_usd > limit.limit_usd:
            over.append(limit)
            reasons.append(
                launch_excess_reason(
                    limit.scope, limit.scope_id, limit.period, limit.limit_usd, spent, estimate_usd
                )
            )
    if not over:
        return LaunchBudgetVerdict(LaunchOutcome.OK)
    outcome = (
        LaunchOutcome.NEEDS_APPROVAL if on_exceed is OnExceed.APPROVAL else LaunchOutcome.REFUSE
    )
    return LaunchBudgetVerdict(outcome, "; ".join(reasons), tuple(over))


def check_launch(
    deps: EngineDeps, session: Session, *, requester: str, channel: str, estimate_usd: Decimal
) -> LaunchBudgetVerdict:
    """:func:`launch_gate` inside the caller's ``session``."""
    now = deps.clock()
    checks: list[tuple[Limit, Decimal]] = []
    for scope, scope_id in (("user", requester), ("channel", channel), ("team", TEAM_ID)):
        for limit in limits_for(deps, session, scope, scope_id):
            spent = spend(
                session, scope=scope, scope_id=scope_id, since=period_start(limit.period, now)
            )
            checks.append((limit, spent))
    return launch_verdict(checks, dec(estimate_usd), deps.config.budgets.on_exceed)


def launch_gate(
    deps: EngineDeps, *, requester: str, channel: str, estimate_usd: Decimal
) -> LaunchBudgetVerdict:
    """Would a launch estimated at ``estimate_usd`` exceed the requester's, the channel's or
    the team's budget for the current period? Honours ``[budgets] on_exceed``; reads only, in
    its own transaction. Read the verdict with :meth:`LaunchBudgetVerdict.approval_reason`."""
    with session_scope(deps.sessions) as session:
        return check_launch(
            deps, session, requester=requester, channel=channel, estimate_usd=estimate_usd
        )
