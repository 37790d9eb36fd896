"""Offer choice: filter the market by a job's requirements, rank, pick, decide how to rent.

Pure: standard library only. The functions take plain values and never call the provider.

Rental type follows vast.ai's usual advice (interruptible is far cheaper but can be paused
by a higher bid at any time): with ``interruptible=auto`` a job that checkpoints, or that is
expected to finish within :data:`SHORT_JOB_HOURS`, is rented interruptible (a bid), and a
longer job that cannot resume is rented on-demand, because an outbid would lose all its
progress. ``yes``/``no`` force the type.

Prices come from vast's ON-DEMAND search (``type=on-demand``): ``dph_total`` is the on-demand
price including the searched disk's storage, ``dph_base`` the compute part, and each row's
``min_bid`` the interruptible floor (a ``type=bid`` search instead
reports ``dph_total = min_bid + storage``, which is not an on-demand price).

The bid for an interruptible rental is ``max(min_bid x 1.15, min_bid + $0.01)``, rounded up
to $0.001 (vast's bid step), and never above the on-demand compute price ``dph_base``: a bid is
for compute, storage is billed on top either way. An offer is rented interruptible only when
that bid is above ``min_bid`` and below ``dph_base`` (a real saving); vast ``min_bid`` is per
machine, $/h. The price a plan quotes is what vast will charge per hour: bid + storage for an
interruptible rental, ``dph_total`` for on-demand (:attr:`RentalChoice.price_per_hour_usd`).

A market may also come from an adapter as a lazily parsed sequence that can screen its raw
rows (:class:`ScreenableOffers`): :func:`choose_rental` then ranks light
:class:`OfferSketch` records of the rows that can qualify and builds a full :class:`Offer`
only for the winner, with the same decision as over the fully parsed list.

Why one module over 500 lines: the fast one-pass filter and the explanatory checks
(:func:`offer_matches`, the nearest-miss message) must make the same decisions, and
``tests/core/test_offer_choice_equivalence.py`` holds them to it; keeping both beside the bid
rule and the ranking keys they share makes a drift between them visible in one diff.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import NamedTuple, Protocol, assert_never

from gpubot.commands.types import ResourceOverrides
from gpubot.errors import NoOfferError
from gpubot.models import (
    InterruptibleMode,
    Offer,
    OfferRanking,
    RentalChoice,
    RentalType,
    Requirements,
)
from gpubot.templates import Template

SHORT_JOB_HOURS = 2.0
"""Seed matrix: jobs under 2 h are cheap to retry after an outbid."""
BID_MARGIN_FACTOR = Decimal("1.15")
BID_MARGIN_MIN_USD = Decimal("0.01")
BID_QUANTUM = Decimal("0.001")
"""vast.ai accepts bids in 0.001 $/h steps (0.001-128)."""
_ZERO_USD = Decimal(0)


class OfferSketch(NamedTuple):
    """The fields of one market row that ranking needs, read exactly as the full parse reads
    them (``Offer`` attribute names, so the bid rule and rank keys apply to either).

    A screened market (:class:`ScreenableOffers`) returns one per row that passes every
    rental-type-independent check of :func:`_failures`; ``position`` is the row's index in the
    market, for :meth:`ScreenableOffers.offer_at`.
    """

    position: int
    offer_id: str
    price_per_hour_usd: Decimal
    min_bid_per_hour_usd: Decimal
    compute_per_hour_usd: Decimal | None
    reliability: float
    dlperf: float


class ScreenableOffers(Protocol):
    """A market held as raw rows, parsed into :class:`Offer` objects only on demand.

    Contract (what :func:`choose_rental` relies on for the same decisions as over
    ``list(market)``): iterating yields the parseable rows' offers in row order, each row's
    offer built once (the same object every time); :meth:`screen_offers` drops only rows whose
    offer would fail a rental-type-independent check of :func:`_failures` (or not parse at all).
    """

    def __iter__(self) -> Iterable[Offer]: ...

    def __len__(self) -> int: ...

    def screen_offers(self, req: Requirements) -> tuple[list[OfferSketch], list[int]]:
        """``(sketches, undecided)``: sketches of the rows that certainly pass every check of
        :func:`_candidates`, exact, in row order; the positions of rows the screen cannot
        decide on raw values (unusual field types), also in order. Every other row would
        fail a check or not parse."""
        ...

    def offer_at(self, position: int) -> Offer | None:
        """The offer of row ``position`` (built on first use), None when it does not parse."""
        ...

# Failure categories, in the order they are checked; each has a hint for NoOfferError.
_HINTS: dict[str, str] = {
    "bad_data": "the market returned offers with impossible values",
    "blocked": "the host is on the blocked list",
    "gpu_name": "try more GPU types with gpu=",
    "num_gpus": "try another gpus=",
    "gpu_ram": "lower gpu_ram=",
    "cuda": "pick an image built for an older CUDA",
    "compute_cap": "the template needs a newer GPU architecture",
    "reliability": "the template's min_reliability rules out flaky hosts",
    "price": "raise max_price= (or allow interruptible=yes)",
    "bid": "no interruptible saving on these offers; try interruptible=no",
    "datacenter": "the template allows datacenter hosts only",
    "verified": "only verified hosts are allowed",
    "disk": "lower disk=",
    "bandwidth": "the template needs faster download bandwidth",
}
_LABELS: dict[str, str] = {
    "bad_data": "bad market data",
    "blocked": "blocked host",
    "gpu_name": "GPU type",
    "num_gpus": "GPU count",
    "gpu_ram": "GPU memory",
    "cuda": "CUDA version",
    "compute_cap": "compute capability",
    "reliability": "reliability",
    "price": "price cap",
    "bid": "no bid below on-demand",
    "datacenter": "datacenter only",
    "verified": "verified only",
    "disk": "disk space",
    "bandwidth": "download bandwidth",
}


def bid_for(offer: Offer) -> Decimal | None:
    """The interruptible bid ($/h, compute only) for ``offer``, or None when none can win.

    ``max(min_bid x 1.15, min_bid + $0.01)`` rounded up to $0.001, capped at the on-demand
    compute price (``dph_base``; ``dph_total`` when the offer has no ``dph_base``). None when
    that is not above ``min_bid`` (the bid would lose at once).
    """
    min_bid = offer.min_bid_per_hour_usd
    bid = max(min_bid * BID_MARGIN_FACTOR, min_bid + BID_MARGIN_MIN_USD)
    bid = bid.quantize(BID_QUANTUM, rounding=ROUND_CEILING)
    bid = min(bid, _on_demand_compute(offer))
    if bid <= min_bid or bid <= 0:
        return None
    return bid


def _on_demand_compute(offer: Offer) -> Decimal:
    if offer.compute_per_hour_usd is not None:
        return offer.compute_per_hour_usd
    return offer.price_per_hour_usd


def _charged_price(offer: Offer, rental_type: RentalType) -> Decimal | None:
    """What vast charges per hour while running: bid + storage, or on-demand ``dph_total``.

    None for an interruptible rental without a bid that saves (see the module docstring)."""
    if rental_type is RentalType.ON_DEMAND:
        return offer.price_per_hour_usd
    bid = bid_for(offer)
    if bid is None or bid >= _on_demand_compute(offer):
        return None
    return bid + offer.storage_per_hour_usd


def _bad_data(offer: Offer) -> str | None:
    floats = (
        offer.gpu_ram_gb,
        offer.reliability,
        offer.cuda_max,
        offer.dlperf,
        offer.disk_space_gb,
        offer.inet_down_mbps,
    )
    if any(not math.isfinite(x) for x in floats):
        return "has non-numeric values"
    prices = (offer.price_per_hour_usd, offer.min_bid_per_hour_usd)
    if any(not p.is_finite() for p in prices):
        return "has a non-numeric price"
    if offer.price_per_hour_usd <= 0:
        return f"has an impossible price ${offer.price_per_hour_usd}/h"
    if offer.min_bid_per_hour_usd < 0:
        return "has a negative minimum bid"
    if offer.num_gpus < 1 or offer.gpu_ram_gb <= 0:
        return "reports no GPU"
    if not 0 <= offer.reliability <= 1:
        return f"has an impossible reliability {offer.reliability}"
    return None


def _failures(offer: Offer, req: Requirements, rental_type: RentalType) -> list[tuple[str, str]]:
    """(category, reason) for every requirement ``offer`` fails."""
    out: list[tuple[str, str]] = []
    bad = _bad_data(offer)
    if bad is not None:
        return [("bad_data", f"offer {offer.offer_id} {bad}")]
    if offer.host_id in req.blocked_host_ids:
        out.append(("blocked", f"host {offer.host_id} is blocked"))
    if req.gpu_names and offer.gpu_name not in req.gpu_names:
        out.append(("gpu_name", f"GPU {offer.gpu_name} is not one of {', '.join(req.gpu_names)}"))
    if offer.num_gpus != req.num_gpus:
        out.append(("num_gpus", f"has {offer.num_gpus} GPUs, the job needs {req.num_gpus}"))
    if offer.gpu_ram_gb < req.min_gpu_ram_gb:
        out.append(
            ("gpu_ram", f"{offer.gpu_ram_gb:g} GB per GPU, needs {req.min_gpu_ram_gb:g} GB")
        )
    if offer.cuda_max < req.min_cuda:
        out.append(("cuda", f"CUDA {offer.cuda_max:g}, needs {req.min_cuda:g}"))
    if offer.compute_cap < req.min_compute_cap:
        out.append(
            ("compute_cap", f"compute capability {offer.compute_cap}, needs {req.min_compute_cap}")
        )
    if offer.reliability < req.min_reliability:
        out.append(
            ("reliability", f"reliability {offer.reliability:.3f} < {req.min_reliability:.3f}")
        )
    match rental_type:
        case RentalType.ON_DEMAND:
            price: Decimal | None = offer.price_per_hour_usd
        case RentalType.INTERRUPTIBLE:
            price = _charged_price(offer, rental_type)
            if price is None:
                out.append(
                    (
                        "bid",
                        f"min bid ${offer.min_bid_per_hour_usd}/h leaves no bid below "
                        f"on-demand ${_on_demand_compute(offer)}/h",
                    )
                )
        case _:
            assert_never(rental_type)
    cap = req.max_price_per_hour_usd
    if cap is not None and price is not None and price > cap:
        out.append(("price", f"${price}/h is above the ${cap}/h cap"))
    if req.datacenter_only and not offer.datacenter:
        out.append(("datacenter", "not a datacenter host"))
    if req.verified_only and not offer.verified:
        out.append(("verified", "host is not verified"))
    if offer.disk_space_gb < req.disk_gb:
        out.append(("disk", f"{offer.disk_space_gb:g} GB disk free, needs {req.disk_gb} GB"))
    if offer.inet_down_mbps < req.min_inet_down_mbps:
        out.append(
            (
                "bandwidth",
                f"{offer.inet_down_mbps:g} Mbps down, needs {req.min_inet_down_mbps:g}",
            )
        )
    return out


def _failed_categories(offer: Offer, req: Requirements, rental_type: RentalType) -> list[str]:
    """The categories of :func:`_failures`, in the same order, without formatting reasons."""
    if _bad_data(offer) is not None:
        return ["bad_data"]
    out: list[str] = []
    if offer.host_id in req.blocked_host_ids:
        out.append("blocked")
    if req.gpu_names and offer.gpu_name not in req.gpu_names:
        out.append("gpu_name")
    if offer.num_gpus != req.num_gpus:
        out.append("num_gpus")
    if offer.gpu_ram_gb < req.min_gpu_ram_gb:
        out.append("gpu_ram")
    if offer.cuda_max < req.min_cuda:
        out.append("cuda")
    if offer.compute_cap < req.min_compute_cap:
        out.append("compute_cap")
    if offer.reliability < req.min_reliability:
        out.append("reliability")
    price = _charged_price(offer, rental_type)
    if price is None:
        out.append("bid")
    cap = req.max_price_per_hour_usd
    if cap is not None and price is not None and price > cap:
        out.append("price")
    if req.datacenter_only and not offer.datacenter:
        out.append("datacenter")
    if req.verified_only and not offer.verified:
        out.append("verified")
    if offer.disk_space_gb < req.disk_gb:
        out.append("disk")
    if offer.inet_down_mbps < req.min_inet_down_mbps:
        out.append("bandwidth")
    return out


def offer_matches(
    offer: Offer, req: Requirements, *, rental_type: RentalType = RentalType.ON_DEMAND
) -> list[str]:
    """Why ``offer`` does not satisfy ``req``: one plain reason per failed requirement.

    An empty list means it matches. The price cap applies to the price vast would charge:
    on-demand ``dph_total``, or our bid (:func:`bid_for`) plus storage per hour when
    ``rental_type`` is interruptible. Offers with
    impossible values (price <= 0, NaN, no GPU) never match.
    """
    return [reason for _, reason in _failures(offer, req, rental_type)]


def _effective_price(offer: Offer, rental_type: RentalType) -> Decimal:
    price = _charged_price(offer, rental_type)
    return price if price is not None else offer.price_per_hour_usd


def rank_offers(
    offers: Iterable[Offer],
    ranking: OfferRanking,
    *,
    rental_type: RentalType = RentalType.ON_DEMAND,
) -> list[Offer]:
    """``offers`` sorted best first. Does not filter.

    * ``PRICE``: the price we would pay ($/h: on-demand, or our bid + storage for interruptible)
      ascending, then reliability descending, then offer id.
    * ``DLPERF_PER_USD``: DLPerf per that price descending, then price, then offer id.
    """

    def price_key(o: Offer) -> tuple[Decimal, float, str]:
        return (_effective_price(o, rental_type), -o.reliability, o.offer_id)

    def perf_key(o: Offer) -> tuple[float, Decimal, str]:
        price = _effective_price(o, rental_type)
        per_usd = o.dlperf / float(price) if price > 0 else 0.0
        return (-per_usd, price, o.offer_id)

    match ranking:
        case OfferRanking.PRICE:
            return sorted(offers, key=price_key)
        case OfferRanking.DLPERF_PER_USD:
            return sorted(offers, key=perf_key)
        case _:
            assert_never(ranking)


def decide_rental_type(
    mode: InterruptibleMode, *, expected_hours: float, checkpoints: bool
) -> RentalType:
    """The rental decision matrix; ``YES``/``NO`` force the answer (see module docstring)."""
    match mode:
        case InterruptibleMode.YES:
            return RentalType.INTERRUPTIBLE
        case InterruptibleMode.NO:
            return RentalType.ON_DEMAND
        case InterruptibleMode.AUTO:
            if checkpoints or expected_hours <= SHORT_JOB_HOURS:
                return RentalType.INTERRUPTIBLE
            return RentalType.ON_DEMAND
        case _:
            assert_never(mode)


def choose_rental(
    offers: Sequence[Offer],
    req: Requirements,
    *,
    mode: InterruptibleMode,
    expected_hours: float,
    checkpoints: bool,
    ranking: OfferRanking = OfferRanking.PRICE,
    checkpoint_every: str | None = None,
) -> RentalChoice:
    """The best offer for ``req`` and how to rent it, with the reason as one sentence.

    Filters as :func:`offer_matches` does (blocked hosts and impossible offers are skipped),
    takes the first offer in :func:`rank_offers` order, and re-checks the pick before returning
    it: an offer failing the re-check is never returned. With ``AUTO`` and no matching offer
    that can be bid on below its on-demand price, falls back to on-demand.

    Cost: one pass of plain comparisons over ``offers``; the Decimal price (and the bid, once
    per offer) only for offers passing them; ``min`` instead of a sort; failure reasons only
    when nothing qualifies (for the message). Same decisions as filter + sort + re-check
    (``tests/core/test_offer_choice_equivalence.py``). A :class:`ScreenableOffers` market is
    screened on its raw rows instead and only the winner is built as an :class:`Offer`; the
    whole market is parsed only for the no-offer message, or if the winner's full parse
    disagrees with its sketch (then the choice is made again over the parsed list), so the
    decision is the same as over ``list(offers)``
    (``tests/core/test_offer_screening_equivalence.py``).

    Args:
        checkpoint_every: how often the job checkpoints, for the reason ("50 steps").

    Raises:
        NoOfferError: nothing qualifies; the message names the requirement that ruled out
            the most offers and how to relax it.
    """
    wanted = decide_rental_type(mode, expected_hours=expected_hours, checkpoints=checkpoints)
    pick = _picker(offers, req, ranking)
    choice = pick(wanted)
    fallback = False
    if choice is None and wanted is RentalType.INTERRUPTIBLE and mode is InterruptibleMode.AUTO:
        choice = pick(RentalType.ON_DEMAND)
        wanted, fallback = RentalType.ON_DEMAND, choice is not None
    if choice is None:
        raise NoOfferError(_no_offer_message(offers, req, wanted))
    bid = bid_for(choice) if wanted is RentalType.INTERRUPTIBLE else None
    reason = _reason(
        choice,
        wanted,
        bid,
        mode=mode,
        expected_hours=expected_hours,
        checkpoints=checkpoints,
        checkpoint_every=checkpoint_every,
        fallback=fallback,
    )
    return RentalChoice(offer=choice, rental_type=wanted, bid_per_hour_usd=bid, reason=reason)


def _picker(
    offers: Sequence[Offer], req: Requirements, ranking: OfferRanking
) -> Callable[[RentalType], Offer | None]:
    """``rental_type -> the best qualifying offer or None`` (:func:`_pick`) over ``offers``.

    Candidates are computed once and shared by both rental types. A :class:`ScreenableOffers`
    market is screened instead (:func:`_pick_screened`); if that ever cannot vouch for its
    answer, the market is parsed in full and the plain path decides.
    """
    screen = getattr(offers, "screen_offers", None)
    if screen is None:
        candidates = _candidates(offers, req)
        return lambda rental_type: _pick(candidates, req, rental_type, ranking)
    market: ScreenableOffers = offers  # type: ignore[assignment]
    sketches, undecided = screen(req)
    if undecided:
        sketches = _with_undecided(market, sketches, undecided, req)
    eager: list[Offer] = []

    def pick(rental_type: RentalType) -> Offer | None:
        if not eager:
            try:
                return _pick_screened(market, sketches, req, rental_type, ranking)
            except _SketchMismatch:
                eager.append(_candidates(list(market), req))  # type: ignore[arg-type]
        return _pick(eager[0], req, rental_type, ranking)  # type: ignore[arg-type]

    return pick


class _SketchMismatch(Exception):
    """The winner's full parse does not vouch for its sketch: decide over the parsed list."""


