"""Screened offer choice over raw vast rows makes the same decisions as parsing every row first.

``choose_rental(VastOffers(rows), ...)`` screens the raw rows (``VastOffers.screen_offers``),
ranks light sketches and parses only the winner. It must decide exactly as

* the frozen pre-speed-up code (``reference_offer_choice.py``: parse every row with the old
  parser, skip the unparseable ones, old filter + sort + re-check), compared field by field,
  and
* the current plain path over ``list(VastOffers(rows))`` (the same offer object).

The market: 2,500 seeded vast-shaped rows on coarse price grids (many exact ties), a quarter of
them with fields of unusual JSON types or values (ints for floats, prices as strings, nulls,
bools, NaN/inf, negatives, ints beyond 2**53, missing keys, ``ask_contract_id``, rows that are
not objects), 600 rows of the simulator's market, and the hand-made bad rows of
``test_offer_choice_equivalence``; 40 seeded requirement sets (GPU names, counts, minimums,
datacenter/verified, blocked hosts, price caps), each under four rental policies and both
rankings, over the whole market, a 40-row sample, one row and none.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest

from gpubot import offers as new
from gpubot.errors import NoOfferError
from gpubot.models import InterruptibleMode, Offer, OfferRanking, Requirements
from gpubot.providers.vastai.parsing import VastOffers
from gpubot.sim.market import DEFAULT_EPOCH, generate_offers, price_offer
from tests.core import reference_offer_choice as ref
from tests.core.test_offer_choice_equivalence import GPUS, HOSTS, POLICIES, _bad_rows, _row

SEED = 20261215
FIELD_VARIANTS: list[tuple[str, Callable[[random.Random, dict[str, Any]], Any]]] = [
    ("reliability", lambda r, row: r.choice([1, 0, None, True, "0.99", float("nan"), 2**60])),
    ("reliability2", lambda r, row: r.choice([0.99, 0.5, None, 1])),
    ("num_gpus", lambda r, row: r.choice([None, 0, -1, 2.0, "1", True, 2**60, 1])),
    ("gpu_name", lambda r, row: r.choice(["", None, 4090, "rtx 4090"])),
    ("gpu_ram", lambda r, row: r.choice([None, 24_576.0, "24576", 2**60, -1, float("inf")])),
    ("cuda_max_good", lambda r, row: r.choice([12, None, "12.4", float("nan"), float("inf")])),
    ("compute_cap", lambda r, row: r.choice([None, 890.0, "890", 2**60, 0])),
    ("disk_space", lambda r, row: r.choice([200, None, "200", float("inf"), -5.0])),
    ("inet_down", lambda r, row: r.choice([1000, None, float("nan"), float("inf"), "1000"])),
    ("dlperf", lambda r, row: r.choice([None, 50, float("inf"), "50"])),
    ("verification", lambda r, row: r.choice(["Verified", "", None, 1, "deverified"])),
    ("verified", lambda r, row: r.choice([True, False, 1, None])),
    ("hosting_type", lambda r, row: r.choice([1, 0, None, 1.0, "1", True, 2**60])),
    ("datacenter", lambda r, row: r.choice([True, False, 1, None])),
    ("host_id", lambda r, row: r.choice([None, float(row["host_id"]), str(row["host_id"])])),
    ("dph_total", lambda r, row: r.choice([None, 1, "0.25", 0.0, -0.0, float("nan"), True])),
    ("min_bid", lambda r, row: r.choice([None, 0, "0.05", float("inf"), -0.01, -0.0, 0.0])),
    ("dph_base", lambda r, row: r.choice([None, 1, "0.2", float("nan"), 0.0])),
    ("id", lambda r, row: r.choice([None, 12.0, "x-1", "same-id"])),
]


def _odd(rng: random.Random, row: dict[str, Any]) -> Any:
    """``row`` with one to three fields of unusual type or value, a key dropped, or not a row
    at all."""
    roll = rng.random()
    if roll < 0.03:
        return rng.choice([["not", "a", "row"], "row", None, 7])
    out = dict(row)
    if roll < 0.10:
        del out[rng.choice(sorted(out))]
        return out
    if roll < 0.13:
        out["ask_contract_id"] = out.pop("id")
        return out
    for _ in range(rng.choice([1, 1, 2, 3])):
        key, make = rng.choice(FIELD_VARIANTS)
        out[key] = make(rng, out)
    return out


def _rows() -> list[Any]:
    rng = random.Random(SEED)
    rows: list[Any] = []
    for i in range(2_500):
        row = _row(rng, i)
        rows.append(_odd(rng, row) if rng.random() < 0.25 else row)
    sim = generate_offers(SEED, 600, now=DEFAULT_EPOCH)
    rows += [price_offer(o, allocated_storage_gb=30, offer_type="on-demand",
                         now=DEFAULT_EPOCH) for o in sim]
    rows += _bad_rows()
    # exact ties on price and reliability with later ids and later positions
    rows += [dict(r) | {"id": f"tie-{n}"} for n, r in enumerate(rows[:400:9])
             if isinstance(r, dict)]
    rng.shuffle(rows)
    return rows


def _requirements(rng: random.Random, i: int) -> Requirements:
    if i == 0:
        return Requirements()
    if i == 1:
        return Requirements(gpu_names=("H100 SXM",), num_gpus=8, max_price_per_hour_usd=Decimal(1))
    if i == 2:  # no sane offer has fewer than one GPU, whatever the row says
        return Requirements(num_gpus=-1, min_reliability=0.0, verified_only=False, disk_gb=0)
    names = [g[0] for g in GPUS] + ["A100 PCIE"]
    return Requirements(
        gpu_names=tuple(rng.sample(names, rng.choice([0, 0, 1, 2, 3]))),
        num_gpus=rng.choice([1, 1, 1, 2, 4, 8]),
        min_gpu_ram_gb=rng.choice([0.0, 0.0, 16.0, 24.0, 40.0]),
        min_cuda=rng.choice([0.0, 0.0, 12.1, 12.4]),
        min_compute_cap=rng.choice([0, 0, 800, 890]),
        min_reliability=rng.choice([0.0, 0.95, 0.95, 0.99]),
        max_price_per_hour_usd=rng.choice(
            [None, None, Decimal("0.05"), Decimal("0.2"), Decimal("0.25"), Decimal("3")]
        ),
        datacenter_only=rng.random() < 0.25,
        disk_gb=rng.choice([10, 20, 60, 200]),
        verified_only=rng.random() < 0.7,
        min_inet_down_mbps=rng.choice([0.0, 0.0, 500.0]),
        blocked_host_ids=frozenset(rng.sample(HOSTS, rng.choice([0, 0, 3, 30]))),
    )


ROWS = _rows()
REQS = [_requirements(random.Random(SEED + i), i) for i in range(40)]


def _ref_market(rows: Sequence[Any]) -> list[Offer]:
    out: list[Offer] = []
    for row in rows:
        try:
            out.append(ref.offer_from_vast(row))
        except Exception:  # noqa: BLE001, S112 - the old search skipped unparseable rows
            continue
    return out


def _decide(module: Any, offers: Sequence[Offer], req: Requirements, policy: tuple[Any, ...],
            ranking: OfferRanking) -> tuple[Any, ...]:
    mode, hours, ckpt = policy
    try:
        c = module.choose_rental(offers, req, mode=mode, expected_hours=hours, checkpoints=ckpt,
                                 ranking=ranking, checkpoint_every="100 steps")
    except NoOfferError as e:
        return ("no offer", str(e))
    return (c.offer, c.rental_type, str(c.bid_per_hour_usd), c.reason)


def _same_fields(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if a[0] == "no offer" or b[0] == "no offer":
        return a == b
    return (repr(a[0]),) + a[1:] == (repr(b[0]),) + b[1:]


def test_the_market_is_varied() -> None:
    market = VastOffers(ROWS)
    parsed = list(market)
    assert 3_000 < len(parsed) < len(ROWS)  # some rows do not parse
    undecided = set()
    for req in REQS:
        _, u = market.screen_offers(req)
        undecided.update(u)
    assert len(undecided) > 100  # the unusual types reach the full parse


@pytest.mark.parametrize("index", range(len(REQS)))
def test_the_screen_keeps_exactly_the_candidates(index: int) -> None:
    """Sketches: exactly the rows the plain filter keeps (their sketch equal to their parsed
    offer's); undecided: rows the screen could not judge; every other row fails the filter."""
    req = REQS[index]
    market = VastOffers(ROWS)
    sketches, undecided = market.screen_offers(req)
    positions = [s.position for s in sketches]
    assert positions == sorted(positions) and undecided == sorted(undecided)
    assert not set(positions) & set(undecided)
    for sketch in sketches:
        offer = market.offer_at(sketch.position)
        assert offer is not None and new._candidates((offer,), req), sketch
        assert new.sketch_of(offer, sketch.position) == sketch
        assert repr(new.sketch_of(offer, sketch.position)) == repr(sketch)  # Decimal exponents
    judged = set(positions) | set(undecided)
    for position, _row_value in enumerate(ROWS):
        if position in judged:
            continue
        offer = market.offer_at(position)
        assert offer is None or not new._candidates((offer,), req), (position, ROWS[position])


@pytest.mark.parametrize("index", range(len(REQS)))
def test_same_decisions(index: int) -> None:
    req = REQS[index]
    rng = random.Random(SEED * 31 + index)
    small = rng.sample(ROWS, 40)
    for p, policy in enumerate(POLICIES):
        ranking = (OfferRanking.PRICE, OfferRanking.DLPERF_PER_USD)[(index + p) % 2]
        for rows in (ROWS, small, small[:1], []):
            screened = VastOffers(rows)
            fast = _decide(new, screened, req, policy, ranking)
            plain = _decide(new, list(screened), req, policy, ranking)
            old = _decide(ref, _ref_market(rows), req, policy, ranking)
            assert fast == plain  # the same offer object
            assert _same_fields(fast, old), (fast, old)


def test_only_the_winner_and_undecided_rows_are_parsed() -> None:
    req = Requirements(gpu_names=("RTX 3090", "RTX 4090"), min_reliability=0.95)
    rows = [r for r in ROWS if isinstance(r, dict)]
    market = VastOffers(rows)
    _, undecided = market.screen_offers(req)
    choice = new.choose_rental(market, req, mode=InterruptibleMode.AUTO, expected_hours=8.0,
                               checkpoints=True)
    parsed = [i for i in range(len(rows)) if market._parsed[i] is not _unparsed()]
    assert set(parsed) <= set(undecided) | {_position(market, choice.offer)}
    assert len(parsed) < len(rows) // 10


def _unparsed() -> Any:
    from gpubot.providers.vastai import parsing

    return parsing._UNPARSED


def _position(market: VastOffers, offer: Offer) -> int:
    return next(i for i in range(market.row_count) if market.offer_at(i) is offer)


def test_a_tie_with_an_earlier_undecided_row_goes_to_that_row() -> None:
    """Same id, price and reliability (a full rank-key tie): row order decides, also when the
    earlier twin is one the screen leaves to the full parse (its price sent as a string)."""
    checked = 0
    for req in REQS[:12]:
        for policy in POLICIES:
            for ranking in OfferRanking:
                market = VastOffers(ROWS)
                plain = _decide(new, list(market), req, policy, ranking)
                if plain[0] == "no offer":
                    continue
                position = _position(market, plain[0])
                row = ROWS[position]
                twin = dict(row) | {"geolocation": "twin", "dph_total": str(row["dph_total"])}
                rows = ROWS[:position] + [twin] + ROWS[position:]
                fast = _decide(new, VastOffers(rows), req, policy, ranking)
                assert fast[0].geolocation == "twin"
                assert _same_fields(fast, _decide(new, list(VastOffers(rows)), req, policy,
                                                  ranking))
                checked += 1
    assert checked > 20


class _LyingScreen(VastOffers):
    """A screen that gets the cheapest sketch's price wrong: the choice must not trust it."""

    def screen_offers(self, req: Requirements) -> tuple[list[new.OfferSketch], list[int]]:
        sketches, undecided = super().screen_offers(req)
        return [s._replace(price_per_hour_usd=Decimal("0.0001"),
                           min_bid_per_hour_usd=Decimal("0.00001"))
                for s in sketches], undecided


def test_a_sketch_the_parse_contradicts_falls_back_to_the_parsed_list() -> None:
    for req in REQS[:10]:
        for policy in POLICIES:
            lying = _LyingScreen(ROWS)
            assert _decide(new, lying, req, policy, OfferRanking.PRICE) == _decide(
                new, list(lying), req, policy, OfferRanking.PRICE
            )


def test_vast_offers_is_the_parsed_list(caplog: pytest.LogCaptureFixture) -> None:
    rows = ROWS[:300]
    expected = _ref_market(rows)
    with caplog.at_level(logging.WARNING, logger="gpubot.providers.vastai.parsing"):
        market = VastOffers(rows)
        assert bool(market) and market.row_count == 300
        first = market[0]
        assert repr(list(market)) == repr(expected)
        assert len(market) == len(expected)
        assert market[0] is first and list(market)[-1] is market[-1]
        assert market[1:3] == list(market)[1:3]
        assert market == list(market) and market != list(market)[1:]
        warned = len(caplog.records)
        assert warned == len(rows) - len(expected)  # each bad row once
        list(market)
        assert len(caplog.records) == warned
    assert not VastOffers([]) and not VastOffers([{"id": 1}]) and len(VastOffers([None])) == 0
