"""Engine under the vast pace: ticks never wait for a list turn, steps never wait long for a
turn, and a turn that is not free is "due again then", never an error.

Real parts: the vastai SDK over HTTP against the simulator, the client pace, a SQLite job
database.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gpubot.db.engine import session_scope
from gpubot.db.queries import claim_due_jobs
from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.engine.steps import advance_job
from gpubot.engine.tick import GONE, reconcile_tick
from gpubot.models import JobState
from gpubot.providers.vastai import VastAIProvider
from gpubot.providers.vastai.pace import LocalPace
from gpubot.sim.server import SimServer
from gpubot.testing.fakes import FakeClock, fake_deps, seed_instance, seed_job
from tests.engine.conftest import SIM_API_KEY as KEY


@pytest.fixture
def pace() -> LocalPace:
    return LocalPace({"create": 0.8, "list": 0.5}, max_wait_seconds=0.1)


@pytest.fixture
def deps(tmp_path: Path, sim: SimServer, clock: FakeClock, pace: LocalPace) -> EngineDeps:
    provider = VastAIProvider(api_key=KEY, server_url=sim.url, retry_attempts=1, pace=pace)
    return fake_deps(tmp_path / "home", provider=provider, clock=clock)  # type: ignore[arg-type]


def _job(deps: EngineDeps, job_id: str) -> JobRow:
    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _rows(deps: EngineDeps, job_id: str) -> list[InstanceRow]:
    with session_scope(deps.sessions) as session:
        rows = list(session.query(InstanceRow).filter_by(job_id=job_id).order_by(InstanceRow.id))
        for row in rows:
            session.expunge(row)
        return rows


def _run_due(deps: EngineDeps, clock: FakeClock) -> list[str]:
    with session_scope(deps.sessions) as session:
        claimed = claim_due_jobs(session, now=clock())
    for claim in claimed:
        advance_job(deps, *claim)
    return [job_id for job_id, _ in claimed]


def test_a_create_without_a_turn_is_due_again_then_and_rents_nothing(
    deps: EngineDeps, sim: SimServer, clock: FakeClock, pace: LocalPace
) -> None:
    sim.control.reset_rate_limits()
    with session_scope(deps.sessions) as session:
        job = seed_job(session, "j-paced", state=JobState.RENTING, created_at=clock())
        job.kind = "interactive"
        job.resources = {"disk_gb": 20, "interruptible": "no"}
        job.progress = {"error_count": 3}
    # given another worker's create just returned: the next create turn is 0.8 s away, more
    # than this step may wait (0.1 s)
    with pace.turn("create"):
        pass
    # when the job's renting step runs
    assert _run_due(deps, clock) == ["j-paced"]
    # then it rented nothing, sent no create, counted no error, and is due at the turn's time
    job = _job(deps, "j-paced")
    assert job.state == JobState.RENTING.value, job.reason
    assert "rate limit" in job.phase_detail
    assert job.progress["error_count"] == 3
    wait = (job.due_at - clock()).total_seconds()
    assert 0.5 <= wait <= 0.8, wait
    (placeholder,) = _rows(deps, "j-paced")
    assert placeholder.provider_id is None
    assert placeholder.destroyed_at is not None and placeholder.status == "abandoned"
    assert sim.control.rate_limits()["calls"].get("create", 0) == 0
    assert sim.control.state()["instances"] == []
    # and once the turn has come it rents, once, without looking for the closed placeholder
    clock.advance(seconds=1)
    deadline = time.monotonic() + 10
    while _job(deps, "j-paced").state == JobState.RENTING.value:
        assert time.monotonic() < deadline, _job(deps, "j-paced").phase_detail
        clock.advance(seconds=1)
        _run_due(deps, clock)
        time.sleep(0.05)  # the pace runs on real time; bounded by the deadline
    job = _job(deps, "j-paced")
    assert job.state == JobState.BOOTING.value, (job.state, job.reason)
    calls = sim.control.rate_limits()["calls"]
    assert calls["create"] == 1
    assert calls.get("list", 0) == 0, "no label search for a create that was never sent"
    assert len(sim.control.state()["instances"]) == 1


def test_a_tick_never_waits_for_a_list_turn_and_presumes_nothing_gone(
    deps: EngineDeps, sim: SimServer, clock: FakeClock, pace: LocalPace
) -> None:
    with session_scope(deps.sessions) as session:
        seed_job(session, "j-run", state=JobState.RUNNING, created_at=clock())
        seed_instance(session, "j-run", "123456", created_at=clock())
    # given another worker's listing in flight, for longer than any wait bound
    in_call = threading.Event()
    release = threading.Event()

    def slow_listing() -> None:
        with pace.turn("list"):
            in_call.set()
            release.wait(10)

    holder = threading.Thread(target=slow_listing)
    holder.start()
    try:
        assert in_call.wait(10)
        # when a tick runs
        t0 = time.monotonic()
        report = reconcile_tick(deps, dispatch=lambda job_id, token: None)
        took = time.monotonic() - t0
    finally:
        release.set()
        holder.join()
    # then it went on at once without a listing, and took nothing for gone
    assert not report.listed_ok
    assert took < 1.0, took
    (row,) = _rows(deps, "j-run")
    assert row.provider_status != GONE and row.destroyed_at is None
    # and a later tick with the turn free lists (the instance is unknown to vast: gone)
    deadline = time.monotonic() + 10
    while not (report := reconcile_tick(deps, dispatch=lambda job_id, token: None)).listed_ok:
        assert time.monotonic() < deadline
        time.sleep(0.05)  # the list turn frees 0.5 s (real time) after the call returned
    (row,) = _rows(deps, "j-run")
    assert row.provider_status == GONE