def sketch_of(offer: Offer, position: int) -> OfferSketch:
    """The :class:`OfferSketch` of a parsed offer at ``position`` in its market."""
    return OfferSketch(
        position,
        offer.offer_id,
        offer.price_per_hour_usd,
        offer.min_bid_per_hour_usd,
        offer.compute_per_hour_usd,
        offer.reliability,
        offer.dlperf,
    )


def _with_undecided(
    market: ScreenableOffers, sketches: list[OfferSketch], undecided: list[int],
    req: Requirements,
) -> list[OfferSketch]:
    """``sketches`` plus the undecided rows that pass :func:`_candidates` once parsed, in
    row order."""
    extra: list[OfferSketch] = []
    for position in undecided:
        offer = market.offer_at(position)
        if offer is not None and _candidates((offer,), req):
            extra.append(sketch_of(offer, position))
    if not extra:
        return sketches
    return sorted(sketches + extra, key=lambda sk: sk.position)


def _pick_screened(
    market: ScreenableOffers,
    sketches: list[OfferSketch],
    req: Requirements,
    rental_type: RentalType,
    ranking: OfferRanking,
) -> Offer | None:
    """:func:`_pick` over screened rows: the same bid, price-cap and rank key on the sketches
    (in row order, so ``min`` breaks ties as over the parsed list); only the winner is parsed.

    Raises:
        _SketchMismatch: the winner does not parse, its offer differs from its sketch, or it
            fails the re-check (none of which a correct screen allows).
    """
    priced = _priced(sketches, req, rental_type)  # type: ignore[arg-type]
    if not priced:
        return None
    best: OfferSketch = min(priced, key=_rank_key(ranking))[1]  # type: ignore[assignment]
    offer = market.offer_at(best.position)
    if (
        offer is None
        or sketch_of(offer, best.position) != best
        or not _candidates((offer,), req)
        or _failures(offer, req, rental_type)
    ):
        raise _SketchMismatch(best.offer_id)
    return offer


