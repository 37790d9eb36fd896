"""Offer choice: filter, rank, re-check, and the on-demand vs interruptible matrix."""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal

import pytest

from gpubot.commands.types import ResourceOverrides
from gpubot.config import load_config
from gpubot.errors import NoOfferError
from gpubot.models import (
    InterruptibleMode,
    Offer,
    OfferRanking,
    RentalType,
    Requirements,
)
from gpubot.offers import (
    bid_for,
    choose_rental,
    decide_rental_type,
    offer_matches,
    policy_from,
    rank_offers,
    requirements_from,
)

# (gpu name, gpu ram GB, $/h low, $/h high, dlperf range, compute cap): the 2025/26 market
_MARKET = [
    ("RTX 3090", 24.0, "0.09", "0.20", (40, 55), 860),
    ("RTX 4090", 24.0, "0.15", "0.40", (80, 110), 890),
    ("A100 PCIE", 40.0, "0.73", "1.61", (100, 140), 800),
    ("A100 SXM4", 80.0, "0.80", "1.61", (120, 160), 800),
    ("H100 SXM", 80.0, "0.90", "2.60", (200, 260), 900),
    ("RTX 3080", 10.0, "0.06", "0.12", (25, 35), 860),
]


def make_offer(i: int = 0, **kw: object) -> Offer:
    base = dict(
        offer_id=f"o{i}",
        gpu_name="RTX 4090",
        num_gpus=1,
        gpu_ram_gb=24.0,
        price_per_hour_usd=Decimal("0.30"),
        min_bid_per_hour_usd=Decimal("0.15"),
        storage_per_gb_month_usd=Decimal("0.15"),
        upload_per_gb_usd=Decimal("0.005"),
        download_per_gb_usd=Decimal("0.003"),
        reliability=0.99,
        cuda_max=12.4,
        compute_cap=890,
        dlperf=100.0,
        datacenter=True,
        verified=True,
        host_id=f"h{i}",
        machine_id=f"m{i}",
        disk_space_gb=200.0,
    )
    base.update(kw)
    return Offer(**base)  # type: ignore[arg-type]


def market(n: int = 240, seed: int = 7) -> list[Offer]:
    rng = random.Random(seed)
    offers = []
    for i in range(n):
        name, ram, lo, hi, (plo, phi), cc = _MARKET[i % len(_MARKET)]
        price = Decimal(str(round(rng.uniform(float(lo), float(hi)), 4)))
        min_bid = (price * Decimal(str(round(rng.uniform(0.3, 0.7), 2)))).quantize(
            Decimal("0.0001")
        )
        offers.append(
            make_offer(
                i,
                gpu_name=name,
                gpu_ram_gb=ram,
                num_gpus=rng.choice([1, 1, 1, 2, 4]),
                price_per_hour_usd=price,
                min_bid_per_hour_usd=min_bid,
                reliability=round(rng.uniform(0.85, 0.999), 3),
                cuda_max=rng.choice([11.8, 12.0, 12.2, 12.4, 12.6]),
                compute_cap=cc,
                dlperf=round(rng.uniform(plo, phi), 1),
                datacenter=rng.random() < 0.4,
                verified=rng.random() < 0.8,
                host_id=f"h{rng.randrange(60)}",
                disk_space_gb=rng.choice([16.0, 50.0, 100.0, 500.0]),
            )
        )
    return offers


MARKET = market()
REQ = Requirements(
    gpu_names=("RTX 4090", "RTX 3090"),
    min_gpu_ram_gb=16,
    min_cuda=12.1,
    min_reliability=0.95,
    disk_gb=30,
)


def test_fixture_is_big_and_varied() -> None:
    assert len(MARKET) >= 200
    assert {o.gpu_name for o in MARKET} >= {"RTX 3090", "RTX 4090", "A100 PCIE", "H100 SXM"}
    assert any(offer_matches(o, REQ) for o in MARKET)
    assert any(not offer_matches(o, REQ) for o in MARKET)


