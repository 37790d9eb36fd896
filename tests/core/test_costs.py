"""Cost math on literal tables: Decimal in, Decimal out, rounding as documented."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from gpubot.costs import (
    BudgetVerdict,
    bandwidth_cost_usd,
    budget_verdict,
    compute_cost_usd,
    estimate_job_cost,
    forecast_runout,
    format_duration,
    format_usd,
    storage_cost_usd,
)
from gpubot.models import Offer, RentalChoice, RentalType

D = Decimal


class TestComputeCost:
    @pytest.mark.parametrize(
        ("price", "seconds", "expected"),
        [
            ("0.40", 3600, "0.40"),
            ("0.40", 1800, "0.20"),
            ("0.40", 0, "0"),
            ("0.36", 1, "0.0001"),
            ("1.61", 5400, "2.415"),
            ("0.0984", 7, "0.00019133"),  # 0.000191333.. rounded half-up at 1e-8
            ("0.3", 10.5, "0.000875"),
            ("2.00", 86400 * 30, "1440"),
        ],
    )
    def test_table(self, price: str, seconds: float, expected: str) -> None:
        assert compute_cost_usd(D(price), seconds) == D(expected)

    def test_result_keeps_ledger_precision(self) -> None:
        assert compute_cost_usd(D("0.0984"), 7).as_tuple().exponent == -8

    def test_many_small_charges_add_up_without_drift(self) -> None:
        # given one hour billed in 10 s ticks
        total = sum((compute_cost_usd(D("0.40"), 10) for _ in range(360)), D(0))
        # then it equals one hour billed at once, to the cent and nearly to the ledger unit
        assert abs(total - D("0.40")) < D("0.000001")

    @pytest.mark.parametrize(("price", "seconds"), [("-0.1", 10), ("0.1", -1), ("NaN", 1)])
    def test_rejects_negative_or_nan(self, price: str, seconds: int) -> None:
        with pytest.raises(ValueError):
            compute_cost_usd(D(price), seconds)


class TestStorageAndBandwidth:
    @pytest.mark.parametrize(
        ("rate", "disk_gb", "seconds", "expected"),
        [
            ("0.15", 50, 720 * 3600, "7.50"),  # a full 30-day month
            ("0.15", 50, 3600, "0.01041667"),  # 7.50 / 720
            ("0.10", 20, 24 * 3600, "0.06666667"),
            ("0.20", 0, 3600, "0"),
        ],
    )
    def test_storage_table(self, rate: str, disk_gb: int, seconds: int, expected: str) -> None:
        assert storage_cost_usd(D(rate), disk_gb, seconds) == D(expected)

    @pytest.mark.parametrize(
        ("up", "down", "up_rate", "down_rate", "expected"),
        [
            (10**9, 0, "0.005", "0.003", "0.005"),  # GB = 10^9 bytes, not 2^30
            (0, 2 * 10**9, "0.005", "0.003", "0.006"),
            (1_500_000_000, 500_000_000, "0.01", "0.02", "0.025"),
            (2**30, 0, "1", "0", "1.07374182"),
        ],
    )
    def test_bandwidth_table(
        self, up: int, down: int, up_rate: str, down_rate: str, expected: str
    ) -> None:
        assert bandwidth_cost_usd(up, down, D(up_rate), D(down_rate)) == D(expected)


def _choice(
    rental_type: RentalType,
    bid: str | None,
    *,
    dph_base: str | None = None,
    dph_total: str = "0.40",
) -> RentalChoice:
    offer = Offer(
        offer_id="o1",
        gpu_name="RTX 4090",
        num_gpus=1,
        gpu_ram_gb=24.0,
        price_per_hour_usd=D(dph_total),
        min_bid_per_hour_usd=D("0.18"),
        storage_per_gb_month_usd=D("0.144"),
        upload_per_gb_usd=D("0.005"),
        download_per_gb_usd=D("0.003"),
        reliability=0.99,
        cuda_max=12.4,
        compute_cap=890,
        dlperf=100.0,
        datacenter=True,
        verified=True,
        host_id="h1",
        machine_id="m1",
        disk_space_gb=100.0,
        compute_per_hour_usd=None if dph_base is None else D(dph_base),
    )
    return RentalChoice(
        offer=offer,
        rental_type=rental_type,
        bid_per_hour_usd=None if bid is None else D(bid),
        reason="",
    )


class TestEstimate:
    @pytest.mark.parametrize(
        ("rental_type", "bid", "disk", "hours", "compute", "storage", "total", "per_hour"),
        [
            # storage: 0.144 $/GB/month x 50 GB / 720 h = 0.01 $/h
            (RentalType.ON_DEMAND, None, 50, 2, "0.80", "0.02", "0.82", "0.41"),
            (RentalType.INTERRUPTIBLE, "0.207", 50, 2, "0.414", "0.02", "0.434", "0.217"),
            (RentalType.ON_DEMAND, None, 50, 0.5, "0.20", "0.005", "0.205", "0.41"),
        ],
    )
    def test_table(
        self,
        rental_type: RentalType,
        bid: str | None,
        disk: int,
        hours: float,
        compute: str,
        storage: str,
        total: str,
        per_hour: str,
    ) -> None:
        est = estimate_job_cost(_choice(rental_type, bid), disk, hours)
        assert est.compute_usd == D(compute)
        assert est.storage_usd == D(storage)
        assert est.total_usd == D(total)
        assert est.price_per_hour_usd == D(per_hour)


    @pytest.mark.parametrize(
        ("rental_type", "bid", "per_hour", "total"),
        [
            # dph_total 0.41 = dph_base 0.40 + 0.01 $/h of storage for the searched 50 GB:
            # the quote is what vast charges (0.40 compute + 0.01 storage), storage once.
            (RentalType.ON_DEMAND, None, "0.41", "0.82"),
            (RentalType.INTERRUPTIBLE, "0.207", "0.217", "0.434"),
        ],
    )
    def test_storage_folded_into_dph_total_is_counted_once(
        self, rental_type: RentalType, bid: str | None, per_hour: str, total: str
    ) -> None:
        choice = _choice(rental_type, bid, dph_base="0.40", dph_total="0.41")
        est = estimate_job_cost(choice, 50, 2)
        assert est.price_per_hour_usd == D(per_hour)
        assert est.total_usd == D(total)
        assert est.storage_usd == D("0.02")


class TestBudgetVerdict:
    @pytest.mark.parametrize(
        ("spent", "limit", "alerted", "new", "stop", "pct"),
        [
            ("0", "10", (), (), False, "0.0"),
            ("4.99", "10", (), (), False, "49.9"),
            ("5", "10", (), (50,), False, "50.0"),
            ("8.5", "10", (), (50, 80), False, "85.0"),
            ("8.5", "10", (50,), (80,), False, "85.0"),
            ("8.5", "10", (50, 80), (), False, "85.0"),
            ("10", "10", (50, 80), (100,), True, "100.0"),
            ("12", "10", (), (50, 80, 100), True, "120.0"),
            ("12", "10", (50, 80, 100), (), True, "120.0"),
            ("0", "0", (), (50, 80, 100), True, "100"),
        ],
    )
    def test_table(
        self,
        spent: str,
        limit: str,
        alerted: tuple[int, ...],
        new: tuple[int, ...],
        stop: bool,
        pct: str,
    ) -> None:
        v = budget_verdict(D(spent), D(limit), alerted)
        assert isinstance(v, BudgetVerdict)
        assert v.new_alert_pcts == new
        assert v.stop is stop
        assert v.used_pct == D(pct)
        assert v.remaining_usd == max(D(limit) - D(spent), D(0))


class TestForecast:
    @pytest.mark.parametrize(
        ("spent", "limit", "burn", "expected"),
        [
            ("0", "10", "1", timedelta(hours=10)),
            ("4", "10", "0.40", timedelta(hours=15)),
            ("9.90", "10", "0.36", timedelta(seconds=1000)),
            ("10", "10", "1", timedelta(0)),
            ("11", "10", "1", timedelta(0)),
            ("1", "10", "0", None),
        ],
    )
    def test_table(self, spent: str, limit: str, burn: str, expected: timedelta | None) -> None:
        assert forecast_runout(D(spent), D(limit), D(burn)) == expected


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(0), "0 s"),
        (timedelta(seconds=45), "45 s"),
        (timedelta(seconds=59.9), "59 s"),
        (timedelta(minutes=12, seconds=59), "12 m"),
        (timedelta(hours=3, minutes=10, seconds=40), "3 h 10 m"),
        (timedelta(hours=3), "3 h"),
        (timedelta(days=2, hours=5, minutes=7), "2 d 5 h"),
        (timedelta(days=1), "1 d"),
        (-timedelta(minutes=5), "-5 m"),
    ],
)
def test_format_duration(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("1.23", "$1.23"),
        ("1.235", "$1.24"),  # half-up, not banker's rounding
        ("1.225", "$1.23"),
        ("0", "$0.00"),
        ("0.01", "$0.01"),
        ("0.005", "$0.01"),
        ("0.0042", "$0.0042"),
        ("0.00425", "$0.0043"),
        ("0.00004", "under $0.0001"),
        ("1234.5", "$1,234.50"),
        ("-2.5", "-$2.50"),
        ("0.40000000", "$0.40"),
    ],
)
def test_format_usd(amount: str, text: str) -> None:
    assert format_usd(D(amount)) == text