def _sane(offer: Offer) -> bool:
    """``_bad_data(offer) is None``, without building the message."""
    isfinite = math.isfinite
    price = offer.price_per_hour_usd
    min_bid = offer.min_bid_per_hour_usd
    reliability = offer.reliability
    return (
        isfinite(offer.gpu_ram_gb)
        and isfinite(reliability)
        and isfinite(offer.cuda_max)
        and isfinite(offer.dlperf)
        and isfinite(offer.disk_space_gb)
        and isfinite(offer.inet_down_mbps)
        and price.is_finite()
        and min_bid.is_finite()
        and price > 0
        and min_bid >= 0
        and offer.num_gpus >= 1
        and offer.gpu_ram_gb > 0
        and 0 <= reliability <= 1
    )


def _candidates(offers: Iterable[Offer], req: Requirements) -> list[Offer]:
    """The offers passing every check of :func:`_failures` that does not depend on the rental
    type (all but ``bid`` and ``price``), in input order.

    Plain attribute comparisons first (one pass, no Decimal work, no messages); the data
    sanity check (:func:`_sane`) only for the offers that pass them.
    """
    blocked = req.blocked_host_ids
    names = frozenset(req.gpu_names) if req.gpu_names else None
    num_gpus = req.num_gpus
    min_ram = req.min_gpu_ram_gb
    min_cuda = req.min_cuda
    min_cc = req.min_compute_cap
    min_rel = req.min_reliability
    datacenter_only = req.datacenter_only
    verified_only = req.verified_only
    disk_gb = req.disk_gb
    min_inet = req.min_inet_down_mbps
    out: list[Offer] = []
    for o in offers:
        if (
            o.num_gpus != num_gpus
            or (names is not None and o.gpu_name not in names)
            or o.gpu_ram_gb < min_ram
            or o.reliability < min_rel
            or o.cuda_max < min_cuda
            or o.compute_cap < min_cc
            or (verified_only and not o.verified)
            or (datacenter_only and not o.datacenter)
            or o.disk_space_gb < disk_gb
            or o.inet_down_mbps < min_inet
            or o.host_id in blocked
        ):
            continue
        if _sane(o):
            out.append(o)
    return out


