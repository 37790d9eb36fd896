"""The official vastai SDK (``VastAI``) against the simulator over real HTTP and real SSH."""

from __future__ import annotations

import pytest
import requests
from vastai import VastAI

from gpubot.sim.server import SimServer
from tests.fixtures.sim import SshKey, run_until_running, ssh_connect, ssh_run


def test_search_semantics(vast: VastAI) -> None:
    offers = vast.search_offers("gpu_name in [RTX_4090,A100_PCIE] num_gpus=1 reliability>0.9",
                                order="dph+", limit=500)
    assert offers and {o["gpu_name"] for o in offers} <= {"RTX 4090", "A100 PCIE"}
    assert all(o["num_gpus"] == 1 and o["reliability"] > 0.9 for o in offers)
    assert [o["dph_total"] for o in offers] == sorted(o["dph_total"] for o in offers)

    us = vast.search_offers("geolocation in [US,CA] datacenter=true duration>=3", limit=500)
    assert us and all(o["geolocation"][-2:] in ("US", "CA") for o in us)
    assert all(o["hosting_type"] == 1 and o["datacenter"] for o in us)
    assert all(o["duration"] >= 3 * 86400 for o in us)

    others = vast.search_offers("geolocation notin [US] gpu_name != RTX_3090", limit=500)
    assert others and all(not o["geolocation"].endswith(", US") for o in others)
    assert all(o["gpu_name"] != "RTX 3090" for o in others)

    unverified = vast.search_offers("verified=false", limit=500)
    assert unverified and all(o["verification"] != "verified" for o in unverified)


def test_bid_pricing_and_allocated_storage(vast: VastAI) -> None:
    on_demand = vast.search_offers("gpu_name=RTX_3090", order="dph+", limit=500, storage=5)
    bid = {o["id"]: o for o in vast.search_offers("gpu_name=RTX_3090", order="dph+", limit=500,
                                                  type="bid", storage=5)}
    big = {o["id"]: o for o in vast.search_offers("gpu_name=RTX_3090", limit=500, storage=40)}
    for o in on_demand:
        storage_5 = o["storage_cost"] * 5 / 720
        assert o["dph_total"] == pytest.approx(o["dph_base"] + storage_5, abs=1e-6)
        assert bid[o["id"]]["dph_total"] == pytest.approx(o["min_bid"] + storage_5, abs=1e-6)
        assert o["min_bid"] < o["dph_base"]
        if o["id"] in big:
            assert big[o["id"]]["storage_total_cost"] == pytest.approx(
                o["storage_cost"] * 40 / 720, abs=1e-6)


def test_create_ssh_and_destroy(sim: SimServer, vast: VastAI, ssh_key: SshKey) -> None:
    offer = vast.search_offers("num_gpus=1 reliability>0.95", order="dph+", limit=1)[0]
    reply = vast.create_instance(offer["id"], image="pytorch/pytorch", disk=20, ssh=True,
                                 direct=True, label="gpubot:sdk", env={"FOO": "bar"})
    assert reply["success"] is True
    instance_id = reply["new_contract"]
    row = vast.show_instance(instance_id)
    assert row["actual_status"] is None and row["ssh_port"] is None and row["ports"] is None
    assert row["extra_env"] == {"FOO": "bar"} and row["is_bid"] is False
    assert vast.ssh_url(instance_id) == ""
    vast.attach_ssh(instance_id, ssh_key.public)
    row = run_until_running(sim, vast, instance_id)
    assert row["ssh_host"] == "127.0.0.1"
    assert row["ports"]["22/tcp"][0]["HostPort"] == str(row["ssh_port"])
    client = ssh_connect(vast, instance_id, ssh_key)
    try:
        assert ssh_run(client, "python3 -c 'print(1)'") == (0, "1\n", "")
        status, out, _ = ssh_run(client, 'echo "$FOO $GPUBOT_SIM_INSTANCE"; '
                                 'printf %s "${GPUBOT_REMOTE_ROOT:-/workspace}"')
        root = out.splitlines()[1]
        assert out.splitlines()[0] == f"bar {instance_id}"
        assert root.endswith(f"sim/instances/{instance_id}/root")
    finally:
        client.close()
    assert vast.destroy_instance(instance_id)["success"] is True
    assert vast.show_instance(instance_id) is None
    with pytest.raises(requests.HTTPError) as err:
        vast.destroy_instance(instance_id)
    assert err.value.response.status_code == 404
    assert err.value.response.json()["error"] == "no_such_instance"


