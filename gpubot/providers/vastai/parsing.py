"""vast.ai reply rows -> domain values (pure: stdlib and gpubot.models only).

Units (vast_api.md §3.4, §4.1): ``gpu_ram`` is MB per GPU (÷1000, vast's own multiplier, gives
GB); ``dph_total``/``min_bid`` are $/h for the whole machine; ``storage_cost`` is $/GB/month;
``inet_*_cost`` is $/GB; ``gpu_util`` is percent; ``start_date`` is epoch seconds. Money is
converted with ``Decimal(str(value))`` so 0.3567 stays 0.3567.

Status mapping (vast_api.md §4.2, §4.3) is :func:`status_from_vast`; values we do not know map
to :attr:`ProviderStatus.UNKNOWN`, never to an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from gpubot.models import InstanceObservation, Offer, ProviderStatus

MB_PER_GB = 1000
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
BANDWIDTH_KEYS = ("inet_up_billed", "inet_down_billed")
"""Cumulative billed traffic counters (not in the official schema; [3P] measured as KB)."""


# ---------------------------------------------------------------------------------- offers


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


# ------------------------------------------------------------------------------- instances


def status_from_vast(row: Mapping[str, Any]) -> ProviderStatus:
    """Map vast's status fields to a :class:`ProviderStatus`. First matching rule wins.

    1. ``actual_status`` ``offline``/``unknown`` -> OFFLINE (no heartbeat; "will never reach
       running" during a poll, §4.2).
    2. ``created`` (or null/``loading``) with ``status_msg`` containing "OCI runtime create
       failed" -> FAILED (dstack's rule, §4.2).
    3. ``running`` -> RUNNING.
    4. Outbid heuristic for interruptible rows (``is_bid`` true), §4.3. vast has no "outbid"
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
    """
    host = row.get("ssh_host")
    port = _int_or_none(row.get("ssh_port"))
    if host and port:
        return str(host), port
    direct_host = row.get("public_ipaddr")
    direct_port = _direct_ssh_port(row.get("ports"))
    if direct_host and direct_port:
        return str(direct_host), direct_port
    return None, None


def observation_from_vast(row: Mapping[str, Any]) -> InstanceObservation:
    """One instance row (``show_instance``/``show_instances``) as an observation.

    ``raw_status`` keeps vast's own status fields and, when present, the bandwidth counters
    ``inet_up_billed``/``inet_down_billed``.

    Raises:
        ValueError: the row has no ``id``.
    """
    if row.get("id") is None:
        raise ValueError("instance row without id")
    host, port = ssh_endpoint(row)
    raw: dict[str, Any] = {key: row.get(key) for key in RAW_STATUS_KEYS}
    for key in BANDWIDTH_KEYS:
        if row.get(key) is not None:
            raw[key] = row[key]
    label = row.get("label")
    return InstanceObservation(
        provider_id=_id_str(row["id"]),
        status=status_from_vast(row),
        label=str(label) if label is not None else None,
        is_bid=bool(row.get("is_bid")),
        price_per_hour_usd=_money(row.get("dph_total")) or Decimal(0),
        storage_per_gb_month_usd=_money(row.get("storage_cost")) or Decimal(0),
        disk_gb=_float(row.get("disk_space")),
        ssh_host=host,
        ssh_port=port,
        gpu_util_pct=_float_or_none(row.get("gpu_util")),
        gpu_name=str(row.get("gpu_name") or ""),
        num_gpus=_int(row.get("num_gpus")) or 1,
        min_bid_per_hour_usd=_money(row.get("min_bid")),
        status_message=str(row.get("status_msg") or ""),
        started_at=_epoch(row.get("start_date")),
        raw_status=raw,
    )


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
    return int(result) if result is not None else None


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
