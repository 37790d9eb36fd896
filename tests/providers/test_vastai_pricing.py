"""Prices end to end over real HTTP: search -> plan -> create -> what the simulator charges.

vast's ``type=bid`` search reports ``dph_total = min_bid + storage``, which is not an on-demand
price. The bot searches the on-demand market and takes the interruptible floor
from each row's ``min_bid``; these tests hold the plan's price to the simulator's billing.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gpubot import offers
from gpubot.models import InterruptibleMode, LaunchSpec, RentalChoice, RentalType, Requirements
from gpubot.providers.vastai import VastAIProvider
from gpubot.sim.market import HOURS_PER_MONTH
from gpubot.sim.server import SimServer
from tests.fixtures.sim import running_sim

KEY = "sk-gpubot-pricing-test"
DISK_GB = 40
REQ = Requirements(min_reliability=0.0, verified_only=False, disk_gb=DISK_GB)


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimServer]:
    with running_sim(tmp_path, monkeypatch, seed=11, speed=1.0, api_key=KEY) as server:
        yield server


@pytest.fixture
def provider(sim: SimServer) -> VastAIProvider:
    return VastAIProvider(api_key=KEY, server_url=sim.url, retry_attempts=3)


def _market_row(sim: SimServer, offer_id: str) -> dict[str, Any]:
    return dict(sim.engine.offers[int(offer_id)])


def test_interruptible_search_is_priced_on_demand(
    provider: VastAIProvider, sim: SimServer
) -> None:
    on_demand = {o.offer_id: o for o in provider.search_offers(REQ, interruptible=False)}
    for offer in provider.search_offers(REQ, interruptible=True):
        row = _market_row(sim, offer.offer_id)
        storage = Decimal(str(row["storage_cost"])) * DISK_GB / HOURS_PER_MONTH
        assert offer.compute_per_hour_usd == Decimal(str(row["dph_base"]))
        assert offer.min_bid_per_hour_usd == Decimal(str(row["min_bid"]))
        assert abs(offer.price_per_hour_usd - (offer.compute_per_hour_usd + storage)) < Decimal(
            "0.000001"
        ), "dph_total of an on-demand search: dph_base + storage"
        if offer.offer_id in on_demand:
            assert offer.price_per_hour_usd == on_demand[offer.offer_id].price_per_hour_usd


def test_interruptible_price_cap_is_not_applied_to_on_demand_prices(
    provider: VastAIProvider,
) -> None:
    market = provider.search_offers(REQ, interruptible=False)
    cheapest_bid = min(market, key=lambda o: o.min_bid_per_hour_usd)
    cap = (cheapest_bid.min_bid_per_hour_usd * 2).quantize(Decimal("0.001"))
    assert cap < cheapest_bid.price_per_hour_usd or any(o.price_per_hour_usd > cap for o in market)
    capped = Requirements(
        min_reliability=0.0, verified_only=False, disk_gb=DISK_GB, max_price_per_hour_usd=cap
    )
    found = provider.search_offers(capped, interruptible=True)
    assert any(o.price_per_hour_usd > cap for o in found), "bid offers above the cap on-demand"
    assert all(o.min_bid_per_hour_usd <= cap for o in found)


def _rent_and_measure(provider: VastAIProvider, sim: SimServer, choice: RentalChoice) -> Decimal:
    """$/h the simulator bills the rental while it runs (compute + storage over one hour)."""
    spec = LaunchSpec(
        image="pytorch/pytorch:latest",
        disk_gb=DISK_GB,
        label="gpubot:pricing",
        ssh_public_key="",
        bid_per_hour_usd=choice.bid_per_hour_usd,
    )
    instance_id = provider.create_instance(choice.offer, spec)
    sim.control.advance(10)  # provisioning + loading: running from here
    before = sim.control.billing(instance_id)
    sim.control.advance(3600)
    after = sim.control.billing(instance_id)
    assert after["compute_usd"] != before["compute_usd"], "running and billed"
    return sum(
        (Decimal(after[k]) - Decimal(before[k]) for k in ("compute_usd", "storage_usd")),
        Decimal(0),
    )


def _within_1pct(planned: Decimal, charged: Decimal) -> bool:
    return abs(planned - charged) <= charged / 100


def test_on_demand_plan_price_is_the_charge_rate(provider: VastAIProvider, sim: SimServer) -> None:
    """``interruptible=auto`` on a long job that cannot resume goes on-demand: the plan must
    quote the on-demand dph_total (seen: the bid-search price, less than half of it)."""
    market = provider.search_offers(REQ, interruptible=True)
    choice = offers.choose_rental(
        market, REQ, mode=InterruptibleMode.AUTO, expected_hours=10, checkpoints=False
    )
    assert choice.rental_type is RentalType.ON_DEMAND
    assert choice.reason.startswith(f"On-demand at ${choice.offer.price_per_hour_usd}/h")
    charged = _rent_and_measure(provider, sim, choice)
    assert _within_1pct(choice.price_per_hour_usd, charged), (choice.price_per_hour_usd, charged)


def test_interruptible_plan_price_is_the_charge_rate(
    provider: VastAIProvider, sim: SimServer
) -> None:
    market = provider.search_offers(REQ, interruptible=True)
    choice = offers.choose_rental(
        market, REQ, mode=InterruptibleMode.YES, expected_hours=1, checkpoints=True
    )
    assert choice.rental_type is RentalType.INTERRUPTIBLE
    bid = choice.bid_per_hour_usd
    assert bid is not None
    offer = choice.offer
    assert bid >= max(offer.min_bid_per_hour_usd * Decimal("1.15"), offer.min_bid_per_hour_usd)
    assert offer.compute_per_hour_usd is not None and bid < offer.compute_per_hour_usd
    # The reason quotes the real numbers: our bid and the offer's on-demand price.
    assert f"${bid}/h" in choice.reason
    assert f"on-demand ${offer.price_per_hour_usd}/h" in choice.reason
    charged = _rent_and_measure(provider, sim, choice)
    assert _within_1pct(choice.price_per_hour_usd, charged), (choice.price_per_hour_usd, charged)
