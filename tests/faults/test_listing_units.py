"""The instance listing read defensively and in vast's units, against the simulator over HTTP
and PostgreSQL: one malformed row never stops a tick; bandwidth, compute and storage are
metered as the simulator bills them."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from vastai import VastAI
from werkzeug.wrappers import Request, Response

from bot.http import metrics_text
from gpubot.config import load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import InstanceRow, JobRow, LedgerEntryRow
from gpubot.deps import EngineDeps
from gpubot.engine.tick import reconcile_tick
from gpubot.models import JobState
from gpubot.providers.vastai.provider import VastAIProvider
from gpubot.settings import Settings
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from gpubot.testing.fakes import seed_instance, seed_job
from gpubot.wiring import build_engine_deps
from tests.faults.conftest import FAULT_TEMPLATES
from tests.faults.proxy import FaultProxy
from tests.fixtures.sim import make_ssh_key, ssh_connect, ssh_run

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]


class RewritingProxy(FaultProxy):
    """Forwards to the simulator; rows of instance listings pass through ``rewrite_row``."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.rewrite_row: Rewrite = lambda row: row

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        request = Request(environ)
        url = self.upstream + request.full_path.rstrip("?")
        reply = self._session.request(
            request.method, url, data=request.get_data(), timeout=30,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        body = reply.content
        if request.method == "GET" and re.search(r"/instances", request.path):
            data = reply.json()
            if isinstance(data.get("instances"), list):
                data["instances"] = [self.rewrite_row(r) for r in data["instances"]]
            elif isinstance(data.get("instances"), dict):
                data["instances"] = self.rewrite_row(data["instances"])
            body = json.dumps(data).encode()
        response = Response(body, status=reply.status_code)
        response.headers["Content-Type"] = "application/json"
        return response(environ, start_response)


@pytest.fixture
def frozen(tmp_path: Path) -> Iterator[SimServer]:
    """The simulator with its clock stopped: time moves only with ``control.advance``."""
    with SimServer(home=tmp_path / "sim", speed=0.0, seed=7) as server:
        yield server


@pytest.fixture
def proxy(frozen: SimServer) -> Iterator[RewritingProxy]:
    p = RewritingProxy(frozen.url).start()
    try:
        yield p  # type: ignore[misc]
    finally:
        p.stop()


@pytest.fixture
def deps(
    tmp_path: Path, frozen: SimServer, proxy: RewritingProxy, pg_url: str, s3_store: S3Store,
    monkeypatch: pytest.MonkeyPatch,
) -> EngineDeps:
    monkeypatch.setenv("GPUBOT_HOME", str(tmp_path / "home"))
    settings = Settings(
        GPUBOT_HOME=str(tmp_path / "home"), GPUBOT_DATABASE_URL=pg_url,
        VAST_API_KEY=frozen.api_key, VAST_URL=proxy.url, GPUBOT_S3_BUCKET=s3_store.bucket,
    )
    return build_engine_deps(
        settings,
        config=load_config_text(FAULT_TEMPLATES, name="faults.toml"),
        provider=VastAIProvider(api_key=frozen.api_key, server_url=proxy.url),
        store=s3_store,
        clock=lambda: datetime.fromtimestamp(frozen.engine.now(), UTC),
    )


def _ledger(deps: EngineDeps, instance_id: int, kind: str | None = None) -> Decimal:
    with session_scope(deps.sessions) as s:
        q = select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
            LedgerEntryRow.instance_id == instance_id
        )
        if kind is not None:
            q = q.where(LedgerEntryRow.kind == kind)
        return Decimal(s.scalar(q))


def _seed(deps: EngineDeps, vast: VastAI, iid: int, job_id: str, **offer: Any) -> int:
    row = vast.show_instance(iid)
    created = datetime.fromtimestamp(float(row["start_date"]), UTC)
    with session_scope(deps.sessions) as s:
        seed_job(s, job_id, state=JobState.RUNNING, created_at=created)
        inst = seed_instance(
            s, job_id, str(iid), price_per_hour_usd=str(row["dph_base"]),
            provider_status=None, created_at=created,
        )
        inst.storage_per_gb_month_usd = Decimal(repr(row["storage_cost"]))
        inst.disk_gb = int(row["disk_space"])
        inst.upload_per_gb_usd = Decimal(repr(row["inet_up_cost"]))
        inst.download_per_gb_usd = Decimal(repr(row["inet_down_cost"]))
        s.flush()
        return inst.id


