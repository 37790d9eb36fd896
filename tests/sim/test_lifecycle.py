"""Lifecycle: provisioning → loading → running, stop/start, outbid, host offline, gpu_util."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from vastai import VastAI

from gpubot.sim.server import SimServer
from tests.fixtures.sim import SshKey, run_until_running, ssh_connect, ssh_run, wait_for


def _bid_instance(sim: SimServer, vast: VastAI, key: SshKey) -> tuple[int, float]:
    offer = vast.search_offers("num_gpus=1", type="bid", order="dph+", limit=1)[0]
    bid = round(offer["min_bid"] * 1.1, 4)
    reply = vast.create_instance(offer["id"], image="img", disk=10, price=bid)
    assert reply["success"] is True
    vast.attach_ssh(reply["new_contract"], key.public)
    return reply["new_contract"], bid


def test_states_follow_the_clock(sim: SimServer, vast: VastAI) -> None:
    instance_id = int(sim.control.create_instance("states"))
    assert vast.show_instance(instance_id)["actual_status"] is None
    sim.control.advance(3.5)
    row = vast.show_instance(instance_id)
    assert row["actual_status"] == "loading" and row["ssh_port"] is None
    sim.control.advance(5)
    row = wait_for(lambda: (r := vast.show_instance(instance_id))["ssh_port"] and r)
    assert row["actual_status"] == "running" and row["intended_status"] == "running"

    vast.stop_instance(instance_id)
    row = vast.show_instance(instance_id)
    assert (row["actual_status"], row["cur_state"], row["intended_status"]) == (
        "stopped", "stopped", "stopped")
    assert row["ports"] is None and row["ssh_port"] is None
    vast.start_instance(instance_id)
    assert vast.show_instance(instance_id)["actual_status"] == "loading"
    sim.control.advance(6)
    assert vast.show_instance(instance_id)["actual_status"] == "running"

    sim.control.set_offline(instance_id)
    row = vast.show_instance(instance_id)
    assert row["actual_status"] == "offline" and row["ssh_port"] is None
    sim.control.set_offline(instance_id, "unknown")
    assert vast.show_instance(instance_id)["actual_status"] == "unknown"
    vast.destroy_instance(instance_id)


def test_outbid_pauses_kills_processes_keeps_files(sim: SimServer, vast: VastAI,
                                                  ssh_key: SshKey) -> None:
    instance_id, bid = _bid_instance(sim, vast, ssh_key)
    run_until_running(sim, vast, instance_id)
    client = ssh_connect(vast, instance_id, ssh_key)
    ssh_run(client, "echo kept > file.txt; nohup sleep 300 >/dev/null 2>&1 &")
    wait_for(lambda: sim.control.instance_processes(instance_id), what="sleep running")
    client.close()

    sim.control.outbid(instance_id)
    row = vast.show_instance(instance_id)
    assert row["is_bid"] is True
    assert row["actual_status"] == row["cur_state"] == row["next_state"] == "stopped"
    assert row["intended_status"] == "stopped" and row["ports"] is None
    assert row["min_bid"] > bid
    assert sim.control.instance_processes(instance_id) == []
    before = sim.control.billing(instance_id)
    sim.control.advance(3600)
    after = sim.control.billing(instance_id)
    assert after["compute_usd"] == before["compute_usd"]
    assert float(after["storage_usd"]) > float(before["storage_usd"])

    vast.start_instance(instance_id)  # still outbid: stays paused ("scheduling")
    sim.control.advance(10)
    assert vast.show_instance(instance_id)["actual_status"] == "stopped"
    vast.change_bid(instance_id, price=row["min_bid"] + 0.01)
    row = run_until_running(sim, vast, instance_id)
    client = ssh_connect(vast, instance_id, ssh_key)
    assert ssh_run(client, "cat file.txt") == (0, "kept\n", "")
    client.close()
    vast.destroy_instance(instance_id)


def test_random_outbids_at_configured_rate(tmp_path: Path) -> None:
    with SimServer(home=tmp_path, speed=3600.0, outbid_rate_per_hour=50.0,
                   offer_count=40) as fast:
        v = VastAI(api_key=fast.api_key, server_url=fast.url)
        offer = v.search_offers("num_gpus=1", type="bid", order="dph+", limit=1)[0]
        iid = v.create_instance(offer["id"], image="img", disk=10,
                                price=offer["min_bid"] * 1.1)["new_contract"]
        wait_for(lambda: v.show_instance(iid)["actual_status"] == "running"
                 or v.show_instance(iid)["status_msg"].startswith("outbid"), timeout_s=20)
        row = wait_for(lambda: (r := v.show_instance(iid))["status_msg"].startswith("outbid")
                       and r, timeout_s=20, what="random outbid")
        assert row["actual_status"] == "stopped"


def test_gpu_util_follows_processes_and_nvidia_smi(sim: SimServer, vast: VastAI,
                                                   ssh_key: SshKey) -> None:
    instance_id = int(sim.control.create_instance("util"))
    vast.attach_ssh(instance_id, ssh_key.public)
    run_until_running(sim, vast, instance_id)
    client = ssh_connect(vast, instance_id, ssh_key)
    query = ("nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total,name "
             "--format=csv,noheader,nounits")
    try:
        wait_for(lambda: vast.show_instance(instance_id)["gpu_util"] == 0.0)
        ssh_run(client, "nohup sleep 300 >/dev/null 2>&1 &")
        wait_for(lambda: sim.control.instance_processes(instance_id), what="sleep started")
        sim.control.advance(0)
        assert vast.show_instance(instance_id)["gpu_util"] < 20  # sleeping ≈ idle
        ssh_run(client, "nohup bash -c 'while :; do :; done' >/dev/null 2>&1 &")
        high = wait_for(lambda: (u := vast.show_instance(instance_id)["gpu_util"]) > 50 and u,
                        what="busy loop shows as gpu_util")
        util, used, total, name = ssh_run(client, query)[1].strip().split(", ")
        assert int(util) > 50 and int(used) > 0 and name == vast.show_instance(
            instance_id)["gpu_name"]
        assert abs(int(util) - high) <= 50 and int(total) > int(used)
        listing = ssh_run(client, "nvidia-smi -L")[1]
        assert listing.startswith("GPU 0: ") and "UUID: GPU-" in listing
        ssh_run(client, "echo 42 > .sim/gpu_util")
        wait_for(lambda: vast.show_instance(instance_id)["gpu_util"] == 42.0,
                 what="override file")
        assert ssh_run(client, query)[1].split(", ")[0] == "42"
    finally:
        client.close()
        vast.destroy_instance(instance_id)


def test_a_gpu_sample_racing_the_destroy_of_its_instance_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampler runs outside the engine's lock; a destroy removes the instance's files
    between its check and its write (found in a 1000-job month: the simulator's tick failed
    with FileNotFoundError)."""
    from gpubot.sim import procs

    root = tmp_path / "root"
    (root / ".sim").mkdir(parents=True)
    real_write = Path.write_text

    def destroyed_meanwhile(self: Path, *args: Any, **kwargs: Any) -> int:
        shutil.rmtree(root)
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", destroyed_meanwhile)
    procs.write_gpu_state(root, util=50.0, mem_total_mb=24000, name="RTX 4090", count=1,
                          uuid_prefix="GPU-sim")
    assert not root.exists()
