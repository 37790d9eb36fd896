"""Billing over a scripted timeline on a frozen clock (speed 0), against a hand calculation."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from vastai import VastAI

from gpubot.sim.server import SimServer
from tests.fixtures.sim import SshKey, make_ssh_key, ssh_connect, ssh_run

CENT = Decimal("0.01")
FINE = Decimal("0.000000001")


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with SimServer(home=tmp_path_factory.mktemp("billing"), speed=0.0, seed=7) as server:
        yield server


def test_compute_storage_bandwidth_to_the_cent(frozen: SimServer, tmp_path: Path) -> None:
    vast = VastAI(api_key=frozen.api_key, server_url=frozen.url)
    key: SshKey = make_ssh_key(tmp_path)
    offers = vast.search_offers("num_gpus=1 disk_space>=20", limit=1000)
    offer = max(offers, key=lambda o: o["inet_down_cost"] + o["inet_up_cost"])
    price, storage_cost = Decimal(repr(offer["dph_base"])), Decimal(repr(offer["storage_cost"]))
    down_cost, up_cost = (Decimal(repr(offer["inet_down_cost"])),
                          Decimal(repr(offer["inet_up_cost"])))
    iid = vast.create_instance(offer["id"], image="img", disk=20)["new_contract"]
    vast.attach_ssh(iid, key.public)

    frozen.control.advance(8)  # 3 s provisioning + 5 s loading: running now, nothing GPU-billed
    assert frozen.control.billing(iid)["compute_usd"] == "0E-10"
    client = ssh_connect(vast, iid, key)
    down_bytes, up_bytes = 20_000_000, 30_000_000
    assert ssh_run(client, "cat > /dev/null", stdin_data=b"d" * down_bytes)[0] == 0
    assert ssh_run(client, f"head -c {up_bytes} /dev/zero")[0] == 0
    client.close()
    frozen.control.advance(7200)  # 2 h running
    vast.stop_instance(iid)
    frozen.control.advance(3600)  # 1 h stopped: storage only
    vast.destroy_instance(iid)
    frozen.control.advance(3600)  # destroyed: nothing

    row = vast.show_instances()  # destroyed instance is gone from listings …
    assert iid not in {r["id"] for r in row}
    bill = frozen.control.billing(iid)  # … but its bill remains
    assert (bill["inet_down_bytes"], bill["inet_up_bytes"]) == (down_bytes, up_bytes)

    compute = price * 2
    storage = storage_cost * 20 / 720 * Decimal(8 + 7200 + 3600) / 3600
    bandwidth = (Decimal(down_bytes) * down_cost + Decimal(up_bytes) * up_cost) / 10**9
    for name, expected in (("compute_usd", compute), ("storage_usd", storage),
                           ("bandwidth_usd", bandwidth),
                           ("total_usd", compute + storage + bandwidth)):
        got = Decimal(bill[name])
        assert got.quantize(CENT) == expected.quantize(CENT), name
        assert abs(got - expected) < FINE, (name, got, expected)

    credit = Decimal(repr(vast.show_user()["credit"]))
    assert abs(credit - (Decimal(100) - compute - storage - bandwidth)) < Decimal("0.000001")

    charges = requests.get(
        f"{frozen.url}/api/v0/charges/", timeout=10,
        params={"select_filters": '{"type": {"in": ["instance"]}}'},
        headers={"Authorization": f"Bearer {frozen.api_key}"}).json()
    charge = next(c for c in charges["results"] if c["source"] == f"instance-{iid}")
    items = {i["type"]: Decimal(repr(i["amount"])) for i in charge["items"]}
    assert set(items) == {"gpu", "disk", "bwd", "bwu"}
    assert items["gpu"].quantize(CENT) == compute.quantize(CENT)
    assert (items["bwd"] + items["bwu"]).quantize(FINE) == bandwidth.quantize(FINE)
    assert {"start", "end", "amount", "type", "metadata"} <= set(charge)


def test_bid_instance_bills_its_bid(frozen: SimServer) -> None:
    vast = VastAI(api_key=frozen.api_key, server_url=frozen.url)
    offer = vast.search_offers("num_gpus=1", type="bid", order="dph+", limit=1)[0]
    bid = round(offer["min_bid"] + 0.05, 4)
    iid = vast.create_instance(offer["id"], image="img", disk=10, price=bid)["new_contract"]
    frozen.control.advance(8 + 1800)
    row = vast.show_instance(iid)
    assert row["dph_base"] == pytest.approx(bid)
    assert Decimal(frozen.control.billing(iid)["compute_usd"]).quantize(CENT) == (
        Decimal(repr(bid)) / 2).quantize(CENT)
    vast.destroy_instance(iid)