class TestOfferMatches:
    @pytest.mark.parametrize(
        ("change", "fragment"),
        [
            ({"gpu_name": "A100 PCIE"}, "GPU A100 PCIE is not one of"),
            ({"num_gpus": 2}, "has 2 GPUs"),
            ({"gpu_ram_gb": 12.0}, "12 GB per GPU"),
            ({"cuda_max": 11.8}, "CUDA 11.8"),
            ({"reliability": 0.9}, "reliability 0.900"),
            ({"verified": False}, "not verified"),
            ({"disk_space_gb": 10.0}, "10 GB disk"),
            ({"price_per_hour_usd": Decimal("0")}, "impossible price"),
            ({"reliability": float("nan")}, "non-numeric"),
        ],
    )
    def test_each_requirement_gives_a_reason(self, change: dict, fragment: str) -> None:
        reasons = offer_matches(make_offer(**change), REQ)
        assert any(fragment in r for r in reasons), reasons

    def test_good_offer_matches(self) -> None:
        assert offer_matches(make_offer(), REQ) == []

    def test_price_cap_uses_bid_when_interruptible(self) -> None:
        offer = make_offer(
            price_per_hour_usd=Decimal("0.50"), min_bid_per_hour_usd=Decimal("0.20")
        )
        req = dataclasses.replace(REQ, max_price_per_hour_usd=Decimal("0.30"))
        assert offer_matches(offer, req)
        assert offer_matches(offer, req, rental_type=RentalType.INTERRUPTIBLE) == []

    def test_datacenter_only(self) -> None:
        req = dataclasses.replace(REQ, datacenter_only=True)
        assert offer_matches(make_offer(datacenter=False), req) == ["not a datacenter host"]


class TestBid:
    @pytest.mark.parametrize(
        ("min_bid", "on_demand", "bid"),
        [
            ("0.20", "0.40", "0.230"),  # 15 % margin
            ("0.04", "0.40", "0.050"),  # at least one cent
            ("0.1234", "0.40", "0.142"),  # rounded up to 0.1 cent
            ("0.38", "0.40", "0.400"),  # capped at on-demand compute (no dph_base: dph_total)
            ("0.40", "0.40", None),  # no saving possible
            ("0.50", "0.40", None),
        ],
    )
    def test_bid_table(self, min_bid: str, on_demand: str, bid: str | None) -> None:
        offer = make_offer(
            price_per_hour_usd=Decimal(on_demand), min_bid_per_hour_usd=Decimal(min_bid)
        )
        assert bid_for(offer) == (None if bid is None else Decimal(bid))

    @pytest.mark.parametrize(
        ("min_bid", "dph_base", "bid"),
        [
            # vast's type=bid search reports dph_total = min_bid + storage; the old policy capped
            # at that minus $0.001 and bid only ~$0.006 over min_bid. The cap is dph_base now.
            ("0.0800", "0.1750", "0.092"),
            ("0.1600", "0.1700", "0.170"),  # capped at the on-demand compute price
            ("0.1700", "0.1700", None),  # the cap is not above min_bid: no bid
        ],
    )
    def test_bid_is_capped_at_dph_base_not_dph_total(
        self, min_bid: str, dph_base: str, bid: str | None
    ) -> None:
        offer = make_offer(
            price_per_hour_usd=Decimal(dph_base) + Decimal("0.0043"),
            compute_per_hour_usd=Decimal(dph_base),
            min_bid_per_hour_usd=Decimal(min_bid),
        )
        assert bid_for(offer) == (None if bid is None else Decimal(bid))

    def test_bid_keeps_its_margin_over_min_bid(self) -> None:
        """The incident: min_bid $0.0795, storage $0.0043/h: the bid must keep its 15 %."""
        offer = make_offer(
            price_per_hour_usd=Decimal("0.179333"),
            compute_per_hour_usd=Decimal("0.175"),
            min_bid_per_hour_usd=Decimal("0.0795"),
        )
        bid = bid_for(offer)
        assert bid == Decimal("0.092")
        assert bid - offer.min_bid_per_hour_usd >= Decimal("0.01")