def _interruptible_price(offer: Offer | OfferSketch) -> Decimal | None:
    """``_charged_price(offer, INTERRUPTIBLE)`` with :func:`bid_for` inlined (one bid per offer).

    The bid must stay below the on-demand compute price; a bid capped at it never saves.
    Reads only the three money fields, so it prices an :class:`OfferSketch` the same."""
    min_bid = offer.min_bid_per_hour_usd
    price = offer.price_per_hour_usd
    compute = offer.compute_per_hour_usd
    if compute is None:
        compute, storage = price, _ZERO_USD
    else:
        storage = max(_ZERO_USD, price - compute)  # Offer.storage_per_hour_usd
    bid = max(min_bid * BID_MARGIN_FACTOR, min_bid + BID_MARGIN_MIN_USD).quantize(
        BID_QUANTUM, rounding=ROUND_CEILING
    )
    if bid >= compute or bid <= min_bid or bid <= 0:
        return None
    return bid + storage


def _priced(
    candidates: Iterable[Offer], req: Requirements, rental_type: RentalType
) -> list[tuple[Decimal, Offer]]:
    """(charged price, offer) for the candidates that also pass the bid and price-cap checks.

    Offers or :class:`OfferSketch` records alike (the fields read have the same names)."""
    cap = req.max_price_per_hour_usd
    out: list[tuple[Decimal, Offer]] = []
    if rental_type is RentalType.ON_DEMAND:
        for o in candidates:
            price = o.price_per_hour_usd
            if cap is None or not price > cap:
                out.append((price, o))
    else:
        for o in candidates:
            charged = _interruptible_price(o)
            if charged is not None and (cap is None or not charged > cap):
                out.append((charged, o))
    return out


