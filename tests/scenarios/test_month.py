"""A small simulated month through the real tick and steps (``bench/month_real.py``): the
accounting is consistent with the simulator's charges. The waste figure itself is not asserted
(that is the bench's job); the run is slow (~1-2 min on 2 shared cores)."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.faults.conftest import pg_url  # noqa: F401 - a fresh PostgreSQL database

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import month_real  # noqa: E402

CENT = Decimal("0.01")


@pytest.mark.slow
def test_month_waste_categories_add_up_to_the_simulators_charges(
    tmp_path: Path, pg_url: str, s3_env: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv("GPUBOT_HOME", str(tmp_path / "home"))  # run_month sets it
    # given a month's mix at small scale (one of each kind at least) over a third of a day
    jobs = month_real.plan_jobs(8, seed=3, days=0.3, preempted=0.10, stuck=0.05,
                                forgotten=0.02, min_each=1)
    # when the real engine runs them on the frozen simulator
    result = month_real.run_month(jobs, pg_url=pg_url, workdir_root=tmp_path / "month",
                                  wall_limit_s=600)
    # then every job ended as its kind should, with no orphan
    assert result.unexpected == [], result.unexpected
    assert result.kinds == {"forgotten": 1, "normal": 5, "preempted": 1, "stuck": 1}
    assert result.waste_usd["orphans"] == 0
    # the categories and the useful part add up to the spend, exactly
    assert sum(result.waste_usd.values(), Decimal(0)) == result.waste_total_usd
    assert result.waste_total_usd + result.useful_usd == result.spend_usd
    # the spend is the simulator's own account total within a cent
    assert abs(result.spend_usd - result.sim_total_usd) <= CENT
    # every category of the mix cost something, and none more than was spent
    for kind in ("exit -> destroy", "forgotten box", "preemption", "stuck"):
        assert 0 < result.waste_usd[kind] < result.spend_usd, kind
    # every mark fell on a point of the simulator's clock the driver stopped at
    assert result.mark_misses == 0
