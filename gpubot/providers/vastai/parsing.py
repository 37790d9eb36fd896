"""vast.ai reply rows -> domain values (pure: stdlib and gpubot.models only).

Units of vast's offer and instance rows: ``gpu_ram`` is MB per GPU (÷1000, vast's own
multiplier, gives GB); ``dph_total``/``min_bid`` are $/h for the whole machine;
``storage_cost`` is $/GB/month; ``inet_*_cost`` is $/GB; ``inet_*_billed`` are cumulative
KILOBYTES (see :data:`BYTES_PER_KB`); ``gpu_util`` is percent; ``start_date`` is epoch
seconds. Money is converted with ``Decimal(str(value))`` so 0.3567 stays 0.3567.

Status mapping (``actual_status``/``intended_status``/``cur_state``, and an outbid bid shown
as stopped while intended to run) is :func:`status_from_vast`; values we do not know map
to :attr:`ProviderStatus.UNKNOWN`, never to an exception.

Why one module over 500 lines: offers and instances share the field readers (money, counters,
bounded strings, ids) that make a malformed row unreadable instead of fatal; splitting the two
row kinds would split those readers or import them back and forth.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, overload

from gpubot.models import InstanceObservation, Offer, ProviderStatus, Requirements
from gpubot.offers import OfferSketch

logger = logging.getLogger(__name__)

MB_PER_GB = 1000
HOURS_PER_STORAGE_MONTH = Decimal(720)
"""vast quotes storage in $/GB/month; a month is 30 days (as gpubot.costs)."""
OCI_FAILURE = "oci runtime create failed"
"""dstack's marker for a container that can never start (``status_msg`` of a ``created`` row)."""

RAW_STATUS_KEYS = (
    "actual_status",
    "cur_state",
    "intended_status",
    "next_state",
    "status_msg",
    "is_bid",
)


# ---------------------------------------------------------------------------------- offers


def offer_from_vast(row: Mapping[str, Any]) -> Offer:
    """One ``/bundles/`` offer row as an :class:`Offer`.

    ``datacenter`` is the SDK-added ``datacenter`` key when it is a bool, else
    ``hosting_type == 1``. ``verified`` is the ``verified`` key when present, else
    ``verification == "verified"``. A missing ``min_bid`` falls back to ``dph_total``.
    ``dph_base`` (on-demand compute without storage) becomes ``compute_per_hour_usd``; the row
    must come from an on-demand search for ``dph_total`` to be the on-demand price.

    Speed (a search can return thousands of rows): JSON floats and ints, what vast sends, take
    a fast path per field; anything else goes through the general converters with the same
    result. ``Decimal(repr(x))`` of a float is ``Decimal(str(x))``.

    Raises:
        ValueError: the row lacks ``id``, ``gpu_name`` or a usable ``dph_total``.
    """
    get = row.get
    offer_id = get("id", _ABSENT)
    if offer_id is _ABSENT:
        offer_id = get("ask_contract_id")
    gpu_name = get("gpu_name")
    if offer_id is None or not gpu_name:
        raise ValueError("offer row without id or gpu_name")
    price = _fmoney(get("dph_total"))
    if price is None:
        raise ValueError(f"offer {offer_id} has no usable dph_total")
    min_bid = _fmoney(get("min_bid"))
    datacenter = get("datacenter")
    if datacenter is not True and datacenter is not False:
        datacenter = _fint(get("hosting_type")) == 1
    verified = get("verified")
    if verified is not True and verified is not False:
        verified = str(get("verification") or "").lower() == "verified"
    reliability = get("reliability")
    if reliability is None:
        reliability = get("reliability2")
    num_gpus = _fint(get("num_gpus"))
    host_id = get("host_id")
    machine_id = get("machine_id")
    return Offer(
        offer_id=str(offer_id) if type(offer_id) is not str else offer_id,
        gpu_name=str(gpu_name) if type(gpu_name) is not str else gpu_name,
        num_gpus=num_gpus or 1,
        gpu_ram_gb=_ffloat(get("gpu_ram")) / MB_PER_GB,
        price_per_hour_usd=price,
        min_bid_per_hour_usd=min_bid if min_bid is not None else price,
        storage_per_gb_month_usd=_rate(get("storage_cost")) or _ZERO_USD,
        upload_per_gb_usd=_rate(get("inet_up_cost")) or _ZERO_USD,
        download_per_gb_usd=_rate(get("inet_down_cost")) or _ZERO_USD,
        reliability=_ffloat(reliability),
        cuda_max=_ffloat(get("cuda_max_good")),
        compute_cap=_fint(get("compute_cap")),
        dlperf=_ffloat(get("dlperf")),
        datacenter=datacenter,
        verified=verified,
        host_id=str(host_id) if type(host_id) is int else _id_str(host_id),
        machine_id=str(machine_id) if type(machine_id) is int else _id_str(machine_id),
        disk_space_gb=_ffloat(get("disk_space")),
        geolocation=str(get("geolocation") or ""),
        inet_down_mbps=_ffloat(get("inet_down")),
        compute_per_hour_usd=_fmoney(get("dph_base")),
    )


