"""Two real prefork workers on one Redis broker and one PostgreSQL database.

A PostgreSQL trigger records every change of a job's ``lock_token``: exclusive claims show up
as ``NULL -> T`` followed by ``T -> NULL`` (or ``T -> T'``: a claim exchanged for its
execution token by the same holder). Two holders at once would show up as ``T -> T'`` with
an unreleased ``T``, i.e. a ``NULL -> X`` while a token is held; the check below rejects it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from gpubot.db.engine import session_scope
from gpubot.db.queries import claim_due_jobs
from gpubot.db.tables import JobRow
from gpubot.sim.server import SimServer
from tests.faults.conftest import TERMINAL, Cluster, LiveMonitor, assert_clean, launch, wait_for

TRIGGER = """
CREATE TABLE lock_audit (
    id bigserial PRIMARY KEY, job_id text, old_token text, new_token text,
    at timestamptz DEFAULT clock_timestamp()
);
CREATE FUNCTION audit_lock() RETURNS trigger AS $$
BEGIN
    IF OLD.lock_token IS DISTINCT FROM NEW.lock_token THEN
        INSERT INTO lock_audit (job_id, old_token, new_token)
        VALUES (NEW.id, OLD.lock_token, NEW.lock_token);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER jobs_lock_audit AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION audit_lock();
"""


@pytest.fixture
def sim_speed() -> float:
    return 1.0


def _install_trigger(cluster: Cluster) -> None:
    with session_scope(cluster.sessions) as session:
        session.execute(text(TRIGGER))


def _assert_exclusive_claims(cluster: Cluster, job_id: str) -> int:
    """Every claim is released (or exchanged by its holder) before the next one; returns the
    number of claims."""
    with session_scope(cluster.sessions) as session:
        rows = session.execute(
            text("SELECT old_token, new_token FROM lock_audit WHERE job_id = :j ORDER BY id"),
            {"j": job_id},
        ).all()
    held: str | None = None
    claims = 0
    for old, new in rows:
        assert old == held, f"job {job_id}: lock moved from {old} while {held} was held"
        if old is None:
            claims += 1
        held = new
    assert held is None, f"job {job_id} left locked"
    return claims


def test_two_workers_share_ticks_without_double_handling(
    cluster: Cluster, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    # given two workers (two pool processes each) and a long lock TTL: no takeover is legal
    cluster.env["GPUBOT_LOCK_TTL_SECONDS"] = "300"
    _install_trigger(cluster)
    workers = [cluster.worker("wa", concurrency=2), cluster.worker("wb", concurrency=2)]
    jobs = [
        launch(cluster.deps, f"trainx steps=40 step_seconds=0.05 lr=0.0{i + 1}")
        for i in range(2)
    ]
    advanced = set()

    def tick() -> None:
        # both workers take ticks at the same moments: racing claims
        cluster._last_tick = 0.0
        cluster.tick()
        cluster._last_tick = 0.0
        cluster.tick()
        state = sim.control.state()
        for inst in state["instances"]:
            if inst["actual_status"] in (None, "loading") and inst["id"] not in advanced:
                advanced.add(inst["id"])
                sim.control.advance(8)

    # when they all run
    for job_id in jobs:
        wait_for(
            cluster.sessions, job_id, until=lambda j: j.state in TERMINAL, tick=tick,
            timeout_s=120, pace_s=0.15,
        )

    # then each job succeeded on one rental, claims never overlapped, both workers worked
    for job_id in jobs:
        assert_clean(cluster.sessions, sim, job_id, monitor=live_monitor, attempts=1)
        assert _assert_exclusive_claims(cluster, job_id) > 3
    for w in workers:
        assert "advance_job_task" in w.log() and "succeeded in" in w.log(), w.log_tail()


def test_a_claim_delivered_twice_runs_its_step_once(
    cluster: Cluster, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    """A redelivered or duplicated ``advance_job_task`` message carries the same claim token;
    both deliveries must not rent (found by this test: both did, before ``take_claim``)."""
    cluster.env["GPUBOT_LOCK_TTL_SECONDS"] = "300"
    _install_trigger(cluster)
    cluster.worker("wa", concurrency=2)
    cluster.worker("wb", concurrency=2)
    job_id = launch(cluster.deps, "trainx steps=20 step_seconds=0.05")
    with session_scope(cluster.sessions) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        job.state = "renting"  # as if the queued step had run
    with session_scope(cluster.sessions) as session:
        claimed = claim_due_jobs(session, now=datetime.now(UTC))
    assert [j for j, _ in claimed] == [job_id]
    token = claimed[0][1]

    # when the same claim is delivered twice at once
    for _ in range(2):
        cluster.client.send_task(
            "workers.tasks.advance_job_task", args=[job_id, token], task_id=uuid.uuid4().hex
        )
    advanced = set()

    def tick() -> None:
        cluster.tick()
        for inst in sim.control.state()["instances"]:
            if inst["actual_status"] in (None, "loading") and inst["id"] not in advanced:
                advanced.add(inst["id"])
                sim.control.advance(8)

    wait_for(
        cluster.sessions, job_id, until=lambda j: j.state in TERMINAL, tick=tick,
        timeout_s=90, pace_s=0.1,
    )

    # then one rental only
    assert_clean(cluster.sessions, sim, job_id, monitor=live_monitor, attempts=1)
    _assert_exclusive_claims(cluster, job_id)
