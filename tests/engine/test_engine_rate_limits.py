"""Engine: vast rate limits are "wait and retry", never a step failure; a refused low bid.

Real parts: the vastai SDK over HTTP against the simulator, a SQLite job database.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gpubot.db.engine import session_scope
from gpubot.db.queries import claim_due_jobs
from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.engine.steps import MAX_CONSECUTIVE_ERRORS, advance_job
from gpubot.models import JobState
from gpubot.providers.vastai import VastAIProvider
from gpubot.sim.server import SimServer
from gpubot.testing.fakes import FakeClock, fake_deps, seed_job
from tests.engine.conftest import SIM_API_KEY as KEY


@pytest.fixture
def deps(tmp_path: Path, sim: SimServer, clock: FakeClock) -> EngineDeps:
    provider = VastAIProvider(api_key=KEY, server_url=sim.url, retry_attempts=1)
    return fake_deps(tmp_path / "home", provider=provider, clock=clock)  # type: ignore[arg-type]


def _renting_job(deps: EngineDeps, job_id: str, resources: dict[str, object]) -> None:
    with session_scope(deps.sessions) as session:
        job = seed_job(session, job_id, state=JobState.RENTING, created_at=deps.clock())
        job.kind = "interactive"
        job.resources = resources


def _step(deps: EngineDeps, clock: FakeClock, job_id: str) -> JobRow:
    """Advance the clock until the job is due, claim it and run one step."""
    for _ in range(100):
        with session_scope(deps.sessions) as session:
            claimed = claim_due_jobs(session, now=clock())
        if claimed:
            (claim,) = claimed
            advance_job(deps, *claim)
            break
        clock.advance(seconds=5)
    else:
        raise AssertionError("the job never became due")
    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        session.expunge(job)
        return job


def test_a_429_storm_does_not_fail_the_job(deps: EngineDeps, sim: SimServer, clock: FakeClock):
    storm = MAX_CONSECUTIVE_ERRORS * 2
    sim.control.inject("POST", r"/bundles", 429, count=storm)
    _renting_job(deps, "j-storm", {"disk_gb": 20, "interruptible": "no"})
    for _ in range(storm):
        job = _step(deps, clock, "j-storm")
        assert job.state == JobState.RENTING.value, job.reason
        assert int((job.progress or {}).get("error_count", 0)) == 0
        assert "rate limit" in job.phase_detail
        assert job.due_at > clock(), "waits before the next try"
    assert sim.control.state()["injections"] == []
    job = _step(deps, clock, "j-storm")
    assert job.state == JobState.BOOTING.value, (job.state, job.reason, job.phase_detail)


def test_other_transient_errors_still_count(deps: EngineDeps, sim: SimServer, clock: FakeClock):
    sim.control.inject("POST", r"/bundles", 503, count=MAX_CONSECUTIVE_ERRORS)
    _renting_job(deps, "j-503", {"disk_gb": 20, "interruptible": "no"})
    job = _step(deps, clock, "j-503")
    assert int((job.progress or {}).get("error_count", 0)) == 1


def test_refused_low_bid_is_recorded_as_destroying_never_adopted(
    deps: EngineDeps, sim: SimServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bid below min_bid leaves a stopped instance labelled for the job: it must be
    recorded as destroyed-requested, not adopted by the next renting step."""
    from gpubot import offers

    monkeypatch.setattr(
        offers,
        "bid_for",
        lambda o: (
            (o.min_bid_per_hour_usd / 2).quantize(Decimal("0.001"))
            if o.min_bid_per_hour_usd > Decimal("0.01")
            else None
        ),
    )
    _renting_job(deps, "j-low", {"disk_gb": 20, "interruptible": "yes"})
    job = _step(deps, clock, "j-low")
    assert job.state == JobState.RENTING.value
    with session_scope(deps.sessions) as session:
        rows = session.query(InstanceRow).filter_by(job_id="j-low").all()
        (row,) = rows
        assert row.provider_id is not None, "the stopped half-rental is on record"
        assert row.destroy_requested_at is not None
        created = int(row.provider_id)
    assert created in sim.control.state()["destroyed_instance_ids"]
    clock.advance(timedelta(seconds=1))
    job = _step(deps, clock, "j-low")  # tries the next offer, never adopts the stopped one
    with session_scope(deps.sessions) as session:
        ids = {r.provider_id for r in session.query(InstanceRow).filter_by(job_id="j-low")}
    assert str(created) in ids and job.state in (JobState.RENTING.value, JobState.BOOTING.value)