_ABSENT: Any = object()
_ZERO_USD = Decimal(0)
_EXACT_INT = 2**53
"""Ints up to this size survive the general path's ``int(float(x))`` unchanged."""


def _fmoney(value: Any) -> Decimal | None:
    """:func:`_money` with a fast path for floats."""
    if type(value) is float:
        return Decimal(repr(value)) if math.isfinite(value) else None
    return _money(value)


_RATES: dict[float, Decimal | None] = {}
_RATES_MAX = 4096


def _rate(value: Any) -> Decimal | None:
    """:func:`_fmoney` for the per-GB rates (storage, traffic), memoised per float value.

    Hosts pick these from a few hundred round values, so most rows hit the memo. Zero is not
    memoised (``-0.0 == 0.0`` but they print differently); the memo is emptied when full."""
    if type(value) is float and value:
        money = _RATES.get(value, _ABSENT)
        if money is _ABSENT:
            if len(_RATES) >= _RATES_MAX:
                _RATES.clear()
            money = _RATES[value] = _fmoney(value)
        return money
    return _fmoney(value)


def _ffloat(value: Any) -> float:
    """:func:`_float` with a fast path for floats and ints."""
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    return _float(value)


def _fint(value: Any) -> int:
    """:func:`_int` with a fast path for exact ints."""
    if type(value) is int and -_EXACT_INT <= value <= _EXACT_INT:
        return value
    return _int(value)


UNPARSEABLE_ROW_ERRORS = (ValueError, TypeError, AttributeError, ArithmeticError)
"""What :func:`offer_from_vast` raises on a malformed row (ArithmeticError: an int too large
for a float); such a row is logged and skipped, never fatal to the search."""
_UNPARSED: Any = object()


def parse_offer_or_skip(row: Mapping[str, Any]) -> Offer | None:
    """:func:`offer_from_vast`, or None (with a warning) for a row that cannot be parsed."""
    try:
        return offer_from_vast(row)
    except UNPARSEABLE_ROW_ERRORS as e:
        logger.warning("skipping unparseable vast.ai offer row: %s", e)
        return None


