"""Many jobs at once against vast's per-endpoint rate limits (simulator switch
``rate_limits_real_s``: minimum REAL seconds between calls, 429 with no ``Retry-After``).

Real prefork workers on one Redis broker share the client pace (``[engine]
vast_min_interval_seconds``, Redis slots) set to EXACTLY the simulator's intervals: a call holds
its endpoint while in flight and the next one leaves one interval after it returned, so send
jitter cannot bring two calls closer than the interval. Ticks never wait for a list turn (no
turn: the tick goes on without a listing) and job steps wait for a turn only briefly (a turn
further away makes the job due again then, not counted as an error), so ticks and steps never
occupy the workers waiting. Every job must run to success on one rental, no job may fail, and
the simulator must count zero calls that broke an endpoint's minimum interval (none answered
429).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import update

from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow
from gpubot.sim.server import SimServer
from tests.faults.conftest import (
    FAULT_TEMPLATES,
    TERMINAL,
    Cluster,
    LiveMonitor,
    assert_clean,
    job_row,
    launch,
    wait_for,
)

SIM_LIMITS_S = {"create": 5.0, "destroy": 3.0, "list": 1.0}
CLIENT_PACE_S = dict(SIM_LIMITS_S)
"""No margin: spacing is measured from the end of the previous call."""


def _paced_config() -> str:
    pace = ", ".join(f"{k} = {v}" for k, v in CLIENT_PACE_S.items())
    assert "[engine]\n" in FAULT_TEMPLATES
    return FAULT_TEMPLATES.replace(
        "[engine]\n", f"[engine]\nvast_min_interval_seconds = {{ {pace} }}\n", 1
    )


def _launch_many_under_rate_limits(
    cluster: Cluster, sim: SimServer, live_monitor: LiveMonitor, n_jobs: int, timeout_s: float
) -> None:
    # given the simulator enforcing vast's minimum intervals (no Retry-After) and workers
    # pacing their calls to match, through Redis
    sim.control.configure(rate_limits_real_s=SIM_LIMITS_S, rate_limit_enforce=True)
    sim.control.reset_rate_limits()
    (cluster.tmp_path / "gpubot.toml").write_text(_paced_config())
    cluster.env["GPUBOT_LOCK_TTL_SECONDS"] = "120"
    # ticks every 0.25 s against a 1 s list pace: most ticks find no list turn and must go on
    # without one (they used to queue on the pace and hold every pool slot)
    assert cluster.min_tick_interval_s < CLIENT_PACE_S["list"] / 2
    cluster.worker("wa", concurrency=3)
    cluster.worker("wb", concurrency=3)
    # when n jobs are launched at once
    jobs = [launch(cluster.deps, f"trainx steps=30 step_seconds=0.05 lr=0.{i + 1:03d}")
            for i in range(n_jobs)]
    # (all were planned on the same cheapest offer, so their stored price ceilings, plan
    # + 20 %, admit only the few offers of the seeded market near it and the jobs would rent
    # a few at a time as offers come back: as if an admin had approved them at up to $1/h,
    # they may all rent at once, which is the load this test is about)
    with session_scope(cluster.sessions) as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id.in_(jobs))
            .values(price_ceiling_per_hour_usd=Decimal("1.00"))
        )
    for job_id in jobs:
        wait_for(cluster.sessions, job_id, until=lambda j: j.state in TERMINAL,
                 tick=cluster.tick, timeout_s=timeout_s, pace_s=0.2)
    # then every job ran and succeeded on one rental, nothing leaked, the ledger is right
    for job_id in jobs:
        job = job_row(cluster.sessions, job_id)
        assert job.state == "succeeded", f"{job_id}: {job.state}: {job.reason}"
        assert "429" not in (job.reason or "") and "too frequent" not in (job.reason or "")
        assert_clean(cluster.sessions, sim, job_id, monitor=live_monitor, attempts=1)
    # and the simulator saw every limited endpoint used, with no call inside its interval
    limits = sim.control.rate_limits()
    for endpoint in SIM_LIMITS_S:
        assert limits["calls"].get(endpoint, 0) > 0, limits
    assert limits["calls"]["create"] == n_jobs, limits
    assert not any(limits["violations"].values()), limits
    assert not any(limits["rejected"].values()), limits


@pytest.fixture
def sim_speed() -> float:
    """Real time: the workers meter on the real clock, so the ledger matches the simulator's
    billing only at speed 1 (at 10x a 20-job run bills ten times what it meters)."""
    return 1.0


def test_five_jobs_at_once_respect_the_rate_limits(
    cluster: Cluster, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    _launch_many_under_rate_limits(cluster, sim, live_monitor, n_jobs=5, timeout_s=180)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_twenty_jobs_at_once_respect_the_rate_limits(
    cluster: Cluster, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    _launch_many_under_rate_limits(cluster, sim, live_monitor, n_jobs=20, timeout_s=600)