class TestChargedPrice:
    OFFER = make_offer(
        price_per_hour_usd=Decimal("0.179333"),
        compute_per_hour_usd=Decimal("0.175"),
        min_bid_per_hour_usd=Decimal("0.0795"),
    )

    def test_storage_per_hour_is_total_minus_base(self) -> None:
        assert self.OFFER.storage_per_hour_usd == Decimal("0.004333")
        assert make_offer().storage_per_hour_usd == Decimal(0)  # dph_base unknown

    def test_interruptible_plan_quotes_bid_plus_storage(self) -> None:
        choice = choose_rental(
            [self.OFFER], REQ, mode=InterruptibleMode.YES, expected_hours=1, checkpoints=True
        )
        assert choice.bid_per_hour_usd == Decimal("0.092")
        assert choice.price_per_hour_usd == Decimal("0.096333")
        assert "$0.179333/h" in choice.reason and "$0.092/h" in choice.reason
        assert "46% below" in choice.reason  # (0.179333 - 0.096333) / 0.179333

    def test_on_demand_plan_quotes_dph_total(self) -> None:
        choice = choose_rental(
            [self.OFFER], REQ, mode=InterruptibleMode.AUTO, expected_hours=10, checkpoints=False
        )
        assert choice.rental_type is RentalType.ON_DEMAND
        assert choice.price_per_hour_usd == Decimal("0.179333")
        assert choice.reason.startswith("On-demand at $0.179333/h")

    def test_price_cap_applies_to_the_charged_price(self) -> None:
        req = dataclasses.replace(REQ, max_price_per_hour_usd=Decimal("0.095"))
        reasons = offer_matches(self.OFFER, req, rental_type=RentalType.INTERRUPTIBLE)
        assert any("$0.096333/h is above" in r for r in reasons), reasons


class TestRanking:
    def test_price_ranking_is_ascending_with_reliability_tiebreak(self) -> None:
        a = make_offer(1, price_per_hour_usd=Decimal("0.3"), reliability=0.96)
        b = make_offer(2, price_per_hour_usd=Decimal("0.3"), reliability=0.99)
        c = make_offer(3, price_per_hour_usd=Decimal("0.2"))
        assert [o.offer_id for o in rank_offers([a, b, c], OfferRanking.PRICE)] == [
            "o3",
            "o2",
            "o1",
        ]

    def test_dlperf_per_usd_ranking(self) -> None:
        cheap_slow = make_offer(1, price_per_hour_usd=Decimal("0.10"), dlperf=20.0)  # 200/$
        fast = make_offer(2, price_per_hour_usd=Decimal("0.30"), dlperf=90.0)  # 300/$
        ranked = rank_offers([cheap_slow, fast], OfferRanking.DLPERF_PER_USD)
        assert [o.offer_id for o in ranked] == ["o2", "o1"]


