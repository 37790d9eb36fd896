"""Less waste, measured (``bench/month_real.py`` at a smaller N): the real tick and steps on the
frozen simulator, waste read from the simulator's own charges, with the month's mix (10 %
preempted, 5 % stuck, 2 % forgotten rentals; one of each at least): under ``TARGET_PCT`` of
the spend in all, under ``ENGINE_PCT`` for what the engine's reaction costs.

Each category is also held to what the engine's reaction allows on the simulator's clock:
a stuck job is destroyed within minutes (its stuck window, 5 min or 5x its observed cadence of
about a step a minute, plus the proportional grace), a box nobody used within the pull plus
``unused_window_minutes`` plus ``grace_minutes``, an exited job within one tick. Slow: a few
minutes of wall time on 2 shared cores.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.faults.conftest import pg_url  # noqa: F401 - a fresh PostgreSQL database

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import month_real  # noqa: E402

TARGET_PCT = Decimal("1.25")
"""At 50 jobs. The issue's target, 1 % of the spend, is for the 1000-job month
(``bench/month_real.py --jobs 1000``, docs/benchmarks.md section 7); at 50 jobs one forgotten
box, two stuck jobs and five preemptions weigh more on a smaller spend (1.04 % with seed 7:
preemption 0.50, stuck 0.27, forgotten 0.22, exit lag 0.06), and the preemption part is work
lost since the job's last checkpoint, not the engine's reaction."""
ENGINE_PCT = Decimal("0.75")
"""What the engine's reaction may cost: stuck, forgotten, exit lag and orphans (0.55 % with
seed 7)."""
TICK_S = 10.0
PULL_S = 120.0


@pytest.mark.slow
def test_a_small_month_wastes_little_of_the_simulators_charges(
    tmp_path: Path, pg_url: str, s3_env: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv("GPUBOT_HOME", str(tmp_path / "home"))  # run_month sets it
    # given the month's mix at 50 jobs over two simulated days
    jobs = month_real.plan_jobs(50, seed=7, days=2, preempted=0.10, stuck=0.05,
                                forgotten=0.02, min_each=1)
    # when the real engine runs them on the frozen simulator
    result = month_real.run_month(jobs, pg_url=pg_url, workdir_root=tmp_path / "month",
                                  loading_s=PULL_S, wall_limit_s=1200)
    # then every job ended as its kind should, and the charges add up
    assert result.unexpected == [], result.unexpected
    assert result.waste_total_usd + result.useful_usd == result.spend_usd
    assert result.mark_misses == 0
    # and the waste is under the target, from the simulator's charges
    waste_pct = 100 * result.waste_total_usd / result.spend_usd
    assert waste_pct < TARGET_PCT, month_real.report(result, seed=7, days=2)
    reaction = sum((result.waste_usd[k] for k in ("stuck", "forgotten box", "exit -> destroy",
                                                    "orphans")), Decimal(0))
    assert 100 * reaction / result.spend_usd < ENGINE_PCT
    # each category within what the engine's reaction allows (simulated seconds billed)
    lags = result.lags_s
    # (a stuck job that stalls in its first minutes has few steps to show its cadence: its
    # window is longer than 5 min then, but nowhere near the former 30 + 10 min)
    assert lags["stuck"] and max(lags["stuck"]) <= 12 * 60, lags["stuck"]
    assert lags["forgotten box"] and max(lags["forgotten box"]) <= PULL_S + 15 * 60 + 3 * TICK_S
    assert max(lags["exit -> destroy"]) <= TICK_S
    assert result.waste_usd["orphans"] == 0
