"""``/gpu cost``, the data side: ledger totals per group and a bar chart.

Totals are the append-only ledger's, read from its per-day spend summaries
(:mod:`gpubot.db.spend`): an entry belongs to the period in which it ended (``period_end``
after the period's start, as in :mod:`gpubot.governance.limits`). :func:`ledger_total` still
sums the ledger itself (the source of truth, for checks). The
report's total is the exact ledger sum for the period (the table shows it rounded to cents);
group totals are rounded separately, so they may differ from the total by a cent of rounding.
The reply text is :func:`gpubot.render.budgets.cost_report_text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpubot import costs
from gpubot.db.engine import session_scope
from gpubot.db.spend import TEAM_ID, day_of, from_e8
from gpubot.db.tables import LedgerEntryRow, SpendSummaryRow
from gpubot.deps import EngineDeps
from gpubot.errors import CommandError
from gpubot.governance.periods import dec, normalize_period, period_start
from gpubot.render.budgets import CostReport

GROUPS = ("user", "channel", "job", "kind")
"""Groupings of ``/gpu cost``; each is a scope of the spend summaries."""
MAX_CHART_BARS = 20
"""The chart shows the largest groups; the rest are summed into one ``other`` bar."""


def ledger_total(session: Session, since: datetime | None = None) -> Decimal:
    """Sum of every ledger entry (ending after ``since`` when given), to the ledger quantum."""
    stmt = select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0))
    if since is not None:
        stmt = stmt.where(LedgerEntryRow.period_end > since)
    return dec(session.scalar(stmt) or 0).quantize(costs.LEDGER_QUANTUM, rounding=ROUND_HALF_UP)


def ledger_groups(
    session: Session, *, since: datetime, group_by: str
) -> list[tuple[str, Decimal]]:
    """``(group, total)`` for entries ending after ``since`` (a UTC midnight), largest first,
    ties by name; from the spend summaries (no ledger scan). Entries without a user, channel
    or job are grouped as ``-``."""
    if group_by not in GROUPS:
        raise ValueError(f"unknown grouping {group_by!r}")
    rows = session.execute(
        select(SpendSummaryRow.scope_id, func.sum(SpendSummaryRow.amount_usd_e8))
        .where(SpendSummaryRow.scope == group_by, SpendSummaryRow.day >= day_of(since))
        .group_by(SpendSummaryRow.scope_id)
    ).all()
    out = [(str(key) if key else "-", from_e8(total)) for key, total in rows]
    return sorted(out, key=lambda kv: (-kv[1], kv[0]))


def summary_total(session: Session, since: datetime) -> Decimal:
    """:func:`ledger_total` for entries ending after ``since`` (a UTC midnight), read from the
    team's spend summaries."""
    total = session.scalar(
        select(func.sum(SpendSummaryRow.amount_usd_e8)).where(
            SpendSummaryRow.scope == "team",
            SpendSummaryRow.scope_id == TEAM_ID,
            SpendSummaryRow.day >= day_of(since),
        )
    )
    return from_e8(total)


def render_chart(
    path: Path, title: str, group_by: str, groups: Sequence[tuple[str, Decimal]]
) -> Path:
    """A horizontal bar chart PNG of ``groups`` at ``path`` (matplotlib, Agg; no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = list(groups[:MAX_CHART_BARS])
    rest = sum((v for _, v in groups[MAX_CHART_BARS:]), Decimal(0))
    if rest:
        shown.append(("other", rest))
    labels = [k for k, _ in shown][::-1]
    values = [float(v) for _, v in shown][::-1]
    fig = Figure(figsize=(7, max(2.0, 0.4 * len(shown) + 1.2)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars = ax.barh(labels, values, color="#4c72b0")
    ax.bar_label(bars, labels=[costs.format_usd(Decimal(str(v))) for v in values], padding=3)
    ax.set_xlabel("USD")
    ax.set_title(f"{title} by {group_by}")
    ax.margins(x=0.2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def cost_report(
    deps: EngineDeps, *, period: str = "month", group_by: str | None = None
) -> CostReport:
    """Spend in the current ``period`` (day/today, week, month; UTC) from the ledger.

    ``group_by`` is ``user`` | ``channel`` | ``job``, or None for a breakdown by kind
    (compute, storage, bandwidth, adjustment). The report's total equals :func:`ledger_total`
    for the period; its bar chart is saved under ``GPUBOT_HOME/charts/`` (``chart_path`` None
    when nothing was spent).

    Raises:
        CommandError: an unknown period or grouping.
    """
    key = normalize_period(period)
    grouping = group_by or "kind"
    if grouping not in GROUPS:
        raise CommandError(f"unknown grouping {group_by!r}: use user, channel or job")
    now = deps.clock()
    since = period_start(key, now)
    with session_scope(deps.sessions) as session:
        groups = ledger_groups(session, since=since, group_by=grouping)
        total = summary_total(session, since)
    chart: str | None = None
    if groups:
        name = f"cost-{key}-{grouping}-{now:%Y%m%dT%H%M%S}.png"
        chart = str(
            render_chart(
                deps.settings.home / "charts" / name, f"Cost this {key}", grouping, groups
            )
        )
    return CostReport(key, since, grouping, tuple(groups), total, chart)