class TestChooseRental:
    def _qualifying(self, rental_type: RentalType, req: Requirements = REQ) -> list[Offer]:
        return [o for o in MARKET if not offer_matches(o, req, rental_type=rental_type)]

    def test_cheapest_qualifying_on_demand_offer_is_chosen(self) -> None:
        choice = choose_rental(
            MARKET, REQ, mode=InterruptibleMode.NO, expected_hours=8, checkpoints=False
        )
        cheapest = min(o.price_per_hour_usd for o in self._qualifying(RentalType.ON_DEMAND))
        assert choice.rental_type is RentalType.ON_DEMAND
        assert choice.offer.price_per_hour_usd == cheapest
        assert choice.bid_per_hour_usd is None
        assert offer_matches(choice.offer, REQ) == []
        assert choice.reason.startswith("On-demand, as asked with interruptible=no")

    def test_interruptible_picks_the_lowest_bid(self) -> None:
        choice = choose_rental(
            MARKET,
            REQ,
            mode=InterruptibleMode.AUTO,
            expected_hours=6,
            checkpoints=True,
            checkpoint_every="50 steps",
        )
        bids = [bid_for(o) for o in self._qualifying(RentalType.INTERRUPTIBLE)]
        assert choice.rental_type is RentalType.INTERRUPTIBLE
        assert choice.bid_per_hour_usd == min(b for b in bids if b is not None)
        assert choice.bid_per_hour_usd < choice.offer.price_per_hour_usd
        assert choice.bid_per_hour_usd > choice.offer.min_bid_per_hour_usd
        assert choice.price_per_hour_usd == choice.bid_per_hour_usd
        assert choice.reason.startswith(
            "Interruptible: the job checkpoints every 50 steps, so an outbid costs minutes"
        )
        assert "% below on-demand" in choice.reason

    @pytest.mark.parametrize(
        ("mode", "hours", "checkpoints", "expected", "reason_start"),
        [
            (
                InterruptibleMode.AUTO,
                0.5,
                False,
                RentalType.INTERRUPTIBLE,
                "Interruptible: the job should take about 30 minutes",
            ),
            (
                InterruptibleMode.AUTO,
                2.0,
                False,
                RentalType.INTERRUPTIBLE,
                "Interruptible: the job should take about 2 h",
            ),
            (
                InterruptibleMode.AUTO,
                8.0,
                True,
                RentalType.INTERRUPTIBLE,
                "Interruptible: the job checkpoints",
            ),
            (InterruptibleMode.AUTO, 3.0, False, RentalType.ON_DEMAND, "On-demand at $"),
            (InterruptibleMode.AUTO, 12.0, False, RentalType.ON_DEMAND, "On-demand at $"),
            (
                InterruptibleMode.YES,
                12.0,
                False,
                RentalType.INTERRUPTIBLE,
                "Interruptible, as asked",
            ),
            (InterruptibleMode.NO, 0.5, True, RentalType.ON_DEMAND, "On-demand, as asked"),
        ],
    )
    def test_decision_matrix(
        self,
        mode: InterruptibleMode,
        hours: float,
        checkpoints: bool,
        expected: RentalType,
        reason_start: str,
    ) -> None:
        assert decide_rental_type(mode, expected_hours=hours, checkpoints=checkpoints) is expected
        choice = choose_rental(
            MARKET, REQ, mode=mode, expected_hours=hours, checkpoints=checkpoints
        )
        assert choice.rental_type is expected
        assert choice.reason.startswith(reason_start), choice.reason
        assert choice.reason.endswith(".") and "\n" not in choice.reason
        if expected is RentalType.ON_DEMAND and mode is InterruptibleMode.AUTO:
            assert "cannot resume" in choice.reason
        if mode is InterruptibleMode.YES and not checkpoints:
            assert "restarts the job from the beginning" in choice.reason

    def test_offer_failing_the_recheck_is_never_chosen(self) -> None:
        # given offers with impossible data that would rank first by price
        broken = [
            make_offer(900, price_per_hour_usd=Decimal("0.00"), min_bid_per_hour_usd=Decimal(0)),
            make_offer(901, price_per_hour_usd=Decimal("0.01"), reliability=float("nan")),
            make_offer(902, price_per_hour_usd=Decimal("0.01"), num_gpus=0),
        ]
        for mode in InterruptibleMode:
            choice = choose_rental(
                broken + MARKET, REQ, mode=mode, expected_hours=1, checkpoints=True
            )
            assert choice.offer.offer_id not in {"o900", "o901", "o902"}
            assert offer_matches(choice.offer, REQ, rental_type=choice.rental_type) == []

    def test_blocked_hosts_are_skipped(self) -> None:
        first = choose_rental(
            MARKET, REQ, mode=InterruptibleMode.NO, expected_hours=1, checkpoints=False
        )
        req = dataclasses.replace(REQ, blocked_host_ids=frozenset({first.offer.host_id}))
        second = choose_rental(
            MARKET, req, mode=InterruptibleMode.NO, expected_hours=1, checkpoints=False
        )
        assert second.offer.host_id != first.offer.host_id
        assert second.offer.price_per_hour_usd >= first.offer.price_per_hour_usd

    def test_dlperf_ranking_prefers_value(self) -> None:
        by_price = choose_rental(
            MARKET, REQ, mode=InterruptibleMode.NO, expected_hours=1, checkpoints=False
        )
        by_perf = choose_rental(
            MARKET,
            REQ,
            mode=InterruptibleMode.NO,
            expected_hours=1,
            checkpoints=False,
            ranking=OfferRanking.DLPERF_PER_USD,
        )
        best = max(o.dlperf_per_usd for o in self._qualifying(RentalType.ON_DEMAND))
        assert by_perf.offer.dlperf_per_usd == best
        assert by_perf.offer.dlperf_per_usd >= by_price.offer.dlperf_per_usd

    def test_auto_falls_back_to_on_demand_when_no_bid_saves(self) -> None:
        offers = [make_offer(1, min_bid_per_hour_usd=Decimal("0.30"))]
        choice = choose_rental(
            offers, REQ, mode=InterruptibleMode.AUTO, expected_hours=1, checkpoints=True
        )
        assert choice.rental_type is RentalType.ON_DEMAND
        assert "no matching offer takes an interruptible bid" in choice.reason
        with pytest.raises(NoOfferError):
            choose_rental(
                offers, REQ, mode=InterruptibleMode.YES, expected_hours=1, checkpoints=True
            )

    def test_no_offer_names_the_most_restrictive_requirement(self) -> None:
        req = dataclasses.replace(REQ, max_price_per_hour_usd=Decimal("0.05"))
        with pytest.raises(NoOfferError) as info:
            choose_rental(
                MARKET, req, mode=InterruptibleMode.NO, expected_hours=1, checkpoints=False
            )
        message = str(info.value)
        assert f"({len(MARKET)} seen)" in message
        assert "Most restrictive: GPU type" in message or "Most restrictive: price cap" in message
        assert "ruled out" in message

    def test_no_offer_suggests_the_closest(self) -> None:
        offers = [make_offer(1, price_per_hour_usd=Decimal("0.32"))]
        req = dataclasses.replace(REQ, max_price_per_hour_usd=Decimal("0.25"))
        with pytest.raises(NoOfferError) as info:
            choose_rental(
                offers, req, mode=InterruptibleMode.NO, expected_hours=1, checkpoints=False
            )
        assert "price cap ruled out 1" in str(info.value)
        assert "raise max_price=" in str(info.value)
        assert "Closest: RTX 4090 at $0.32/h" in str(info.value)

    def test_empty_market(self) -> None:
        with pytest.raises(NoOfferError, match="No offers on the market"):
            choose_rental([], REQ, mode=InterruptibleMode.AUTO, expected_hours=1, checkpoints=True)


class TestFromTemplate:
    def test_requirements_from_template_and_overrides(self) -> None:
        train = load_config(None).templates["train"]
        req = requirements_from(
            train,
            ResourceOverrides(
                gpu_names=("H100 SXM",), max_price_per_hour_usd=Decimal("2"), disk_gb=80
            ),
            blocked_host_ids=frozenset({"h1"}),
        )
        assert req.gpu_names == ("H100 SXM",)
        assert req.max_price_per_hour_usd == Decimal("2")
        assert req.disk_gb == 80
        assert req.min_cuda == 12.1
        assert req.min_gpu_ram_gb == 16
        assert req.blocked_host_ids == frozenset({"h1"})

    def test_requirements_without_template(self) -> None:
        assert requirements_from(None, None) == Requirements()

    def test_policy_overrides(self) -> None:
        train = load_config(None).templates["train"]
        policy = policy_from(
            train, ResourceOverrides(interruptible=InterruptibleMode.NO, hours=5.0)
        )
        assert policy.mode is InterruptibleMode.NO
        assert policy.expected_hours == 5.0
        assert policy.checkpoints is True