def _rank_key(ranking: OfferRanking) -> Callable[[tuple[Decimal, Offer]], tuple[object, ...]]:
    """The :func:`rank_offers` key on a precomputed (price, offer) pair."""
    match ranking:
        case OfferRanking.PRICE:
            return lambda po: (po[0], -po[1].reliability, po[1].offer_id)
        case OfferRanking.DLPERF_PER_USD:
            return lambda po: (
                -(po[1].dlperf / float(po[0])) if po[0] > 0 else -0.0,
                po[0],
                po[1].offer_id,
            )
        case _:
            assert_never(ranking)


def _pick(
    candidates: Sequence[Offer],
    req: Requirements,
    rental_type: RentalType,
    ranking: OfferRanking,
) -> Offer | None:
    """The best qualifying offer: the first of ``rank_offers(qualifying)`` (``min`` with the
    same key returns the same, first-in-input-order offer on ties), re-checked with
    :func:`_failures` before it is returned."""
    priced = _priced(candidates, req, rental_type)
    if not priced:
        return None
    key = _rank_key(ranking)
    best = min(priced, key=key)[1]
    # Re-check the pick against the requirements before it is rented (SkyPilot's
    # _offer_matches): ranking must never promote an offer the filter would reject.
    if not _failures(best, req, rental_type):
        return best
    for _, offer in sorted(priced, key=key):  # pragma: no cover - the filter is the re-check
        if not _failures(offer, req, rental_type):
            return offer
    return None


