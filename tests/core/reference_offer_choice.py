"""REFERENCE COPY, test-only: the offer choice and vast offer parsing as of commit e161c6d.

Frozen copy of ``gpubot/offers.py`` (decision functions) and of the offer part of
``gpubot/providers/vastai/parsing.py`` from before the speed-up, kept verbatim so that
``test_offer_choice_equivalence.py`` can check that the fast implementation makes the same
decisions (same offer, rental type, bid, reason, and the same "no offer" message). Do not edit
it to follow later changes: a deliberate change of decisions updates the test instead.
"""

# ruff: noqa
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import assert_never

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

    Filters with :func:`offer_matches` (blocked hosts and impossible offers are skipped),
    ranks with :func:`rank_offers`, and re-checks the pick before returning it: an offer
    failing the re-check is never returned. With ``AUTO`` and no matching offer that can be
    bid on below its on-demand price, falls back to on-demand.

    Args:
        checkpoint_every: how often the job checkpoints, for the reason ("50 steps").

    Raises:
        NoOfferError: nothing qualifies; the message names the requirement that ruled out
            the most offers and how to relax it.
    """
    wanted = decide_rental_type(mode, expected_hours=expected_hours, checkpoints=checkpoints)
    choice = _pick(offers, req, wanted, ranking)
    fallback = False
    if choice is None and wanted is RentalType.INTERRUPTIBLE and mode is InterruptibleMode.AUTO:
        choice = _pick(offers, req, RentalType.ON_DEMAND, ranking)
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


def _pick(
    offers: Sequence[Offer], req: Requirements, rental_type: RentalType, ranking: OfferRanking
) -> Offer | None:
    qualifying = [o for o in offers if not _failures(o, req, rental_type)]
    for offer in rank_offers(qualifying, ranking, rental_type=rental_type):
        # Re-check the pick against the requirements before it is rented (SkyPilot's
        # _offer_matches): ranking must never promote an offer the filter would reject.
        if not offer_matches(offer, req, rental_type=rental_type):
            return offer
    return None


def _no_offer_message(offers: Sequence[Offer], req: Requirements, rental_type: RentalType) -> str:
    if not offers:
        return "No offers on the market right now: try again in a few minutes."
    counts: Counter[str] = Counter()
    for offer in offers:
        for category in {c for c, _ in _failures(offer, req, rental_type)}:
            counts[category] += 1
    kind = "interruptible" if rental_type is RentalType.INTERRUPTIBLE else "on-demand"
    top = counts.most_common(3)
    parts = [f"{_LABELS[c]} ruled out {n}" for c, n in top]
    head = f"No {kind} offer matches ({len(offers)} seen): " + ", ".join(parts) + "."
    if top:
        head += f" Most restrictive: {_LABELS[top[0][0]]}; {_HINTS[top[0][0]]}."
    near = _nearest_miss(offers, req, rental_type)
    if near is not None:
        offer, reason = near
        head += (
            f" Closest: {offer.gpu_name} at ${_effective_price(offer, rental_type)}/h, "
            f"which fails only: {reason}."
        )
    return head


def _nearest_miss(
    offers: Sequence[Offer], req: Requirements, rental_type: RentalType
) -> tuple[Offer, str] | None:
    single = [(o, f) for o in offers if len(f := _failures(o, req, rental_type)) == 1]
    single = [(o, f) for o, f in single if f[0][0] not in ("bad_data", "blocked")]
    if not single:
        return None
    offer, failures = min(single, key=lambda of: _effective_price(of[0], rental_type))
    return offer, failures[0][1]


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




# ----------------------------------------------------------- vast offer parsing (old copy)
from collections.abc import Mapping
from decimal import InvalidOperation
from typing import Any

MB_PER_GB = 1000


def offer_from_vast(row: Mapping[str, Any]) -> Offer:
    """One ``/bundles/`` offer row as an :class:`Offer`.

    ``datacenter`` is the SDK-added ``datacenter`` key when it is a bool, else
    ``hosting_type == 1``. ``verified`` is the ``verified`` key when present, else
    ``verification == "verified"``. A missing ``min_bid`` falls back to ``dph_total``.
    ``dph_base`` (on-demand compute without storage) becomes ``compute_per_hour_usd``; the row
    must come from an on-demand search for ``dph_total`` to be the on-demand price.

    Raises:
        ValueError: the row lacks ``id``, ``gpu_name`` or a usable ``dph_total``.
    """
    offer_id = row.get("id", row.get("ask_contract_id"))
    if offer_id is None or not row.get("gpu_name"):
        raise ValueError("offer row without id or gpu_name")
    price = _money(row.get("dph_total"))
    if price is None:
        raise ValueError(f"offer {offer_id} has no usable dph_total")
    min_bid = _money(row.get("min_bid"))
    datacenter = row.get("datacenter")
    if not isinstance(datacenter, bool):
        datacenter = _int(row.get("hosting_type")) == 1
    verified = row.get("verified")
    if not isinstance(verified, bool):
        verified = str(row.get("verification") or "").lower() == "verified"
    reliability = row.get("reliability")
    if reliability is None:
        reliability = row.get("reliability2")
    return Offer(
        offer_id=str(offer_id),
        gpu_name=str(row["gpu_name"]),
        num_gpus=_int(row.get("num_gpus")) or 1,
        gpu_ram_gb=_float(row.get("gpu_ram")) / MB_PER_GB,
        price_per_hour_usd=price,
        min_bid_per_hour_usd=min_bid if min_bid is not None else price,
        storage_per_gb_month_usd=_money(row.get("storage_cost")) or Decimal(0),
        upload_per_gb_usd=_money(row.get("inet_up_cost")) or Decimal(0),
        download_per_gb_usd=_money(row.get("inet_down_cost")) or Decimal(0),
        reliability=_float(reliability),
        cuda_max=_float(row.get("cuda_max_good")),
        compute_cap=_int(row.get("compute_cap")),
        dlperf=_float(row.get("dlperf")),
        datacenter=datacenter,
        verified=verified,
        host_id=_id_str(row.get("host_id")),
        machine_id=_id_str(row.get("machine_id")),
        disk_space_gb=_float(row.get("disk_space")),
        geolocation=str(row.get("geolocation") or ""),
        inet_down_mbps=_float(row.get("inet_down")),
        compute_per_hour_usd=_money(row.get("dph_base")),
    )


def _money(value: Any) -> Decimal | None:
    """``Decimal(str(value))``; None for null, bools or unparseable values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def _float_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float:
    result = _float_or_none(value)
    return result if result is not None else 0.0


def _int_or_none(value: Any) -> int | None:
    result = _float_or_none(value)
    return int(result) if result is not None and math.isfinite(result) else None


def _int(value: Any) -> int:
    result = _int_or_none(value)
    return result if result is not None else 0


def _id_str(value: Any) -> str:
    """Ids as strings; ``123.0`` (a float id) becomes ``"123"``."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