class VastOffers(Sequence[Offer]):
    """A search reply's offer rows, parsed into :class:`Offer` objects only when used.

    As a sequence it is the list ``[parse_offer_or_skip(r) for r in rows]`` without the
    Nones: the parseable rows' offers in row order, each built once on first access (under a
    lock; the same object every time after). :meth:`screen_offers` lets
    ``gpubot.offers.choose_rental`` rank the rows that can qualify without building an
    :class:`Offer` for each (the :class:`gpubot.offers.ScreenableOffers` contract), so a
    decision over thousands of rows parses only the winner. The rows are kept as given and
    must not change afterwards.
    """

    __slots__ = ("_rows", "_parsed", "_all", "_lock")

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._rows = list(rows)
        self._parsed: list[Any] = [_UNPARSED] * len(self._rows)
        self._all: list[Offer] | None = None
        self._lock = threading.Lock()

    def offer_at(self, position: int) -> Offer | None:
        """The offer of row ``position`` (its index in the reply), None when it does not
        parse (logged once)."""
        parsed = self._parsed[position]
        if parsed is _UNPARSED:
            with self._lock:
                parsed = self._parsed[position]
                if parsed is _UNPARSED:
                    parsed = self._parsed[position] = parse_offer_or_skip(self._rows[position])
        return parsed  # type: ignore[no-any-return]

    def _offers(self) -> list[Offer]:
        offers = self._all
        if offers is None:
            at = self.offer_at
            offers = [o for o in map(at, range(len(self._rows))) if o is not None]
            self._all = offers
        return offers

    def __len__(self) -> int:
        return len(self._offers())

    def __bool__(self) -> bool:
        return any(self.offer_at(i) is not None for i in range(len(self._rows)))

    @overload
    def __getitem__(self, index: int) -> Offer: ...

    @overload
    def __getitem__(self, index: slice) -> list[Offer]: ...

    def __getitem__(self, index: int | slice) -> Offer | list[Offer]:
        return self._offers()[index]

    def __iter__(self) -> Iterator[Offer]:
        return iter(self._offers())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VastOffers | list | tuple):
            return self._offers() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"VastOffers({len(self._rows)} rows)"

    @property
    def row_count(self) -> int:
        """How many rows the reply had, parseable or not (no parsing)."""
        return len(self._rows)

    def screen_offers(self, req: Requirements) -> tuple[list[OfferSketch], list[int]]:
        """``(sketches, undecided)`` for ``req``: see :class:`gpubot.offers.ScreenableOffers`.

        Each row's fields are read as :func:`offer_from_vast` reads them when they have the
        JSON types vast sends (floats and ints, strings, null): ``num_gpus`` ``or 1``,
        ``gpu_ram`` / 1000, ``reliability2`` for a null ``reliability``, ``datacenter`` /
        ``hosting_type``, ``verified`` / ``verification``, a null ``min_bid`` (or a non-finite
        one) as ``dph_total``, money as ``Decimal(repr(x))``. Checks, cheapest rejections
        first: every check of ``gpubot.offers._candidates`` (the data sanity included). A row
        is dropped as soon as one check certainly fails (or it certainly cannot be parsed: no
        id, no name, a non-finite ``dph_total``); a row with a field of any other type
        (an int above 2**53, a price sent as a string, ...) is not judged on that field, and
        unless another check drops it, it is returned as undecided for the full parse.
        Money is converted to Decimal only for rows that pass every other check.
        """
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
        blocked = req.blocked_host_ids
        isfinite = math.isfinite
        exact = _EXACT_INT
        sketches: list[OfferSketch] = []
        undecided: list[int] = []
        for position, row in enumerate(self._rows):
            if type(row) is not dict:
                undecided.append(position)  # the full parse decides (and logs)
                continue
            get = row.get
            unsure = False
            # -- the most selective checks first: GPU count and type
            value = get("num_gpus")
            if type(value) is int and -exact <= value <= exact:
                value = value or 1
                if value != num_gpus or value < 1:
                    continue
            elif value is None:
                if num_gpus != 1:
                    continue
            else:
                unsure = True
            name = get("gpu_name")
            if not name:
                continue  # does not parse
            if type(name) is str:
                if names is not None and name not in names:
                    continue
            else:
                unsure = True
            value = get("reliability")
            if value is None:
                value = get("reliability2")
            kind = type(value)
            if kind is float or (kind is int and -exact <= value <= exact) or value is None:
                reliability = float(value) if value is not None else 0.0
                if not (reliability >= min_rel and 0.0 <= reliability <= 1.0):
                    continue
            else:
                unsure, reliability = True, 0.0
            if verified_only:
                verified = get("verified")
                if verified is not True and verified is not False:
                    verification = get("verification")
                    if not verification:
                        continue
                    if type(verification) is str:
                        if verification.lower() != "verified":
                            continue
                    else:
                        unsure = True
                elif not verified:
                    continue
            if datacenter_only:
                datacenter = get("datacenter")
                if datacenter is not True and datacenter is not False:
                    value = get("hosting_type")
                    if value is None:
                        continue
                    if type(value) is int and -exact <= value <= exact:
                        if value != 1:
                            continue
                    else:
                        unsure = True
                elif not datacenter:
                    continue
            # -- the numeric minimums (and finiteness: the sanity check)
            number = _screen_float(get("gpu_ram"))
            if number is not None:
                number = number / MB_PER_GB
                if not (number >= min_ram and number > 0 and isfinite(number)):
                    continue
            else:
                unsure = True
            number = _screen_float(get("cuda_max_good"))
            if number is not None:
                if not (number >= min_cuda and isfinite(number)):
                    continue
            else:
                unsure = True
            value = get("compute_cap")
            if type(value) is int and -exact <= value <= exact:
                if value < min_cc:
                    continue
            elif value is None:
                if 0 < min_cc:
                    continue
            else:
                unsure = True
            number = _screen_float(get("disk_space"))
            if number is not None:
                if not (number >= disk_gb and isfinite(number)):
                    continue
            else:
                unsure = True
            number = _screen_float(get("inet_down"))
            if number is not None:
                if not (number >= min_inet and isfinite(number)):
                    continue
            else:
                unsure = True
            if blocked:
                host_id = get("host_id")
                if (str(host_id) if type(host_id) is int else _id_str(host_id)) in blocked:
                    continue
            dlperf = _screen_float(get("dlperf"))
            if dlperf is not None:
                if not isfinite(dlperf):
                    continue
            else:
                unsure, dlperf = True, 0.0
            # -- identity and money (the sanity check's price > 0, min_bid >= 0)
            offer_id = get("id", _ABSENT)
            if offer_id is _ABSENT:
                offer_id = get("ask_contract_id")
            if offer_id is None:
                continue  # does not parse
            value = get("dph_total")
            if type(value) is float:
                if not isfinite(value) or value <= 0:
                    continue  # does not parse / impossible price
            else:
                unsure = True
            if unsure:
                undecided.append(position)
                continue
            price = Decimal(repr(value))
            value = get("min_bid")
            if type(value) is float and isfinite(value):
                if value < 0:
                    continue
                min_bid = Decimal(repr(value))
            elif value is None or type(value) is float:
                min_bid = price
            else:
                undecided.append(position)
                continue
            value = get("dph_base")
            if type(value) is float:
                compute = Decimal(repr(value)) if isfinite(value) else None
            elif value is None:
                compute = None
            else:
                undecided.append(position)
                continue
            sketches.append(
                OfferSketch(
                    position,
                    offer_id if type(offer_id) is str else str(offer_id),
                    price,
                    min_bid,
                    compute,
                    reliability,
                    dlperf,
                )
            )
        return sketches, undecided