def _no_offer_message(offers: Sequence[Offer], req: Requirements, rental_type: RentalType) -> str:
    """The NoOfferError text: the top three ruling-out requirements, a hint, and the closest
    miss. Costs one full check per offer: only built when nothing qualifies."""
    if not offers:
        return "No offers on the market right now: try again in a few minutes."
    counts: Counter[str] = Counter()
    single: list[Offer] = []
    for offer in offers:
        categories = _failed_categories(offer, req, rental_type)
        counts.update(set(categories))
        if len(categories) == 1 and categories[0] not in ("bad_data", "blocked"):
            single.append(offer)
    kind = "interruptible" if rental_type is RentalType.INTERRUPTIBLE else "on-demand"
    top = counts.most_common(3)
    parts = [f"{_LABELS[c]} ruled out {n}" for c, n in top]
    head = f"No {kind} offer matches ({len(offers)} seen): " + ", ".join(parts) + "."
    if top:
        head += f" Most restrictive: {_LABELS[top[0][0]]}; {_HINTS[top[0][0]]}."
    if single:
        near = min(single, key=lambda o: _effective_price(o, rental_type))
        reason = _failures(near, req, rental_type)[0][1]
        head += (
            f" Closest: {near.gpu_name} at ${_effective_price(near, rental_type)}/h, "
            f"which fails only: {reason}."
        )
    return head


