"""The pure parts: market generation and query semantics."""

from __future__ import annotations

import pytest

from gpubot.sim.market import DEFAULT_EPOCH, generate_offers, price_offer
from gpubot.sim.query import QueryError, decode_token, encode_token, filter_offers, sort_rows

PRICE_RANGES = {"RTX 3090": (0.09, 0.20), "RTX 4090": (0.15, 0.40), "A100 PCIE": (0.73, 1.61),
                "A100 SXM4": (0.73, 1.61), "H100 SXM": (0.90, 2.50), "H100 PCIE": (0.90, 2.50)}


def test_generation_is_deterministic_and_realistic() -> None:
    offers = generate_offers(1, 300)
    assert offers == generate_offers(1, 300) and offers != generate_offers(2, 300)
    assert len({o["id"] for o in offers}) == 300
    names = {o["gpu_name"] for o in offers}
    assert {"RTX 3090", "RTX 4090", "A100 PCIE", "A100 SXM4", "RTX A6000", "L40S",
            "Tesla V100", "RTX 3060"} <= names and names & {"H100 SXM", "H100 PCIE"}
    for o in offers:
        per_gpu = o["dph_base"] / o["num_gpus"]
        low, high = PRICE_RANGES.get(o["gpu_name"], (0.01, 3.0))
        assert low - 1e-9 <= per_gpu <= high + 1e-9, o["gpu_name"]
        assert 0 < o["min_bid"] < o["dph_base"]
        assert 0.80 <= o["reliability"] <= 0.999
        assert 0.05 <= o["storage_cost"] <= 0.30
        assert o["geolocation"][-4:-2] == ", " and o["geolocation"][-2:].isupper()
        assert o["dph_total"] == pytest.approx(o["dph_base"] + o["storage_cost"] * 5 / 720,
                                               abs=1e-6)
    assert 0.75 < sum(o["verification"] == "verified" for o in offers) / 300 < 0.99


def test_filters_coerce_strings_and_virtual_columns() -> None:
    offers = generate_offers(5, 200)
    now = DEFAULT_EPOCH
    rel = filter_offers(offers, {"reliability": {"gt": "0.97"}, "num_gpus": {"eq": "1"}}, now)
    assert rel and all(o["reliability"] > 0.97 and o["num_gpus"] == 1 for o in rel)
    assert len(rel) < len(offers)
    de = filter_offers(offers, {"geolocation": {"eq": "DE"}}, now)
    assert de and all(o["geolocation"].endswith(", DE") for o in de)
    gpus = filter_offers(offers, {"gpu_name": {"notin": ["RTX 3090", "RTX 4090"]},
                                  "cuda_vers": {"gte": "12.4"}}, now)
    assert gpus and all(o["gpu_name"] not in ("RTX 3090", "RTX 4090")
                        and o["cuda_max_good"] >= 12.4 for o in gpus)
    long_ = filter_offers(offers, {"duration": {"gte": 90 * 86400.0}}, now)
    assert long_ and all(o["end_date"] - now >= 90 * 86400 for o in long_)
    drivers = filter_offers(offers, {"driver_version": {"gte": 550000000}}, now)
    assert drivers and all(int(o["driver_version"].split(".")[0]) >= 550 for o in drivers)
    assert filter_offers(offers, {"rented": {"eq": True}}, now) == offers
    with pytest.raises(QueryError):
        filter_offers(offers, {"gpu_name": {"~": "A100"}}, now)


def test_sort_and_tokens() -> None:
    rows = [{"a": 2, "b": None}, {"a": 1, "b": 5}, {"a": None, "b": 1}]
    assert [r["a"] for r in sort_rows(rows, [["a", "asc"]], lambda r, c: r.get(c))] == [1, 2,
                                                                                          None]
    assert [r["a"] for r in sort_rows(rows, [{"col": "a", "dir": "desc"}],
                                      lambda r, c: r.get(c))] == [2, 1, None]
    assert decode_token(encode_token(50)) == 50
    with pytest.raises(QueryError):
        decode_token("nope")


def test_price_offer_for_bid_and_storage() -> None:
    offer = generate_offers(0, 1)[0]
    bid = price_offer(offer, allocated_storage_gb=100, offer_type="bid", now=DEFAULT_EPOCH)
    assert bid["dph_total"] == pytest.approx(offer["min_bid"] + offer["storage_cost"] * 100 / 720,
                                             abs=1e-6)
    assert bid["is_bid"] is True
