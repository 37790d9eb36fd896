"""State survives a restart on the same home; processes do not."""

from __future__ import annotations

import json
from pathlib import Path

from vastai import VastAI

from gpubot.sim.server import SimServer
from gpubot.sim.settings import SimSettings
from tests.fixtures.sim import make_ssh_key, run_until_running, ssh_connect, ssh_run


def test_restart_keeps_instances_files_and_billing(tmp_path: Path) -> None:
    key = make_ssh_key(tmp_path / "key")
    home = tmp_path / "home"
    with SimServer(home=home, seed=3) as first:
        vast = VastAI(api_key=first.api_key, server_url=first.url)
        offers_before = [o["id"] for o in vast.search_offers("num_gpus=1", limit=1000)]
        iid = int(first.control.create_instance("gpubot:persist"))
        stopped = int(first.control.create_instance("gpubot:stopped"))
        vast.attach_ssh(iid, key.public)
        run_until_running(first, vast, iid)
        vast.stop_instance(stopped)
        client = ssh_connect(vast, iid, key)
        ssh_run(client, "echo hello > kept.txt; nohup sleep 300 >/dev/null 2>&1 &")
        client.close()
        assert first.control.instance_processes(iid)
        old_port = vast.show_instance(iid)["ssh_port"]
        first.control.advance(3600)
        spent = first.control.billing(iid)["total_usd"]
    assert (home / "sim" / "state.json").is_file()

    with SimServer(home=home, seed=3) as second:
        vast = VastAI(api_key=second.api_key, server_url=second.url)
        row = run_until_running(second, vast, iid)
        assert row["label"] == "gpubot:persist" and row["ssh_port"] != old_port
        assert vast.show_instance(stopped)["actual_status"] == "stopped"
        assert second.control.instance_processes(iid) == []
        assert float(second.control.billing(iid)["total_usd"]) >= float(spent)
        client = ssh_connect(vast, iid, key)
        assert ssh_run(client, "cat kept.txt") == (0, "hello\n", "")
        client.close()
        offers_after = {o["id"] for o in vast.search_offers("num_gpus=1", limit=1000)}
        rented = {row["ask_contract_id"], vast.show_instance(stopped)["ask_contract_id"]}
        assert offers_after == set(offers_before) - rented  # market and rentals persisted
        vast.destroy_instance(iid)
        vast.destroy_instance(stopped)


def test_restart_keeps_lingering_rows_quota_and_the_drift(tmp_path: Path) -> None:
    """A host reboot keeps contracts, files, lingering destroyed rows, today's search count
    and the min_bid walk (a function of seed and simulated time); switches are start options."""
    settings = SimSettings(destroyed_linger_s=600, search_quota_per_day=3, min_bid_drift_pct=10)
    home = tmp_path / "home"
    with SimServer(home=home, seed=3, speed=0.0, offer_count=30, settings=settings) as first:
        vast = VastAI(api_key=first.api_key, server_url=first.url)
        gone = int(first.control.create_instance("gone"))
        loading = int(first.control.create_instance("loading"))
        first.control.advance(4)
        vast.destroy_instance(gone)
        vast.search_offers("num_gpus=1", limit=1)
        first.control.advance(300)
        prices = {o["id"]: o["min_bid"] for o in vast.search_offers("", type="bid", limit=100)}
    with SimServer(home=home, seed=3, speed=0.0, offer_count=30, settings=settings) as second:
        vast = VastAI(api_key=second.api_key, server_url=second.url)
        assert vast.show_instance(gone)["cur_state"] == "unloaded"
        assert vast.show_instance(loading)["actual_status"] == "running"
        again = {o["id"]: o["min_bid"] for o in vast.search_offers("", type="bid", limit=100)}
        assert again == prices  # same simulated step, same walk
        assert second.control.rate_limits()["search_quota"]["used"] == 3
        second.control.advance(300)
        assert vast.show_instance(gone) is None


def test_the_state_file_holds_every_instance_as_it_is_now(tmp_path: Path) -> None:
    """Destroyed instances and the offers are encoded once and their text reused: the file
    must still say exactly what a full encoding says, after later changes too. The clock is
    frozen (speed 0): a running clock settles the live row between the save and the compare."""
    with SimServer(home=tmp_path / "home", seed=3, speed=0.0) as sim:
        engine = sim.engine
        kept = int(sim.control.create_instance("gpubot:kept"))
        gone = int(sim.control.create_instance("gpubot:gone"))
        engine.destroy(gone)
        sim.control.advance(60)  # saves, with the destroyed row's text cached

        def full_encoding() -> dict[str, object]:
            return json.loads(json.dumps({
                "offers": list(engine.offers.values()),
                "instances": [i.to_json() for i in engine.instances.values()],
            }))

        def on_file() -> dict[str, object]:
            data = json.loads(engine.state_path.read_text())
            return {"offers": data["offers"], "instances": data["instances"]}

        assert on_file() == full_encoding()
        # a late byte count on the destroyed row, then the live one changes: both on file
        engine.instances[gone].bytes_up += 5
        sim.control.advance(60)
        assert on_file() == full_encoding()
        assert {i["id"] for i in on_file()["instances"]} == {kept, gone}  # type: ignore[union-attr]
