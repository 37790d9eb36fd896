"""Cost reports: the total line equals the ledger to the cent; the chart is a real PNG."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gpubot.db.engine import session_scope
from gpubot.deps import EngineDeps
from gpubot.errors import CommandError
from gpubot.governance import reports
from gpubot.render import budgets as budget_render
from gpubot.testing.fakes import T0, seed_ledger

D = Decimal


def _report(deps: EngineDeps, **kw: str | None) -> tuple[str, str | None]:
    """``/gpu cost``'s reply text and chart path, as the dispatcher builds them."""
    report = reports.cost_report(deps, **kw)  # type: ignore[arg-type]
    return budget_render.cost_report_text(report), report.chart_path


def _total_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("total")]
    assert len(lines) == 1
    return lines[0].split()[-1]


def _group_lines(text: str) -> dict[str, str]:
    body = text.split("```")[1].splitlines()
    rows = [line for line in body[3:] if line and not line.startswith(("-", "total"))]
    return {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1] for line in rows}


@pytest.mark.parametrize(
    ("groups", "total", "expected"),
    [
        (
            [("U1", D("3.5")), ("U2", D("0.004"))],
            D("3.504"),
            [
                "T",
                "```",
                "user      cost",
                "--------------",
                "<@U1>    $3.50",
                "<@U2>  $0.0040",
                "--------------",
                "total    $3.50",
                "```",
            ],
        ),
        (
            [],
            D(0),
            [
                "T",
                "```",
                "user         cost",
                "-----------------",
                "(no spend)",
                "-----------------",
                "total       $0.00",
                "```",
            ],
        ),
    ],
)
def test_render_table(
    groups: list[tuple[str, Decimal]], total: Decimal, expected: list[str]
) -> None:
    lines = [
        line.rstrip() for line in budget_render.cost_table("T", "user", groups, total).splitlines()
    ]
    assert lines == expected


def test_report_total_equals_ledger_to_the_cent(deps: EngineDeps) -> None:
    rng = random.Random(7)
    entries = []
    for _ in range(400):
        who = rng.choice(["U1", "U2", "U3"])
        entries.append(
            (
                rng.choice(["j-1", "j-2", "j-3", None]),
                who,
                rng.choice(["C1", "C2"]),
                rng.choice(["compute", "storage", "bandwidth"]),
                D(rng.randint(1, 10**6)) / D(10**8),  # 0.00000001 .. 0.01
            )
        )
    with session_scope(deps.sessions) as s:
        seed_ledger(s, entries, at=T0)
        # Last month's spend is outside the report.
        seed_ledger(
            s, [("j-0", "U1", "C1", "compute", "1000")], at=datetime(2025, 2, 27, tzinfo=UTC)
        )
    exact = sum((e[4] for e in entries), D(0))
    with session_scope(deps.sessions) as s:
        assert reports.ledger_total(s, since=datetime(2025, 3, 1, tzinfo=UTC)) == exact
        assert reports.ledger_total(s) == exact + 1000
    for group_by in (None, "user", "channel", "job"):
        text, chart = _report(deps, period="month", group_by=group_by)
        assert _total_line(text) == f"${exact.quantize(D('0.01'))}"
        assert chart is not None
        data = Path(chart).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert Path(chart).parent == deps.settings.home / "charts"
    text, _ = _report(deps, group_by="user")
    by_user = _group_lines(text)
    assert set(by_user) == {"<@U1>", "<@U2>", "<@U3>"}
    expected_u1 = sum((e[4] for e in entries if e[1] == "U1"), D(0))
    assert by_user["<@U1>"] == f"${expected_u1.quantize(D('0.01'))}"
    text, _ = _report(deps, group_by="job")
    assert "(none)" in _group_lines(text)  # entries without a job are not lost


def test_report_periods_and_empty_ledger(deps: EngineDeps) -> None:
    text, chart = _report(deps, period="week")
    assert chart is None
    assert _total_line(text) == "$0.00"
    with session_scope(deps.sessions) as s:
        seed_ledger(s, [("j-1", "U1", "C1", "compute", "2.00")], at=T0)
        seed_ledger(s, [("j-1", "U1", "C1", "compute", "3.00")], at=T0 - timedelta(days=1))
        seed_ledger(s, [("j-1", "U1", "C1", "storage", "4.00")], at=T0 - timedelta(days=5))
    assert _total_line(_report(deps, period="today")[0]) == "$2.00"
    assert _total_line(_report(deps, period="week")[0]) == "$5.00"
    month, _ = _report(deps, period="month")
    assert _total_line(month) == "$9.00"
    assert _group_lines(month) == {"compute": "$5.00", "storage": "$4.00"}
    assert re.search(r"since 2025-03-01 00:00 UTC", month)
    with pytest.raises(CommandError):
        _report(deps, period="decade")
    with pytest.raises(CommandError):
        _report(deps, group_by="gpu")
