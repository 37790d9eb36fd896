"""vast.ai API faults on every endpoint the engine uses: 429, 5xx and timeouts.

Each run arms faults on search (bundles), create (asks), the listing, the SSH-key attach and
the destroy at once; each fault fires the first time the engine reaches that endpoint.
429 and 503 are retried by the SDK (5 attempts), so 6 faults make one whole call fail;
500 is not retried by the SDK, so 2 faults fail two calls. Timeouts come from a proxy that
forwards the request (the action happens) and withholds the reply past the client timeout.

The engine never calls ``GET /instances/<id>`` (show): everything comes from the listing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpubot.deps import EngineDeps
from gpubot.providers.vastai.provider import VastAIProvider
from gpubot.sim.server import SimServer
from tests.faults.conftest import (
    TERMINAL,
    LiveMonitor,
    assert_clean,
    inline_tick,
    instances_of,
    launch,
    wait_for,
)
from tests.faults.proxy import FaultProxy

ENDPOINTS = {
    "search": ("*", r"/bundles|/search/asks"),
    "create": ("PUT", r"/asks/\d+"),
    "list": ("GET", r"^/api/v1/instances/?$"),
    "attach_ssh": ("POST", r"/instances/\d+/ssh"),
    "destroy": ("DELETE", r"^/api/v0/instances/\d+/?$"),
}


@pytest.fixture
def proxy(sim: SimServer) -> Iterator[FaultProxy]:
    p = FaultProxy(sim.url, hang_s=1.5).start()
    yield p
    p.stop()


def _via_proxy(engine: EngineDeps, sim: SimServer, proxy: FaultProxy) -> None:
    provider = VastAIProvider(api_key=sim.api_key, server_url=proxy.url)
    provider._sdk.client.timeout = 0.5  # the SDK's default is 120 s per attempt
    engine.provider = provider


@pytest.mark.parametrize(
    "fault",
    [
        "429",
        "500",
        pytest.param("503", marks=pytest.mark.slow),
        pytest.param("timeout", marks=pytest.mark.slow),
    ],
)
def test_faults_on_every_endpoint_still_end_cleanly(
    fault: str,
    engine: EngineDeps,
    sim: SimServer,
    proxy: FaultProxy,
    live_monitor: LiveMonitor,
) -> None:
    # given a launched job (launch itself searches; its faults are the bot's, not the
    # engine's) and faults armed on every endpoint the engine uses
    job_id = launch(engine, "trainx steps=40 step_seconds=0.02")
    if fault == "timeout":
        _via_proxy(engine, sim, proxy)
        for name, (method, regex) in ENDPOINTS.items():
            # create: one attempt times out after vast created the instance (unknown outcome)
            proxy.hang(method, regex, 1 if name == "create" else 5)
    else:
        status = int(fault)
        count = 2 if status == 500 else 6
        for method, regex in ENDPOINTS.values():
            sim.control.inject(method, regex, status, count=count, retry_after=0.1)

    # when it runs
    job = wait_for(
        engine.sessions, job_id, until=lambda j: j.state in TERMINAL,
        tick=lambda: inline_tick(engine), timeout_s=120,
    )

    # then every fault fired and the job still succeeded on one rental, nothing leaked
    if fault == "timeout":
        assert proxy.pending() == 0
    else:
        assert sim.control.state()["injections"] == []
    assert job.state == "succeeded", job.reason
    assert_clean(engine.sessions, sim, job_id, monitor=live_monitor, attempts=1)


@pytest.mark.parametrize("status", [500, pytest.param(503, marks=pytest.mark.slow)])
def test_a_failing_listing_never_marks_anything_gone(
    status: int, engine: EngineDeps, sim: SimServer, live_monitor: LiveMonitor
) -> None:
    # given a running job
    job_id = launch(engine, "trainx steps=80 step_seconds=0.05")
    wait_for(
        engine.sessions, job_id, until=lambda j: j.state == "running",
        tick=lambda: inline_tick(engine),
    )
    # when the listing fails for several ticks (and the instance meanwhile is really gone
    # from nowhere: it still runs)
    per_tick = 5 if status == 503 else 1
    sim.control.inject("GET", ENDPOINTS["list"][1], status, count=per_tick * 4, retry_after=0.1)
    reports = [inline_tick(engine) for _ in range(4)]

    # then the ticks knew nothing, and nothing was presumed gone or interrupted
    assert [r.listed_ok for r in reports] == [False] * 4
    [row] = instances_of(engine.sessions, job_id)
    assert row.provider_status == "running" and row.destroyed_at is None
    job = wait_for(
        engine.sessions, job_id, until=lambda j: j.state in TERMINAL,
        tick=lambda: inline_tick(engine), timeout_s=90,
    )
    assert job.state == "succeeded", job.reason
    assert_clean(engine.sessions, sim, job_id, monitor=live_monitor, attempts=1)
