"""Requirements -> arguments for ``VastAI.search_offers`` (pure: stdlib and gpubot.models only).

The vastai 1.9.1 SDK, given a *dict* query, adds its own defaults (verified, external=false,
rentable, rented=false) and then ``dict.update(query)``; defaults can therefore be overridden
but never removed. We pass ``no_default=True`` and spell every filter ourselves, so
``verified_only=False`` really drops the ``verified`` filter.

The SDK then sets ``order``, ``type``, ``limit`` and ``allocated_storage`` on the body, so the
wire body is ``search_filters(req)`` plus those four keys.
Values are JSON numbers/bools (not the strings the CLI's string parser produces); GPU names are
exact vast names with spaces (``"RTX 4090"``), never the ``_`` spelling of the query language.
"""

from __future__ import annotations

from typing import Any

from gpubot.models import Requirements

MB_PER_GB = 1000
"""vast's own multiplier for ``gpu_ram`` (GB in the query language -> MB on the wire)."""

DEFAULT_LIMIT = 200


def search_filters(req: Requirements) -> dict[str, Any]:
    """The filter part of the ``/bundles/`` body for ``req`` (no control keys).

    Filters that would not restrict anything (a zero minimum, no GPU names, no price cap) are
    left out. The marketplace is not trusted to apply them exactly: the core re-checks every
    offer (``gpubot.offers``).
    """
    q: dict[str, Any] = {
        "external": {"eq": False},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "num_gpus": {"eq": int(req.num_gpus)},
        "reliability": {"gte": float(req.min_reliability)},
        "disk_space": {"gte": float(req.disk_gb)},
    }
    if req.verified_only:
        q["verified"] = {"eq": True}
    if req.gpu_names:
        q["gpu_name"] = {"in": list(req.gpu_names)}
    if req.min_gpu_ram_gb > 0:
        q["gpu_ram"] = {"gte": float(req.min_gpu_ram_gb) * MB_PER_GB}
    if req.min_cuda > 0:
        q["cuda_max_good"] = {"gte": float(req.min_cuda)}
    if req.min_compute_cap > 0:
        q["compute_cap"] = {"gte": int(req.min_compute_cap)}
    if req.max_price_per_hour_usd is not None:
        q["dph_total"] = {"lte": float(req.max_price_per_hour_usd)}
    if req.datacenter_only:
        q["datacenter"] = {"eq": True}
    if req.min_inet_down_mbps > 0:
        q["inet_down"] = {"gte": float(req.min_inet_down_mbps)}
    blocked = sorted((_host_id_value(h) for h in req.blocked_host_ids), key=str)
    if blocked:
        q["host_id"] = {"notin": blocked}
    return q


def search_body(
    req: Requirements, *, interruptible: bool, limit: int = DEFAULT_LIMIT
) -> dict[str, Any]:
    """Keyword arguments for ``VastAI.search_offers(**search_body(...))``.

    Returns ``{"query": <filters>, "type": "bid"|"on-demand", "order": "dph+",
    "limit": limit, "storage": disk_gb, "no_default": True}``.

    - ``type="bid"`` prices interruptible offers from ``min_bid`` (so the ``dph_total`` cap
      applies to the bid price); ``"on-demand"`` otherwise.
    - ``storage`` (the SDK's ``allocated_storage``) is the job's disk, so ``dph_total`` in the
      reply already includes the storage the job will pay for.
    - ``order="dph+"`` is cheapest first (``[["dph_total","asc"]]`` on the wire).
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    return {
        "query": search_filters(req),
        "type": "bid" if interruptible else "on-demand",
        "order": "dph+",
        "limit": int(limit),
        "storage": float(req.disk_gb),
        "no_default": True,
    }


def _host_id_value(host_id: str) -> int | str:
    """vast host ids are integers; keep anything else as given."""
    return int(host_id) if host_id.isdigit() else host_id
