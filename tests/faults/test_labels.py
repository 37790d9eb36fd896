"""One label per rental attempt (security finding 7): a crash during re-renting adopts the new
rental, never the previous attempt's instance that is being destroyed.

Real prefork workers on Redis and PostgreSQL, the simulator at speed 1 with destroyed rows
lingering in the listing (``destroyed_linger_s``, as vast keeps them with ``cur_state``
``unloaded``). The first rental is outbid; while the job re-rents, the SSH-key attach right
after the create answers 429 with ``Retry-After: 3``, so the worker is SIGKILLed after the
create call and before the step applied. A fresh worker must adopt the new instance by its
label and never the old one.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from gpubot.db.tables import JobRow
from gpubot.sim.server import SimServer
from tests.faults.conftest import (
    TERMINAL,
    Cluster,
    LiveMonitor,
    assert_clean,
    instances_of,
    launch,
    wait_for,
)


@pytest.fixture
def sim_speed() -> float:
    return 1.0  # the workers run on the wall clock


def test_a_crash_while_re_renting_adopts_the_new_instance_not_the_destroyed_one(
    cluster: Cluster, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    # given destroyed rows that stay listed, and a job running on its first rental
    sim.control.configure(destroyed_linger_s=3600)
    first = cluster.worker("w1")
    job_id = launch(cluster.deps, "trainx steps=4000 step_seconds=0.05 checkpoint_every=1000")
    booted: set[str] = set()

    def skip_boot(job: object) -> None:
        if getattr(job, "state", "") != "booting":
            return
        for row in instances_of(cluster.sessions, job_id):
            if row.provider_id and row.provider_id not in booted and first.proc is None:
                booted.add(row.provider_id)
                sim.control.advance(8)

    def skip_first_boot(job: object) -> None:
        if getattr(job, "state", "") == "booting" and not booted:
            for row in instances_of(cluster.sessions, job_id):
                if row.provider_id:
                    booted.add(row.provider_id)
                    sim.control.advance(8)

    wait_for(
        cluster.sessions, job_id, until=lambda j: j.state == "running", tick=cluster.tick,
        on_poll=skip_first_boot, timeout_s=60, pace_s=0.05,
    )
    old_id = next(r.provider_id for r in instances_of(cluster.sessions, job_id) if r.provider_id)

    # when it is outbid, and the worker dies after re-renting's create, before its apply
    sim.control.inject("POST", r"^/api/v0/instances/\d+/ssh/?$", 429, count=1, retry_after=3)
    sim.control.outbid(old_id)
    wait_for(
        cluster.sessions, job_id,
        until=lambda j: j.state == "re_renting" and not sim.control.state()["injections"],
        tick=cluster.tick, timeout_s=60, pace_s=0.01,
    )
    first.kill()
    created = sorted(int(i) for i in sim.control.billing()["instances"])
    assert len(created) == 2, created
    new_id = str(created[-1])
    listed = {str(i["id"]) for i in sim.control.state()["instances"]}
    assert old_id not in listed  # destroyed, yet still in vast's listing (lingering)

    cluster.worker("w2")
    job = wait_for(
        cluster.sessions, job_id, until=lambda j: j.state in TERMINAL | {"running"},
        tick=cluster.tick, on_poll=skip_boot, timeout_s=90,
    )

    # then the new instance was adopted, every simulator instance has a record, one label each
    rows = instances_of(cluster.sessions, job_id)
    recorded = {r.provider_id for r in rows if r.provider_id}
    assert {str(i) for i in created} <= recorded, (created, recorded)
    assert job.state == "running", (job.state, job.reason)
    current = [r for r in rows if r.provider_id and r.destroy_requested_at is None]
    assert [r.provider_id for r in current] == [new_id]
    labels = {r.provider_id: r.label for r in rows if r.provider_id}
    assert labels[old_id].endswith(f"{job_id}:1") and labels[new_id].endswith(f"{job_id}:2")

    # and the job still ends cleanly once the old row has left the listing
    sim.control.configure(destroyed_linger_s=0)
    with cluster.deps.sessions() as session:
        session.execute(update(JobRow).where(JobRow.id == job_id).values(cancel_requested=True))
        session.commit()
    wait_for(
        cluster.sessions, job_id, until=lambda j: j.state in TERMINAL, tick=cluster.tick,
        timeout_s=90,
    )
    assert_clean(
        cluster.sessions, sim, job_id, monitor=live_monitor, attempts=2,
        states=frozenset({"cancelled"}),
    )