def _pct_below(bid: Decimal, on_demand: Decimal) -> int:
    return int(((on_demand - bid) / on_demand * 100).to_integral_value())


def _hours_phrase(hours: float) -> str:
    if hours < 1:
        return f"about {round(hours * 60)} minutes"
    return f"about {hours:g} h"


def _reason(
    offer: Offer,
    rental_type: RentalType,
    bid: Decimal | None,
    *,
    mode: InterruptibleMode,
    expected_hours: float,
    checkpoints: bool,
    checkpoint_every: str | None,
    fallback: bool,
) -> str:
    on_demand = offer.price_per_hour_usd
    if rental_type is RentalType.INTERRUPTIBLE:
        assert bid is not None
        charged = bid + offer.storage_per_hour_usd
        storage = (
            f" + ${offer.storage_per_hour_usd}/h storage = ${charged}/h"
            if offer.storage_per_hour_usd
            else ""
        )
        saving = (
            f"the bid ${bid}/h{storage} is {_pct_below(charged, on_demand)}% below "
            f"on-demand ${on_demand}/h"
        )
        if mode is InterruptibleMode.YES:
            risk = (
                "an outbid resumes from the last checkpoint"
                if checkpoints
                else "an outbid restarts the job from the beginning"
            )
            return f"Interruptible, as asked with interruptible=yes: {saving}, and {risk}."
        if checkpoints:
            every = f" every {checkpoint_every}" if checkpoint_every else ""
            return (
                f"Interruptible: the job checkpoints{every}, so an outbid costs minutes, "
                f"and {saving}."
            )
        return (
            f"Interruptible: the job should take {_hours_phrase(expected_hours)} "
            f"(under {SHORT_JOB_HOURS:g} h), so an outbid is cheap to retry, and {saving}."
        )
    if mode is InterruptibleMode.NO:
        return f"On-demand, as asked with interruptible=no: ${on_demand}/h, never outbid."
    if fallback:
        return (
            f"On-demand at ${on_demand}/h: no matching offer takes an interruptible bid "
            "below its on-demand price."
        )
    return (
        f"On-demand at ${on_demand}/h: the job runs {_hours_phrase(expected_hours)} and cannot "
        "resume from a checkpoint, so an outbid would lose all its progress."
    )


