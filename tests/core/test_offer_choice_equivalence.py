"""The fast offer choice makes the same decisions as the old filter + sort + re-check.

Golden decisions come from ``reference_offer_choice.py``, a frozen copy of ``gpubot/offers.py``
and of vast offer parsing from before the speed-up. A deterministic market of 2,000 offers
(seeded, parsed from vast-shaped rows by both parsers) plus hand-made edge cases (ties on price
and reliability, duplicate ids, ``min_bid`` above ``dph_base``, no ``dph_base``, bad data,
blocked hosts) is run against 30 seeded requirement sets, each under several rental policies
and both rankings. Same offer (the same object), rental type, bid, reason; or the same
NoOfferError message.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from gpubot import offers as new
from gpubot.errors import NoOfferError
from gpubot.models import InterruptibleMode, Offer, OfferRanking, RentalType, Requirements
from gpubot.providers.vastai.parsing import offer_from_vast
from tests.core import reference_offer_choice as ref

SEED = 20261201
GPUS = [
    ("RTX 3060", 12_288, 860, (0.03, 0.09)),
    ("RTX 3090", 24_576, 860, (0.08, 0.20)),
    ("RTX 4090", 24_564, 890, (0.15, 0.40)),
    ("A100 SXM4", 81_920, 800, (0.80, 1.60)),
    ("H100 SXM", 81_559, 900, (1.50, 2.60)),
]
HOSTS = [str(h) for h in range(100, 160)]


def _row(rng: random.Random, i: int) -> dict[str, Any]:
    """A vast-shaped on-demand search row; prices on a coarse grid so ties are common."""
    name, ram_mb, cc, (lo, hi) = rng.choice(GPUS)
    num = rng.choice([1, 1, 1, 2, 4, 8])
    base = round(rng.uniform(lo, hi) * num, 2)
    storage_cost = rng.choice([0.1, 0.15, 0.2, 0.3])
    storage_hour = round(storage_cost * 30 / 720, 6)
    min_bid = round(base * rng.choice([0.3, 0.5, 0.7, 0.95, 1.0, 1.2]), 3)
    row: dict[str, Any] = {
        "id": 1_000_000 + i,
        "gpu_name": name,
        "num_gpus": num,
        "gpu_ram": ram_mb,
        "dph_total": round(base + storage_hour, 6),
        "dph_base": base,
        "min_bid": min_bid,
        "storage_cost": storage_cost,
        "inet_up_cost": rng.choice([0.0, 0.002, 0.005]),
        "inet_down_cost": rng.choice([0.0, 0.003, 0.0085]),
        "reliability": rng.choice([0.9, 0.95, 0.97, 0.99, 0.995, 0.999]),
        "cuda_max_good": rng.choice([11.8, 12.2, 12.4, 12.6]),
        "compute_cap": cc,
        "dlperf": round(rng.uniform(10, 300), 1),
        "hosting_type": rng.choice([0, 0, 1]),
        "verification": rng.choice(["verified", "verified", "unverified"]),
        "host_id": int(rng.choice(HOSTS)),
        "machine_id": 10_000 + i,
        "disk_space": rng.choice([16.0, 50.0, 100.0, 500.0]),
        "geolocation": rng.choice(["Texas, US", "Quebec, CA", None]),
        "inet_down": rng.choice([100.0, 500.0, 1000.0, 5000.0]),
    }
    roll = rng.random()
    if roll < 0.05:
        del row["dph_base"]  # no compute price: the bid caps at dph_total
    elif roll < 0.08:
        del row["min_bid"]  # falls back to dph_total: no bid can save
    elif roll < 0.10:
        row["datacenter"] = rng.random() < 0.5  # the SDK's bool wins over hosting_type
    elif roll < 0.12:
        row["dph_total"] = str(row["dph_total"])  # strings parse too
        row["gpu_ram"] = float(ram_mb)
    elif roll < 0.13:
        row["reliability"] = None
        row["reliability2"] = 0.98
    return row


def _bad_rows() -> list[dict[str, Any]]:
    good = {
        "id": 7, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24_564, "dph_total": 0.3,
        "dph_base": 0.29, "min_bid": 0.1, "reliability": 0.99, "cuda_max_good": 12.4,
        "compute_cap": 890, "dlperf": 90.0, "verification": "verified", "host_id": 1,
        "disk_space": 100.0, "inet_down": 1000.0,
    }
    changes: list[dict[str, Any]] = [
        {"dph_total": 0.0}, {"dph_total": -1.0}, {"min_bid": -0.1}, {"reliability": 1.5},
        {"reliability": float("nan")}, {"dlperf": float("inf")}, {"gpu_ram": 0},
        {"num_gpus": 0}, {"dph_total": "nan"}, {"dph_total": None}, {"gpu_name": ""},
        {"id": None}, {"min_bid": float("inf")}, {"dph_base": float("nan")},
        {"num_gpus": 2**60}, {"compute_cap": 890.0}, {"host_id": 12.0}, {"hosting_type": "1"},
        {"verified": True, "verification": None}, {"datacenter": 1, "hosting_type": 1},
        {"storage_cost": -0.0}, {"storage_cost": "0.10"}, {"inet_up_cost": True},
        {"min_bid": 0.3, "dph_base": 0.25},  # min_bid above dph_base
        {"min_bid": 0.01, "dph_base": 0.02, "dph_total": 0.021},  # bid == dph_base: no saving
        {"min_bid": 0.01, "dph_base": 0.021, "dph_total": 0.022},  # bid just below: saves
    ]
    rows = [{**good, **c, "id": c.get("id", 900 + n)} for n, c in enumerate(changes)]
    rows.append({k: v for k, v in good.items() if k != "id"} | {"ask_contract_id": 950})
    return rows


def _parse(parser: Any, row: dict[str, Any]) -> Offer | str:
    try:
        return parser(row)
    except Exception as e:  # noqa: BLE001 - the kind of failure is what is compared
        return type(e).__name__


def _market() -> list[Offer]:
    rng = random.Random(SEED)
    rows = [_row(rng, i) for i in range(2_000)] + _bad_rows()
    out: list[Offer] = []
    for row in rows:
        parsed = _parse(offer_from_vast, row)
        if isinstance(parsed, Offer):
            out.append(parsed)
    # exact price ties (reliability decides, then the id) on every 4th offer; then one
    # duplicated id (input order decides) and a price equal in value but not in exponent
    for n, offer in enumerate(out[::4]):
        out.append(Offer(**{**_fields(offer), "offer_id": f"0{n}",
                            "reliability": rng.choice([0.95, 0.99, offer.reliability])}))
    twin = out[0]
    out.append(Offer(**{**_fields(twin), "offer_id": twin.offer_id + "b"}))
    out.append(Offer(**{**_fields(twin)}))
    out.append(Offer(**{**_fields(twin), "offer_id": "0", "host_id": HOSTS[0]}))
    out.append(Offer(**{**_fields(twin), "price_per_hour_usd": Decimal("0.10"),
                        "compute_per_hour_usd": Decimal("0.1")}))
    return out


def _fields(offer: Offer) -> dict[str, Any]:
    return {name: getattr(offer, name) for name in Offer.__dataclass_fields__}


def _requirements(rng: random.Random, i: int) -> Requirements:
    names = tuple(rng.sample([g[0] for g in GPUS], rng.choice([0, 0, 1, 2, 3])))
    cap = rng.choice([None, None, Decimal("0.05"), Decimal("0.2"), Decimal("0.5"), Decimal("3")])
    if i == 0:
        return Requirements()
    if i == 1:  # nothing can match: the no-offer message with a closest miss
        return Requirements(gpu_names=("H100 SXM",), num_gpus=8, max_price_per_hour_usd=cap)
    return Requirements(
        gpu_names=names,
        num_gpus=rng.choice([1, 1, 2, 4, 8]),
        min_gpu_ram_gb=rng.choice([0.0, 16.0, 24.0, 40.0]),
        min_cuda=rng.choice([0.0, 12.1, 12.4]),
        min_compute_cap=rng.choice([0, 800, 890]),
        min_reliability=rng.choice([0.0, 0.95, 0.99]),
        max_price_per_hour_usd=cap,
        datacenter_only=rng.random() < 0.3,
        disk_gb=rng.choice([10, 20, 60, 200]),
        verified_only=rng.random() < 0.7,
        min_inet_down_mbps=rng.choice([0.0, 500.0]),
        blocked_host_ids=frozenset(rng.sample(HOSTS, rng.choice([0, 3, 30]))),
    )


MARKET = _market()
REQS = [_requirements(random.Random(SEED + i), i) for i in range(30)]
POLICIES = [  # (mode, expected hours, checkpoints)
    (InterruptibleMode.AUTO, 8.0, True),
    (InterruptibleMode.AUTO, 8.0, False),
    (InterruptibleMode.YES, 1.0, False),
    (InterruptibleMode.NO, 8.0, True),
]


def _decide(module: Any, offers: Sequence[Offer], req: Requirements, policy: tuple[Any, ...],
            ranking: OfferRanking) -> tuple[Any, ...]:
    mode, hours, ckpt = policy
    try:
        c = module.choose_rental(offers, req, mode=mode, expected_hours=hours, checkpoints=ckpt,
                                 ranking=ranking, checkpoint_every="100 steps")
    except NoOfferError as e:
        return ("no offer", str(e))
    return (id(c.offer), c.rental_type, c.bid_per_hour_usd, str(c.bid_per_hour_usd), c.reason)


def test_parsing_gives_the_same_offers() -> None:
    rng = random.Random(SEED)
    rows = [_row(rng, i) for i in range(2_000)] + _bad_rows()
    for row in rows:
        old, fast = _parse(ref.offer_from_vast, row), _parse(offer_from_vast, row)
        # repr: equal field by field, Decimal exponents included (0.10 vs 0.1), NaN too
        assert repr(fast) == repr(old), row
        if isinstance(old, Offer):
            assert type(fast) is Offer
            for name in Offer.__dataclass_fields__:
                assert type(getattr(fast, name)) is type(getattr(old, name)), (name, row)


def test_the_market_has_the_edge_cases() -> None:
    assert len(MARKET) > 2_000
    assert any(o.min_bid_per_hour_usd > (o.compute_per_hour_usd or 0) for o in MARKET)
    assert any(o.compute_per_hour_usd is None for o in MARKET)
    assert any(math.isnan(o.reliability) for o in MARKET)
    prices = [(o.price_per_hour_usd, o.reliability) for o in MARKET]
    assert len(set(prices)) < len(prices) - 100  # many exact ties


@pytest.mark.parametrize("index", range(len(REQS)))
def test_same_decisions(index: int) -> None:
    req = REQS[index]
    rng = random.Random(SEED * 31 + index)
    small = rng.sample(MARKET, 40)
    for p, policy in enumerate(POLICIES):
        ranking = (OfferRanking.PRICE, OfferRanking.DLPERF_PER_USD)[(index + p) % 2]
        for offers in (MARKET, small, small[:1], []):
            assert _decide(new, offers, req, policy, ranking) == _decide(
                ref, offers, req, policy, ranking
            )


@pytest.mark.parametrize("index", range(0, len(REQS), 3))
def test_same_qualifying_offers_and_reasons(index: int) -> None:
    req = REQS[index]
    candidates = new._candidates(MARKET, req)
    for rental_type in RentalType:
        fast = {id(o) for _, o in new._priced(candidates, req, rental_type)}
        old = {id(o) for o in MARKET if not ref._failures(o, req, rental_type)}
        assert fast == old
        for offer in MARKET[::7]:
            failures = ref._failures(offer, req, rental_type)
            assert new._failures(offer, req, rental_type) == failures
            assert new._failed_categories(offer, req, rental_type) == [c for c, _ in failures]
            assert new.offer_matches(offer, req, rental_type=rental_type) == ref.offer_matches(
                offer, req, rental_type=rental_type
            )


def test_the_no_offer_message_is_unchanged_and_names_the_closest() -> None:
    req = REQS[1]
    decision = _decide(new, MARKET, req, POLICIES[0], OfferRanking.PRICE)
    assert decision[0] == "no offer"
    assert "Closest:" in decision[1]
    assert decision == _decide(ref, MARKET, req, POLICIES[0], OfferRanking.PRICE)
