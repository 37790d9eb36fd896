"""App Home shows the same budget figures as ``/gpu budget show`` (one source: limits)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from bot.home import build_home_view
from gpubot import costs
from gpubot.db.engine import session_scope
from gpubot.deps import EngineDeps
from gpubot.governance import budgets
from gpubot.governance.periods import period_adjective
from gpubot.testing.fakes import T0, FakeClock, seed_ledger

D = Decimal


def _home_text(view: dict[str, object]) -> str:
    blocks = view["blocks"]
    assert isinstance(blocks, list)
    return "\n".join(str(b.get("text", {}).get("text", "")) for b in blocks)


def test_app_home_figures_equal_budget_show_with_day_and_month_limits(
    deps: EngineDeps, clock: FakeClock
) -> None:
    budgets.set_budget(
        deps, actor="UADMIN", scope="user", scope_id="U1", amount_usd=D(10), period="day"
    )
    budgets.set_budget(deps, actor="UADMIN", scope="user", scope_id="U1", amount_usd=D(70))
    with session_scope(deps.sessions) as s:
        seed_ledger(s, [("j-1", "U1", "C1", "compute", "3.00")], at=T0 - timedelta(days=1))
        seed_ledger(s, [("j-1", "U1", "C1", "compute", "2.00")], at=T0)
        seed_ledger(s, [("j-2", "U2", "C1", "compute", "4.00")], at=T0)

    overview = budgets.show(deps, user="U1", channel="C1")
    shown = [u for u in overview.scopes if u.scope in ("user", "team")]
    assert [(u.scope, u.period, u.spent_usd) for u in shown] == [
        ("user", "day", D(2)),
        ("user", "month", D(5)),
        ("team", "month", D(9)),
    ]
    home = _home_text(build_home_view(deps, "U1"))
    for usage in shown:
        assert usage.limit_usd is not None
        figure = (
            f"{costs.format_usd(usage.spent_usd)} of {costs.format_usd(usage.limit_usd)} "
            f"{period_adjective(usage.period)}"
        )
        assert figure in home
