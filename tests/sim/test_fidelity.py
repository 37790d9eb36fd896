"""Fidelity switches (gpubot/sim/settings.py) through real HTTP and the real vastai SDK.

Each test starts its own small simulator on a frozen clock (speed 0: only ``advance`` moves
time) so that switches and the clock of one test never leak into another.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from vastai import VastAI

from gpubot.sim.control import SimControlError
from gpubot.sim.server import SimServer
from gpubot.sim.settings import SimSettings, from_env, profile
from tests.fixtures.sim import make_ssh_key, run_until_running, ssh_connect, ssh_run

Frozen = tuple[SimServer, VastAI]


@pytest.fixture()
def frozen(tmp_path: Path) -> Iterator[Frozen]:
    with SimServer(home=tmp_path / "home", speed=0.0, seed=5, offer_count=60) as server:
        yield server, VastAI(api_key=server.api_key, server_url=server.url, retry=3)


def _cheapest_bid_offer(vast: VastAI) -> dict[str, Any]:
    return vast.search_offers("num_gpus=1", type="bid", order="dph+", limit=1)[0]


# 1. min_bid drift ------------------------------------------------------------------------

def test_min_bid_drifts_within_bounds_and_a_thin_bid_is_outbid(frozen: Frozen,
                                                               tmp_path: Path) -> None:
    sim, vast = frozen
    base = {o["id"]: o["min_bid"] for o in vast.search_offers("", type="bid", limit=1000)}
    sim.control.configure(min_bid_drift_pct=10, min_bid_drift_step_s=60)
    offer = _cheapest_bid_offer(vast)
    thin = vast.create_instance(offer["id"], image="img", disk=10, price=offer["min_bid"])
    fat_offer = vast.search_offers("num_gpus=1", type="bid", order="dph+", limit=2)[1]
    fat_bid = round(base[fat_offer["id"]] * 1.11 + 0.001, 4)
    fat = vast.create_instance(fat_offer["id"], image="img", disk=10, price=fat_bid)
    assert thin["success"] is True and fat["success"] is True
    seen: dict[int, set[float]] = {}
    outbid_at = None
    for step in range(1, 121):
        sim.control.advance(60)
        for o in vast.search_offers("", type="bid", limit=1000):
            assert abs(o["min_bid"] - base[o["id"]]) <= base[o["id"]] * 0.10 + 1e-4
            seen.setdefault(o["id"], set()).add(o["min_bid"])
        row = vast.show_instance(thin["new_contract"])
        if outbid_at is None and row["actual_status"] == "stopped":
            outbid_at = step
            assert row["status_msg"].startswith("outbid")
            assert row["cur_state"] == row["next_state"] == "stopped"
            assert row["min_bid"] > offer["min_bid"] and row["ports"] is None
            compute = sim.control.billing(thin["new_contract"])["compute_usd"]
    assert outbid_at is not None, "a bid at the current min_bid must be outbid within 2 h"
    assert sim.control.billing(thin["new_contract"])["compute_usd"] == compute
    assert vast.show_instance(fat["new_contract"])["actual_status"] == "running"
    assert sum(len(v) > 3 for v in seen.values()) > len(seen) / 2  # prices really move

    # deterministic: the same seed gives the same walk
    with SimServer(home=tmp_path / "twin", speed=0.0, seed=5, offer_count=60,
                   settings=SimSettings(min_bid_drift_pct=10)) as twin:
        v2 = VastAI(api_key=twin.api_key, server_url=twin.url)
        twin.control.advance(60 * 7 + 1)
        sim2 = {o["id"]: o["min_bid"] for o in v2.search_offers("", type="bid", limit=1000)}
    with SimServer(home=tmp_path / "twin2", speed=0.0, seed=5, offer_count=60,
                   settings=SimSettings(min_bid_drift_pct=10)) as twin2:
        v3 = VastAI(api_key=twin2.api_key, server_url=twin2.url)
        twin2.control.advance(60 * 7 + 1)
        sim3 = {o["id"]: o["min_bid"] for o in v3.search_offers("", type="bid", limit=1000)}
    assert sim2 == sim3 and sim2 != {k: v for k, v in base.items() if k in sim2}


# 2. destroyed rows linger ----------------------------------------------------------------

def test_destroyed_row_lingers_unloaded_without_billing_then_vanishes(frozen: Frozen) -> None:
    sim, vast = frozen
    sim.control.configure(destroyed_linger_s=120)
    iid = int(sim.control.create_instance("linger"))
    sim.control.advance(10)
    vast.destroy_instance(iid)
    row = vast.show_instance(iid)
    assert row is not None and row["cur_state"] == "unloaded"
    assert row["actual_status"] == "exited" and row["ports"] is None
    assert iid in {r["id"] for r in vast.show_instances()}
    billed = sim.control.billing(iid)["total_usd"]
    with pytest.raises(requests.HTTPError) as err:
        vast.destroy_instance(iid)
    assert err.value.response.status_code == 404
    assert err.value.response.json()["error"] == "no_such_instance"
    sim.control.advance(119)
    assert vast.show_instance(iid)["cur_state"] == "unloaded"
    assert sim.control.billing(iid)["total_usd"] == billed  # released: nothing accrues
    sim.control.advance(2)
    assert vast.show_instance(iid) is None
    assert iid not in {r["id"] for r in vast.show_instances()}
    r = requests.get(f"{sim.url}/api/v0/instances/{iid}/", timeout=10,
                     headers={"Authorization": f"Bearer {sim.api_key}"})
    assert r.json() == {"instances": None}


# 3. bandwidth counters in kilobytes ------------------------------------------------------

def test_bandwidth_counters_are_kilobytes_and_charges_stay_exact(frozen: Frozen,
                                                                 tmp_path: Path) -> None:
    sim, vast = frozen
    key = make_ssh_key(tmp_path / "key")
    iid = int(sim.control.create_instance("kb"))
    vast.attach_ssh(iid, key.public)
    run_until_running(sim, vast, iid)
    client = ssh_connect(vast, iid, key)
    try:
        assert ssh_run(client, "cat > /dev/null", stdin_data=b"d" * 2_500_000)[0] == 0
        assert ssh_run(client, "head -c 1234567 /dev/zero")[0] == 0
    finally:
        client.close()
    row = vast.show_instance(iid)
    bill = sim.control.billing(iid)
    down, up = bill["inet_down_bytes"], bill["inet_up_bytes"]
    assert down >= 2_500_000 and up >= 1_234_567  # plus the protocol's own few bytes
    assert row["inet_down_billed"] == float(down // 1000)
    assert row["inet_up_billed"] == float(up // 1000)
    offer = row
    expected = (Decimal(down) * Decimal(repr(offer["inet_down_cost"]))
                + Decimal(up) * Decimal(repr(offer["inet_up_cost"]))) / 10**9
    assert abs(Decimal(bill["bandwidth_usd"]) - expected) < Decimal("1e-10")
    sim.control.configure(bandwidth_unit="bytes")
    row = vast.show_instance(iid)
    assert (row["inet_down_billed"], row["inet_up_billed"]) == (down, up)


# 4. per-endpoint minimum intervals -------------------------------------------------------

def test_rate_limits_429_without_retry_after_and_count_violations(frozen: Frozen) -> None:
    sim, vast = frozen
    sim.control.configure(rate_limits_real_s={"list": 0.6, "create": 30})
    vast.show_instances()
    # SDK: 3 attempts 0.15 s + 0.225 s apart, all inside 0.6 s -> HTTPError 429
    with pytest.raises(requests.HTTPError) as err:
        vast.show_instances()
    assert err.value.response.status_code == 429
    assert "Retry-After" not in err.value.response.headers
    assert sim.control.rate_limits()["violations"]["list"] == 3
    # 5 attempts span 0.15+0.225+0.34 s = 0.71 s > 0.6 s: the last one gets through
    assert isinstance(VastAI(api_key=sim.api_key, server_url=sim.url, retry=5)
                      .show_instances(), list)

    headers = {"Authorization": f"Bearer {sim.api_key}"}
    shapes = set()
    for _ in range(3):
        r = requests.get(f"{sim.url}/api/v1/instances/", headers=headers, timeout=10)
        assert r.status_code == 429 and "Retry-After" not in r.headers
        assert "threshold=0.6" in r.text
        shapes.add(r.headers["Content-Type"])
    assert shapes == {"text/plain", "application/json"}  # plain text sometimes, as reported

    # a client pacing itself at the interval breaks it zero times after the first call
    sim.control.reset_rate_limits()
    for i in range(3):
        if i:
            time.sleep(0.65)  # client-side pacing (the behaviour under test), not a state wait
        vast.show_instances()
    assert sim.control.rate_limits()["violations"].get("list", 0) == 0
    assert sim.control.rate_limits()["calls"]["list"] == 3

    # count-only mode: violations are counted, calls answered
    sim.control.configure(rate_limit_enforce=False)
    vast.show_instances()
    vast.show_instances()
    stats = sim.control.rate_limits()
    assert stats["violations"]["list"] >= 1 and stats["rejected"].get("list", 0) == 0


# 5. daily search quota -------------------------------------------------------------------

def test_daily_search_quota_is_not_retried_and_resets_at_utc_midnight(frozen: Frozen) -> None:
    sim, vast = frozen
    sim.control.configure(search_quota_per_day=2)
    now = sim.control.advance(0)
    midnight = (int(now) // 86400 + 1) * 86400
    used = sim.control.rate_limits()["search_quota"]["used"]
    for _ in range(max(0, 2 - used)):
        vast.search_offers("num_gpus=1", limit=1)
    sim.control.reset_rate_limits()
    with pytest.raises(requests.HTTPError) as err:
        vast.search_offers("num_gpus=1", limit=1)
    resp = err.value.response
    assert resp.status_code == 429 and resp.json()["error"] == "search_quota_exceeded"
    assert int(resp.headers["X-RateLimit-Reset"]) == midnight
    assert sim.control.rate_limits()["calls"]["search"] == 1  # the SDK never retried
    sim.control.advance(midnight - now + 1)
    assert vast.search_offers("num_gpus=1", limit=1)


# 6. telemetry gaps -----------------------------------------------------------------------

def test_telemetry_gaps_fractions_and_window(frozen: Frozen) -> None:
    sim, vast = frozen
    iid = int(sim.control.create_instance("tele"))
    run_until_running(sim, vast, iid)
    assert vast.show_instance(iid)["gpu_temp"] == 35.0  # a normal idle sample
    sim.control.telemetry_gap(iid, 60, "null")
    row = vast.show_instance(iid)
    assert row["gpu_util"] is None and row["gpu_temp"] is None
    sim.control.advance(61)
    assert vast.show_instance(iid)["gpu_util"] == 0.0
    assert vast.show_instance(iid)["gpu_temp"] == 35.0

    sim.control.configure(gpu_util_null_fraction=0.3, gpu_util_zero_fraction=0.2,
                          telemetry_sample_s=10)
    kinds = {"null": 0, "zero": 0, "ok": 0}
    for _ in range(200):
        sim.control.advance(10)
        row = vast.show_instance(iid)
        if row["gpu_util"] is None:
            kinds["null"] += 1
        elif row["gpu_temp"] == 0.0:
            assert row["gpu_util"] == 0.0 and row["mem_usage"] == 0.0
            kinds["zero"] += 1
        else:
            kinds["ok"] += 1
    assert 40 <= kinds["null"] <= 80 and 20 <= kinds["zero"] <= 60, kinds
    assert all(isinstance(r["duration"], float) for r in vast.show_instances())


# 7. slow and failing image pulls ---------------------------------------------------------

def test_slow_pull_and_pull_errors(frozen: Frozen) -> None:
    sim, vast = frozen
    sim.control.configure(loading_s=600, pull_error_pattern=r"does-not-exist")
    slow = int(sim.control.create_instance("slow"))
    sim.control.advance(3 + 599)
    assert vast.show_instance(slow)["actual_status"] == "loading"
    sim.control.advance(2)
    assert vast.show_instance(slow)["actual_status"] == "running"

    offer = vast.search_offers("num_gpus=1", order="dph+", limit=1)[0]
    bad = vast.create_instance(offer["id"], image="acme/does-not-exist:v1", disk=10)
    iid = bad["new_contract"]
    sim.control.advance(3 + 5)
    row = vast.show_instance(iid)
    assert row["actual_status"] == "exited" and row["intended_status"] == "running"
    assert row["status_msg"] == ("Error response from daemon: manifest for "
                                 "acme/does-not-exist:v1 not found: manifest unknown: "
                                 "manifest unknown")
    assert row["ssh_port"] is None
    sim.control.advance(3600)
    bill = sim.control.billing(iid)
    assert Decimal(bill["compute_usd"]) == 0 and Decimal(bill["storage_usd"]) > 0

    # a one-shot failure by control call, then a start pulls again and succeeds
    once = int(sim.control.create_instance("once"))
    sim.control.advance(4)
    sim.control.fail_pull(once)
    sim.control.advance(5)
    assert vast.show_instance(once)["status_msg"].startswith("Error response from daemon")
    vast.start_instance(once)
    sim.control.advance(600)
    assert vast.show_instance(once)["actual_status"] == "running"


# 8. the low-bid reply as an HTTP error ---------------------------------------------------

def test_low_bid_reply_as_error_status_still_carries_new_contract(frozen: Frozen) -> None:
    sim, vast = frozen
    offer = _cheapest_bid_offer(vast)
    sim.control.configure(low_bid_status=400)
    with pytest.raises(requests.HTTPError) as err:
        vast.create_instance(offer["id"], image="img", disk=10, price=offer["min_bid"] / 2)
    body = err.value.response.json()
    assert err.value.response.status_code == 400
    assert body["success"] is False and body["error"] == "insufficient_bid"
    row = vast.show_instance(body["new_contract"])
    assert row["actual_status"] == "stopped" and row["is_bid"] is True
    sim.control.advance(3600)
    assert Decimal(sim.control.billing(body["new_contract"])["storage_usd"]) > 0
    vast.destroy_instance(body["new_contract"])

    sim.control.configure(low_bid_status=200)
    offer = _cheapest_bid_offer(vast)
    reply = vast.create_instance(offer["id"], image="img", disk=10, price=offer["min_bid"] / 2)
    assert reply["success"] is False and reply["new_contract"]


# switches: profile, env, flags, run-time validation ---------------------------------------

def test_profiles_env_and_runtime_validation(frozen: Frozen) -> None:
    sim, _ = frozen
    realistic = profile("realistic")
    assert realistic.min_bid_drift_pct > 0 and realistic.destroyed_linger_s > 0
    assert realistic.rate_limits_real_s["create"] > 0 and realistic.search_quota_per_day > 0
    assert realistic.low_bid_status >= 400 and realistic.loading_s >= 60
    assert SimSettings().bandwidth_unit == "kb"
    env = from_env({"GPUBOT_SIM_PROFILE": "realistic",
                    "GPUBOT_SIM_RATE_LIMITS_REAL_S": "create=9,list=0.5",
                    "GPUBOT_SIM_RATE_LIMIT_ENFORCE": "false"})
    assert env.rate_limits_real_s == {"create": 9.0, "list": 0.5}
    assert env.rate_limit_enforce is False and env.min_bid_drift_pct == 10
    for bad in ({"bandwidth_unit": "mb"}, {"rate_limits_real_s": {"nope": 1}},
                {"no_such_switch": 1}, {"low_bid_status": 302}):
        with pytest.raises(SimControlError) as err:
            sim.control.configure(**bad)
        assert err.value.status == 400
    assert sim.control.configure(profile="realistic")["low_bid_status"] == 400
    assert sim.control.settings() == realistic.to_json()


def test_main_accepts_profile_and_switch_flags(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from gpubot.sim.server import main; "
         "sys.exit(main(sys.argv[1:]))", "--home", str(tmp_path), "--offers", "20",
         "--profile", "realistic", "--destroyed-linger-s", "42"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]
        from gpubot.sim.control import SimControl

        settings = SimControl(url, "sim-local-key").settings()
        assert settings["destroyed_linger_s"] == 42.0
        assert settings["low_bid_status"] == 400  # from the profile
        proc.terminate()
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
