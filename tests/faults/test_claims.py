"""A step that outlives the claim lock keeps its claim (security finding 3).

Real prefork workers on Redis and PostgreSQL, the simulator over HTTP at speed 1, moto's S3.
The lock TTL is shortened to 4 s (``GPUBOT_LOCK_TTL_SECONDS``) and a step is made to take
longer than that in real time through a slow HTTP path (:class:`SlowProxy`): a slow S3 PUT of
every checkpoint file, or a slow ``PUT /asks/`` (the create). A second worker keeps ticking
and would take the job over if the first worker's claim ran out. The step must keep its
claim alive, so every upload, every create happens once and the job succeeds on one rental.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from gpubot.config import load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow
from gpubot.engine import steps
from gpubot.models import JobState
from gpubot.providers.vastai.provider import VastAIProvider
from gpubot.settings import Settings
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from gpubot.wiring import build_engine_deps
from tests.faults.conftest import (
    FAULT_TEMPLATES,
    TERMINAL,
    Cluster,
    LiveMonitor,
    assert_clean,
    inline_tick,
    instances_of,
    job_row,
    launch,
    sim_clock,
    wait_for,
)
from tests.faults.slow_proxy import SlowProxy

LOCK_TTL_S = "4"
CHECKPOINT_PUT = r"/checkpoints/checkpoint-[^/]+/(?!MANIFEST)"
RESULT_PUT = r"/results/(?!MANIFEST)"


@pytest.fixture
def sim_speed() -> float:
    return 1.0  # the workers run on the wall clock


@pytest.fixture
def s3_proxy(s3_env: str) -> Iterator[SlowProxy]:
    proxy = SlowProxy(s3_env).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def vast_proxy(sim: SimServer) -> Iterator[SlowProxy]:
    proxy = SlowProxy(sim.url).start()
    yield proxy
    proxy.stop()


def _skip_boot(sim: SimServer, cluster: Cluster, job_id: str) -> object:
    booted: set[str] = set()

    def on_poll(job: JobRow) -> None:
        if job.state != "booting":
            return
        for row in instances_of(cluster.sessions, job_id):
            if row.provider_id and row.provider_id not in booted:
                booted.add(row.provider_id)
                sim.control.advance(8)

    return on_poll


def _puts(proxy: SlowProxy, regex: str) -> Counter[str]:
    return Counter(p for m, p in proxy.seen if m == "PUT" and re.search(regex, p))


def test_a_checkpoint_upload_longer_than_the_lock_happens_once(
    cluster: Cluster, sim: SimServer, s3_proxy: SlowProxy, live_monitor: LiveMonitor
) -> None:
    # given workers whose S3 goes through a proxy that makes every checkpoint PUT take 5 s
    # (longer than the 4 s lock), and a second worker ready to take the job over
    cluster.env["GPUBOT_LOCK_TTL_SECONDS"] = LOCK_TTL_S
    cluster.env["AWS_ENDPOINT_URL"] = s3_proxy.url
    s3_proxy.delay("PUT", CHECKPOINT_PUT, 5.0, count=1000)
    cluster.worker("wa")
    cluster.worker("wb")
    job_id = launch(cluster.deps, "trainx steps=40 step_seconds=0.05 checkpoint_every=20")

    # when the job runs to its end
    job = wait_for(
        cluster.sessions, job_id, until=lambda j: j.state in TERMINAL, tick=cluster.tick,
        on_poll=_skip_boot(sim, cluster, job_id), timeout_s=150, pace_s=0.1,
    )

    # then it succeeded on one rental, each checkpoint and result file was uploaded once
    assert job.state == "succeeded", job.reason
    assert_clean(cluster.sessions, sim, job_id, monitor=live_monitor, attempts=1)
    checkpoints = _puts(s3_proxy, CHECKPOINT_PUT)
    results = _puts(s3_proxy, RESULT_PUT)
    assert checkpoints, s3_proxy.seen
    assert results, s3_proxy.seen
    assert max(checkpoints.values()) == 1, checkpoints
    assert max(results.values()) == 1, results
    assert job.results and len(job.results["files"]) == len(results)


def test_a_create_slower_than_the_lock_rents_once(
    cluster: Cluster, sim: SimServer, vast_proxy: SlowProxy, live_monitor: LiveMonitor
) -> None:
    # given workers whose vast calls go through a proxy that holds the create 10 s
    # before vast sees it, and a second worker ready to take the job over
    cluster.env["GPUBOT_LOCK_TTL_SECONDS"] = LOCK_TTL_S
    cluster.env["VAST_URL"] = vast_proxy.url
    vast_proxy.delay("PUT", r"/asks/\d+", 10.0, count=1)
    cluster.worker("wa")
    cluster.worker("wb")
    job_id = launch(cluster.deps, "trainx steps=20 step_seconds=0.05")

    # when the job runs
    wait_for(
        cluster.sessions, job_id, until=lambda j: j.state in TERMINAL, tick=cluster.tick,
        on_poll=_skip_boot(sim, cluster, job_id), timeout_s=120, pace_s=0.1,
    )

    # then exactly one create was sent and one instance exists on the simulator
    assert vast_proxy.count("PUT", r"/asks/\d+") == 1, vast_proxy.seen
    assert len(sim.control.billing()["instances"]) == 1
    assert_clean(cluster.sessions, sim, job_id, monitor=live_monitor, attempts=1)


def test_a_rerun_after_a_lost_step_skips_the_complete_checkpoint(
    tmp_path: Path,
    sim: SimServer,
    s3_store: S3Store,
    s3_proxy: SlowProxy,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    live_monitor: LiveMonitor,
) -> None:
    # given an in-process engine whose S3 traffic (and the instance's presigned PUTs) is counted
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_proxy.url)
    monkeypatch.setenv("GPUBOT_HOME", str(tmp_path / "home"))
    settings = Settings(
        GPUBOT_HOME=str(tmp_path / "home"), GPUBOT_DATABASE_URL=pg_url,
        VAST_API_KEY=sim.api_key, VAST_URL=sim.url, GPUBOT_S3_BUCKET=s3_store.bucket,
        GPUBOT_TICK_SECONDS=0.5,
    )
    deps = build_engine_deps(
        settings,
        config=load_config_text(FAULT_TEMPLATES, name="faults.toml"),
        provider=VastAIProvider(api_key=sim.api_key, server_url=sim.url),
        store=S3Store(s3_store.bucket, "gpubot/"),
        clock=sim_clock(sim),
    )
    # (collecting is normally chained into the step that sees the exit; unchained here so
    # the job stops in collecting, where the lost step is staged)
    monkeypatch.setattr(steps, "CHAINED_STATES", steps.CHAINED_STATES - {JobState.COLLECTING})
    job_id = launch(deps, "trainx steps=20 step_seconds=0.05 checkpoint_every=20")
    booted: set[str] = set()

    def skip_boot(job: JobRow) -> None:
        for row in instances_of(deps.sessions, job_id):
            if job.state == "booting" and row.provider_id and row.provider_id not in booted:
                booted.add(row.provider_id)
                sim.control.advance(8)

    job = wait_for(
        deps.sessions, job_id, until=lambda j: j.state in TERMINAL | {"collecting"},
        tick=lambda: inline_tick(deps), on_poll=skip_boot, timeout_s=90,
    )
    assert job.state == "collecting" and job.checkpoint_key, (job.state, job.reason)
    uploaded = _puts(s3_proxy, CHECKPOINT_PUT)
    assert uploaded and max(uploaded.values()) == 1

    # when the step that recorded the checkpoint is lost (its result dropped) and re-run
    with session_scope(deps.sessions) as session:
        session.execute(update(JobRow).where(JobRow.id == job_id).values(checkpoint_key=None))
    wait_for(
        deps.sessions, job_id, until=lambda j: j.state in TERMINAL,
        tick=lambda: inline_tick(deps), timeout_s=90,
    )

    # then the complete checkpoint already stored was not uploaded again
    assert _puts(s3_proxy, CHECKPOINT_PUT) == uploaded
    assert job_row(deps.sessions, job_id).state == "succeeded"
    assert_clean(deps.sessions, sim, job_id, monitor=live_monitor, attempts=1)
