"""The money verbs: ``/gpu budget`` (show; ``set`` for admins) and ``/gpu cost``.

Numbers come from :mod:`gpubot.governance`; texts from :mod:`gpubot.render.budgets`.
"""

from __future__ import annotations

from gpubot.chat import permissions
from gpubot.chat.reply import Reply
from gpubot.commands import BudgetAction, BudgetCommand, CostCommand
from gpubot.deps import EngineDeps
from gpubot.governance import budgets, reports
from gpubot.render import budgets as budget_render
from gpubot.render import slack as slack_render


def budget(deps: EngineDeps, command: BudgetCommand, user: str, channel: str) -> Reply:
    """``/gpu budget``: the caller's, the channel's and the team's spend against their limits;
    ``/gpu budget set …`` changes a limit (admins; audited by ``set_budget`` itself).

    Raises:
        PermissionDenied: ``set`` by someone who is not an admin.
    """
    if command.action is BudgetAction.SET:
        permissions.check_admin(deps.config, user, "set budgets")
        scope = command.scope.value if command.scope is not None else "team"
        # set_budget records the change in the audit trail (``budget_set``) itself.
        change = budgets.set_budget(
            deps,
            actor=user,
            scope=scope,
            scope_id=command.target,
            amount_usd=command.amount_usd,
            period=command.period.value,
        )
        text = budget_render.budget_set_text(change)
        return Reply(text=text, blocks=slack_render.text_blocks(text))
    text = budget_render.overview_text(budgets.show(deps, user=user, channel=channel))
    return Reply(text=text, blocks=slack_render.text_blocks(text))


def cost(deps: EngineDeps, command: CostCommand) -> Reply:
    """``/gpu cost [period] [by …]``: spend from the ledger, public, with a chart when one
    was drawn. Slow: run after the ack."""
    group = command.group_by.value if command.group_by is not None else None
    report = reports.cost_report(deps, period=command.period.value, group_by=group)
    text = budget_render.cost_report_text(report)
    return Reply(
        text=text,
        blocks=slack_render.text_blocks(text),
        file_path=report.chart_path,
        ephemeral=False,
    )