def test_taken_or_unknown_offer_is_404_no_such_ask(vast: VastAI) -> None:
    offer = vast.search_offers("num_gpus=1", order="dph+", limit=1)[0]
    first = vast.create_instance(offer["id"], image="img", disk=10)
    try:
        for offer_id in (offer["id"], 424242):
            with pytest.raises(requests.HTTPError) as err:
                vast.create_instance(offer_id, image="img", disk=10)
            assert err.value.response.status_code == 404
            assert err.value.response.json()["error"] == "no_such_ask"
    finally:
        vast.destroy_instance(first["new_contract"])


def test_low_bid_creates_stopped_instance(vast: VastAI) -> None:
    offer = vast.search_offers("num_gpus=1", type="bid", order="dph+", limit=1)[0]
    reply = vast.create_instance(offer["id"], image="img", disk=10, price=offer["min_bid"] / 2)
    assert reply["success"] is False and reply["new_contract"]
    row = vast.show_instance(reply["new_contract"])
    assert row["is_bid"] is True and row["actual_status"] == "stopped"
    assert row["cur_state"] == "stopped" and row["ports"] is None
    vast.destroy_instance(reply["new_contract"])


def test_paging_labels_and_filters(sim: SimServer, vast: VastAI) -> None:
    ids = [sim.control.create_instance(f"gpubot:page{i % 3}") for i in range(27)]
    ids.append(sim.control.create_instance(None))
    try:
        rows = vast.show_instances()
        assert [str(r["id"]) for r in rows if str(r["id"]) in ids] == ids  # ascending, paged
        page1 = vast.show_instances_v1({"select_filters": {}, "limit": 25,
                                        "order_by": [{"col": "id", "dir": "asc"}]})
        assert len(page1["instances"]) == 25 and page1["next_token"]
        assert page1["total_instances"] >= 28
        assert page1["label_counts"]["gpubot:page0"] == 9 and page1["label_counts"][""] >= 1
        page2 = vast.show_instances_v1({"select_filters": {}, "limit": 25,
                                        "after_token": page1["next_token"]})
        assert page2["next_token"] is None
        labelled = vast.show_instances_v1(
            {"select_filters": {"label": {"in": ["gpubot:page1", None]}}, "limit": 25})
        assert {r["label"] for r in labelled["instances"]} == {"gpubot:page1", None}
        cols = vast.show_instances_v1({"select_cols": ["id", "label", "nope"], "limit": 2})
        assert set(cols["instances"][0]) == {"id", "label", "nope"}
        with pytest.raises(requests.HTTPError) as err:
            vast.show_instances_v1({"select_filters": {"dph_total": {"gt": 1}}})
        assert err.value.response.status_code == 400
        with pytest.raises(requests.HTTPError):
            vast.show_instances_v1({"after_token": "garbage!"})
        legacy = requests.get(f"{sim.url}/api/v0/instances/", timeout=10,
                              headers={"Authorization": f"Bearer {sim.api_key}"}).json()
        assert legacy["instances_found"] >= 28
    finally:
        for i in ids:
            vast.destroy_instance(int(i))


def test_label_keys_user_and_filters(sim: SimServer, vast: VastAI, ssh_key: SshKey) -> None:
    vast.create_ssh_key(ssh_key.public)
    assert any(k["public_key"] == ssh_key.public for k in vast.show_ssh_keys())
    instance_id = int(sim.control.create_instance("a"))
    try:
        vast.label_instance(instance_id, "b")
        assert vast.show_instance(instance_id)["label"] == "b"
        # account keys present at create let you in without attach_ssh
        run_until_running(sim, vast, instance_id)
        client = ssh_connect(vast, instance_id, ssh_key)
        client.close()
        user = vast.show_user()
        assert user["credit"] < 100.0 and user["email"]
        assert requests.get(f"{sim.url}/api/v0/gpu_names/unique/", timeout=10).json()[
            "gpu_names"]
        filters = requests.get(f"{sim.url}/api/v0/instances/filters/", timeout=10,
                               headers={"Authorization": f"Bearer {sim.api_key}"}).json()
        assert any(f["actual_status"] == "running" for f in filters["filters"])
    finally:
        vast.destroy_instance(instance_id)