def _screen_float(value: Any) -> float | None:
    """``_ffloat(value)`` when that is certain without the general converter: floats, ints
    up to 2**53, null (0.0); None for any other value (undecided)."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int and -_EXACT_INT <= value <= _EXACT_INT:
        return float(value)
    if value is None:
        return 0.0
    return None


# ------------------------------------------------------------------------------- instances


def status_from_vast(row: Mapping[str, Any]) -> ProviderStatus:
    """Map vast's status fields to a :class:`ProviderStatus`. First matching rule wins.

    1. ``actual_status`` ``offline``/``unknown`` -> OFFLINE (no heartbeat; "will never reach
       running" during a poll).
    2. ``created`` (or null/``loading``) with ``status_msg`` containing "OCI runtime create
       failed" -> FAILED (dstack's rule).
    3. ``running`` -> RUNNING.
    4. Outbid heuristic for interruptible rows (``is_bid`` true). vast has no "outbid"
       field; an outbid instance is *paused*: it moves to ``stopped`` and is not destroyed.
       OUTBID when either
       - ``cur_state == next_state == "stopped"`` (dstack's interruption test; it cannot tell
         our own stop apart, so a caller that stopped a bid instance itself should read OUTBID
         as STOPPED), or
       - ``intended_status == "running"`` but the contract is ``stopped`` (or, without a
         ``cur_state``, the container is ``stopped``): "Scheduling", the GPU could not be
         (re)acquired. An ``exited`` container on a contract that is still ``running`` is the
         job's own exit (EXITED), not an outbid.
    5. ``stopped`` -> STOPPED (on-demand, or a bid row the rule above did not claim).
       ``frozen`` (paused with memory, only on request) -> STOPPED as well.
    6. ``exited`` -> EXITED.
    7. null, ``created``, ``loading``, ``rebooting`` -> PROVISIONING.
    8. anything else -> UNKNOWN (the caller treats it like PROVISIONING until a deadline).
    """
    actual = _norm(row.get("actual_status"))
    cur = _norm(row.get("cur_state"))
    intended = _norm(row.get("intended_status"))
    nxt = _norm(row.get("next_state"))
    message = str(row.get("status_msg") or "").lower()
    is_bid = bool(row.get("is_bid"))

    if actual in ("offline", "unknown"):
        return ProviderStatus.OFFLINE
    if actual in (None, "created", "loading") and OCI_FAILURE in message:
        return ProviderStatus.FAILED
    if actual == "running":
        return ProviderStatus.RUNNING
    if is_bid:
        paused_contract = cur == "stopped" and nxt == "stopped"
        scheduling = intended == "running" and (
            cur == "stopped" or (cur is None and actual == "stopped")
        )
        if paused_contract or scheduling:
            return ProviderStatus.OUTBID
    if actual in ("stopped", "frozen"):
        return ProviderStatus.STOPPED
    if actual == "exited":
        return ProviderStatus.EXITED
    if actual in (None, "created", "loading", "rebooting"):
        return ProviderStatus.PROVISIONING
    return ProviderStatus.UNKNOWN


def ssh_endpoint(row: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """``(host, port)`` for SSH, or ``(None, None)`` when the row has none yet.

    Prefers the proxy pair ``ssh_host``/``ssh_port`` as ``VastAI.ssh_url`` does, then the direct
    pair ``public_ipaddr`` + ``ports["22/tcp"][0]["HostPort"]`` (HostPort is a string). Unlike
    ``ssh_url`` the host and port always come from the same pair.
    A host that is not a plain hostname/IP (at most 255 characters, the ``ssh_host`` column) or a
    port outside 1..65535 counts as absent.
    """
    host = _host(row.get("ssh_host"))
    port = _port(row.get("ssh_port"))
    if host and port:
        return host, port
    direct_host = _host(row.get("public_ipaddr"))
    direct_port = _port(_direct_ssh_port(row.get("ports")))
    if direct_host and direct_port:
        return direct_host, direct_port
    return None, None


def _host(value: Any) -> str | None:
    if not isinstance(value, str) or not _HOST_RE.match(value.strip()):
        return None
    return value.strip()


def _port(value: Any) -> int | None:
    return _bounded_int(value, 1, 65535) if value is not None else None


class RowRejected(ValueError):
    """A field of an instance row failed validation. The message names the field only (values
    may be anything a host typed, so they are never logged)."""

    def __init__(self, field_name: str) -> None:
        super().__init__(f"field {field_name!r} failed validation")
        self.field_name = field_name


MAX_PRICE_PER_HOUR_USD = Decimal(1000)
"""Upper bound for any $/h (or $/GB/month) field. vast's dearest machines (8x H200) rent for a
few tens of $/h; anything above is junk and would overflow NUMERIC(18, 8) long before 1e12."""
MAX_COUNTER_KB = 10**15
"""Upper bound of the traffic counters (an exabyte): far beyond any rental, far below BIGINT."""
BYTES_PER_KB = 1000
"""The ``inet_*_billed`` counters are KILOBYTES of 1000 bytes: not in vast's schema; measured by
third-party users of the live API (dstack's vastai backend, gpuhunt), and vast bills traffic per
decimal GB (10^9 bytes), so the decimal kilobyte is the consistent reading."""
MAX_ID = 2**63 - 1
MAX_DISK_GB = 1_000_000.0
# Column lengths of what reconcile stores (gpubot/db/tables.py): InstanceRow.label String(128),
# ssh_host String(255), gpu_name String(64), provider_id String(64); messages are bounded for
# display and for the pull_error column.
MAX_LABEL_CHARS = 128
MAX_HOST_CHARS = 255
MAX_GPU_NAME_CHARS = 64
MAX_MESSAGE_CHARS = 500
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-:\[\]]{1,255}$")
PULL_ERROR_MARKERS = (
    "pull access denied",
    "manifest unknown",
    "repository does not exist",
    "failed to pull",
    "error pulling image",
    "no such image",
)
"""Docker daemon messages for an image that cannot be pulled (moby's own wording, e.g. "Error
response from daemon: pull access denied for x, repository does not exist or may require
'docker login'" and "manifest for x:y not found: manifest unknown"). vast copies docker's
errors into ``status_msg`` (vast docs: it "may contain docker errors")."""


def observation_from_vast(row: Any) -> InstanceObservation:
    """One instance row (``show_instance``/``show_instances``) as an observation. Never raises.

    Every field is validated where it is read: prices must be finite and within
    0..:data:`MAX_PRICE_PER_HOUR_USD`, traffic counters finite, non-negative and at most
    :data:`MAX_COUNTER_KB`; strings are stripped of control characters and cut to the column
    they are stored in; ids are positive integers. Soft fields are cleared rather than
    trusted (a bad ``gpu_util`` is no sample, a bad ``ssh_port`` no endpoint). A bad price or
    counter (which would be metered) makes the whole row *unreadable*: the observation then
    has ``readable=False``, status UNKNOWN, only the id and a cleaned label, and the caller
    must treat the instance as existing-but-unknown (never as gone). A row without a usable id
    gives ``provider_id=""`` and ``readable=False``.

    Money: ``price_per_hour_usd`` is ``dph_total`` (all-in: compute + storage, vast docs and
    the ``vastai`` ``Instance`` dataclass: "$/hr, current price incl. storage");
    ``compute_per_hour_usd`` is ``dph_total - storage_total_cost`` (``storage_total_cost`` is
    the storage part in $/h; without it ``storage_cost`` $/GB/month x ``disk_space`` / 720 h),
    so storage, metered on its own for the whole life, is not counted twice while running.
    ``dph_base`` is not used: it omits vast's platform fee where one applies.
    """
    if not isinstance(row, Mapping):
        return _unreadable("", None)
    try:
        provider_id = _instance_id(row.get("id"))
    except RowRejected:
        logger.warning("vast instance row without a usable id: skipped")
        return _unreadable("", None)
    label = _text_or_none(row.get("label"), MAX_LABEL_CHARS)
    try:
        return _parse_instance(row, provider_id, label)
    except RowRejected as e:
        logger.warning("vast instance %s: %s; row skipped this tick", provider_id, e)
        return _unreadable(provider_id, label)


def _parse_instance(
    row: Mapping[str, Any], provider_id: str, label: str | None
) -> InstanceObservation:
    total = _price(row, "dph_total")
    storage_month = _price(row, "storage_cost")
    disk_gb = _bounded_float(row.get("disk_space"), 0.0, MAX_DISK_GB) or 0.0
    storage_hour = _price(row, "storage_total_cost")
    if storage_hour is None and storage_month is not None:
        storage_hour = storage_month * Decimal(repr(disk_gb)) / HOURS_PER_STORAGE_MONTH
    compute = None
    if total is not None:
        compute = max(Decimal(0), total - (storage_hour or Decimal(0)))
    status = status_from_vast(row)
    message = _text(row.get("status_msg"), MAX_MESSAGE_CHARS)
    host, port = ssh_endpoint(row)
    raw: dict[str, Any] = {
        key: _text_or_none(row.get(key), MAX_MESSAGE_CHARS) for key in RAW_STATUS_KEYS
    }
    raw["is_bid"] = bool(row.get("is_bid"))
    return InstanceObservation(
        provider_id=provider_id,
        status=status,
        label=label,
        is_bid=bool(row.get("is_bid")),
        price_per_hour_usd=total or Decimal(0),
        storage_per_gb_month_usd=storage_month or Decimal(0),
        disk_gb=disk_gb,
        ssh_host=host,
        ssh_port=port,
        gpu_util_pct=gpu_util_sample(row),
        gpu_name=_text(row.get("gpu_name"), MAX_GPU_NAME_CHARS),
        num_gpus=_bounded_int(row.get("num_gpus"), 1, 64) or 1,
        min_bid_per_hour_usd=_price(row, "min_bid"),
        status_message=message,
        started_at=_epoch(row.get("start_date")),
        raw_status=raw,
        compute_per_hour_usd=compute,
        bytes_up_billed=_counter_bytes(row, "inet_up_billed"),
        bytes_down_billed=_counter_bytes(row, "inet_down_billed"),
        pull_error=pull_error_of(status, message),
    )


def _unreadable(provider_id: str, label: str | None) -> InstanceObservation:
    return InstanceObservation(
        provider_id=provider_id,
        status=ProviderStatus.UNKNOWN,
        label=label,
        is_bid=False,
        price_per_hour_usd=Decimal(0),
        readable=False,
    )


def gpu_util_sample(row: Mapping[str, Any]) -> float | None:
    """``gpu_util`` in percent, or None when the host sent no sample.

    No sample: null, not a finite number in 0..100, or the ``0.0``/``0.0`` util/temperature pair
    that some hosts report when they have no reading (third-party observation of the live API,
    dstack's vastai backend notes; a powered GPU never reads 0 °C). A real idle GPU reports
    ``0.0`` with a real temperature and counts as a sample.
    """
    util = _bounded_float(row.get("gpu_util"), 0.0, 100.0)
    if util is None:
        return None
    if util == 0.0:
        temp = _float_or_none(row.get("gpu_temp"))
        if temp is not None and temp == 0.0:
            return None
    return util


def pull_error_of(status: ProviderStatus, status_message: str) -> str | None:
    """``status_message`` when it reports an image pull failure of a not-yet-running instance."""
    if status is ProviderStatus.RUNNING or not status_message:
        return None
    lowered = status_message.lower()
    if any(marker in lowered for marker in PULL_ERROR_MARKERS) or (
        "error response from daemon" in lowered and "not found" in lowered
    ):
        return status_message
    return None


def _instance_id(value: Any) -> str:
    """A positive integer id as a string (``123.0`` and ``"123"`` accepted)."""
    if isinstance(value, bool):
        raise RowRejected("id")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise RowRejected("id")
    if not 0 < number <= MAX_ID:
        raise RowRejected("id")
    return str(number)


def _price(row: Mapping[str, Any], key: str) -> Decimal | None:
    """A $ field: None when absent/null; :class:`RowRejected` when present but not a finite
    number within 0..MAX_PRICE_PER_HOUR_USD."""
    value = row.get(key)
    if value is None:
        return None
    money = _money(value) if isinstance(value, int | float | str | Decimal) else None
    if money is None or not Decimal(0) <= money <= MAX_PRICE_PER_HOUR_USD:
        raise RowRejected(key)
    return money


def _counter_bytes(row: Mapping[str, Any], key: str) -> int | None:
    """A cumulative traffic counter (kilobytes on the wire) in bytes; None when absent."""
    value = row.get(key)
    if value is None:
        return None
    amount = _money(value) if isinstance(value, int | float | str | Decimal) else None
    if amount is None or not Decimal(0) <= amount <= MAX_COUNTER_KB:
        raise RowRejected(key)
    return int(amount * BYTES_PER_KB)


def _bounded_float(value: Any, lo: float, hi: float) -> float | None:
    result = _float_or_none(value)
    if result is None or not math.isfinite(result) or not lo <= result <= hi:
        return None
    return result


def _bounded_int(value: Any, lo: int, hi: int) -> int | None:
    result = _bounded_float(value, lo, hi)
    return int(result) if result is not None else None


def _text(value: Any, max_chars: int) -> str:
    """Printable text: str/number values only; control, format and unassigned characters
    (anything ``str.isprintable`` refuses: escapes, bidi overrides) become spaces; cut to fit."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value)[: max_chars * 4])
    return text.strip()[:max_chars].strip()


def _text_or_none(value: Any, max_chars: int) -> str | None:
    if value is None:
        return None
    return _text(value, max_chars) or None


# --------------------------------------------------------------------------------- helpers


def _norm(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    return text or None


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


def _direct_ssh_port(ports: Any) -> int | None:
    if not isinstance(ports, Mapping):
        return None
    bindings = ports.get("22/tcp")
    if not isinstance(bindings, list) or not bindings:
        return None
    first = bindings[0]
    if not isinstance(first, Mapping):
        return None
    return _int_or_none(first.get("HostPort"))


def _epoch(value: Any) -> datetime | None:
    seconds = _float_or_none(value)
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