def test_one_malformed_row_of_100_is_skipped_not_the_tick(
    deps: EngineDeps, frozen: SimServer, proxy: RewritingProxy
) -> None:
    vast = VastAI(api_key=frozen.api_key, server_url=frozen.url)
    ids = [int(frozen.control.create_instance(f"gpubot:j-{n:03d}")) for n in range(100)]
    rows = {iid: _seed(deps, vast, iid, f"j-{n:03d}") for n, iid in enumerate(ids)}
    bad = ids[37]

    def corrupt(row: dict[str, Any]) -> dict[str, Any]:
        if row.get("id") == bad:
            return {**row, "inet_up_billed": "1.5e6x", "dph_total": 1e12,
                    "status_msg": "x" * 100_000, "label": "\x1b" * 1000}
        return row

    proxy.rewrite_row = corrupt
    frozen.control.advance(600)
    claimed: list[str] = []
    report = reconcile_tick(deps, dispatch=lambda job_id, token: claimed.append(job_id))
    assert report.listed_ok and report.instances_seen == 100
    assert report.rows_rejected == 1
    assert len(claimed) == 100  # every job still advances, the bad one included
    with session_scope(deps.sessions) as s:
        by_provider = {r.provider_id: r for r in s.scalars(select(InstanceRow))}
        for iid in ids:
            row = by_provider[str(iid)]
            if iid == bad:
                # Known but unreadable: not gone, not destroyed, not metered this tick.
                assert row.provider_status is None and row.destroy_requested_at is None
                assert row.destroyed_at is None
            else:
                assert row.provider_status == "running"
        jobs = {j.id: j.state for j in s.scalars(select(JobRow))}
    assert set(jobs.values()) == {JobState.RUNNING.value}
    assert _ledger(deps, rows[bad]) == 0
    assert all(_ledger(deps, rows[iid], "storage") > 0 for iid in ids if iid != bad)
    assert "gpubot_provider_rows_rejected_total 1" in metrics_text(deps)

    # Once the row reads again, the skipped interval is metered: nothing is lost.
    proxy.rewrite_row = lambda row: row
    reconcile_tick(deps, dispatch=lambda job_id, token: None)
    with session_scope(deps.sessions) as s:
        healed = s.get(InstanceRow, rows[bad])
        assert healed is not None and healed.provider_status == "running"
        created = healed.created_at
        assert healed.metered_until == datetime.fromtimestamp(frozen.engine.now(), UTC)
        expected = (
            healed.storage_per_gb_month_usd * healed.disk_gb
            * Decimal((healed.metered_until - created).total_seconds()) / 720 / 3600
        )
    assert abs(_ledger(deps, rows[bad], "storage") - expected) < Decimal("0.00000002")
    assert "gpubot_provider_rows_rejected_total 1" in metrics_text(deps)


@pytest.mark.slow
def test_metering_matches_the_simulators_bill(
    deps: EngineDeps, frozen: SimServer, tmp_path: Path
) -> None:
    """An hour running with a 200 GB disk and 2 GB uploaded: compute + storage within a cent,
    bandwidth within 1 % of what the simulator charges (the simulator reports inet_*_billed
    in kilobytes, as vast does)."""
    vast = VastAI(api_key=frozen.api_key, server_url=frozen.url)
    offers = vast.search_offers("num_gpus=1 disk_space>=200", limit=1000)
    offer = max(offers, key=lambda o: o["storage_cost"] * (o["inet_up_cost"] > 0))
    iid = vast.create_instance(offer["id"], image="img", disk=200)["new_contract"]
    key = make_ssh_key(tmp_path / "key")
    vast.attach_ssh(iid, key.public)
    instance_id = _seed(deps, vast, iid, f"j-{uuid.uuid4().hex[:6]}")
    tick = lambda: reconcile_tick(deps, dispatch=lambda job_id, token: None)  # noqa: E731

    frozen.control.advance(8)  # 3 s provisioning + 5 s loading: running, not GPU-billed yet
    tick()
    client = ssh_connect(vast, iid, key)
    up_bytes = 2_000_000_000
    assert ssh_run(client, f"head -c {up_bytes} /dev/zero > /dev/stdout", timeout_s=300)[0] == 0
    client.close()
    for _ in range(6):
        frozen.control.advance(600)
        tick()

    bill = frozen.control.billing(iid)
    assert bill["inet_up_bytes"] >= up_bytes
    sim_bandwidth = Decimal(bill["bandwidth_usd"])
    ours_bandwidth = _ledger(deps, instance_id, "bandwidth")
    assert abs(ours_bandwidth - sim_bandwidth) <= sim_bandwidth / 100, (ours_bandwidth, bill)
    sim_cs = Decimal(bill["compute_usd"]) + Decimal(bill["storage_usd"])
    ours_cs = _ledger(deps, instance_id, "compute") + _ledger(deps, instance_id, "storage")
    assert abs(ours_cs - sim_cs) <= Decimal("0.01"), (ours_cs, sim_cs, bill)




PULL_DENIED = (
    "Error response from daemon: pull access denied for nosuch/image, repository does not "
    "exist or may require 'docker login': denied: requested access to the resource is denied"
)


def test_a_pull_error_fails_the_job_at_once_quoting_the_host(
    deps: EngineDeps, frozen: SimServer, proxy: RewritingProxy
) -> None:
    from tests.faults.conftest import inline_tick, job_row, launch, thread_texts

    def pull_denied(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "actual_status": "loading", "status_msg": PULL_DENIED,
                "ssh_host": None, "ssh_port": None, "ports": None}

    proxy.rewrite_row = pull_denied
    job_id = launch(deps, "/gpu trainx steps=5")
    inline_tick(deps)  # rents
    for _ in range(4):  # a minute in all: far below the 15 min boot deadline
        frozen.control.advance(15)
        inline_tick(deps)
    job = job_row(deps.sessions, job_id)
    assert job.outcome == JobState.FAILED.value, (job.state, job.phase_detail)
    assert PULL_DENIED in job.reason
    assert PULL_DENIED in thread_texts(deps.sessions, job_id)
    assert job.attempts == 1  # not re-rented: another host would fail the same way