@dataclass(frozen=True, slots=True)
class RentalPolicy:
    """How a launch wants to rent: the inputs of :func:`choose_rental` besides offers/req."""

    mode: InterruptibleMode
    expected_hours: float
    checkpoints: bool
    ranking: OfferRanking


def requirements_from(
    template: Template | None,
    overrides: ResourceOverrides | None = None,
    *,
    blocked_host_ids: frozenset[str] = frozenset(),
) -> Requirements:
    """The template's resources with the user's overrides applied.

    ``template`` None (``rent``, ``offers``) starts from :class:`Requirements` defaults.
    ``disk_gb`` comes from ``disk=`` or the template. ``blocked_host_ids`` is the engine's
    block list (``[engine] blocked_host_ids``).
    """
    base = Requirements()
    kw: dict[str, object] = {"blocked_host_ids": frozenset(blocked_host_ids)}
    if template is not None:
        r = template.resources
        kw.update(
            gpu_names=r.gpu_names,
            num_gpus=r.num_gpus,
            min_gpu_ram_gb=r.min_gpu_ram_gb,
            min_cuda=r.min_cuda,
            min_compute_cap=r.min_compute_cap,
            min_reliability=r.min_reliability,
            max_price_per_hour_usd=r.max_price_per_hour_usd,
            datacenter_only=r.datacenter_only,
            disk_gb=template.disk_gb,
        )
    if overrides is not None:
        for src, dst in (
            ("gpu_names", "gpu_names"),
            ("num_gpus", "num_gpus"),
            ("min_gpu_ram_gb", "min_gpu_ram_gb"),
            ("max_price_per_hour_usd", "max_price_per_hour_usd"),
            ("disk_gb", "disk_gb"),
        ):
            value = getattr(overrides, src)
            if value is not None:
                kw[dst] = value
    return Requirements(**{**_asdict(base), **kw})  # type: ignore[arg-type]


def policy_from(
    template: Template | None, overrides: ResourceOverrides | None = None
) -> RentalPolicy:
    """Rental mode, expected hours, checkpointing and ranking for a launch.

    ``interruptible=`` and ``hours=`` override the template; without a template (``rent``)
    the box is interactive: AUTO means on-demand unless short, it never checkpoints.
    """
    if template is not None:
        r = template.resources
        mode, hours, ckpt, ranking = r.interruptible, r.expected_hours, r.checkpoints, r.ranking
    else:
        mode, hours, ckpt, ranking = InterruptibleMode.AUTO, 1.0, False, OfferRanking.PRICE
    if overrides is not None:
        if overrides.interruptible is not None:
            mode = overrides.interruptible
        if overrides.hours is not None:
            hours = overrides.hours
    return RentalPolicy(mode=mode, expected_hours=hours, checkpoints=ckpt, ranking=ranking)


def _asdict(req: Requirements) -> dict[str, object]:
    return {name: getattr(req, name) for name in Requirements.__dataclass_fields__}
