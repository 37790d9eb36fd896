"""The vast.ai query semantics the simulator serves (offer search, instance listing). Pure.

A query is a flat dict ``{column: {op: value}}`` plus control keys. Operators: ``eq``, ``neq``,
``gt``, ``gte``, ``lt``, ``lte``, ``in``, ``notin``. Numbers may arrive as strings. A row that
lacks a column (or has null there) fails every operator except ``neq``/``notin`` (and ``eq``/
``in`` with null).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from typing import Any

OPERATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})
CONTROL_KEYS = frozenset({
    "order", "type", "limit", "allocated_storage", "disable_bundling", "extra_ids",
    "show_incompatible", "sort_option", "gpu_option", "select_cols", "template_id",
})
OFFER_ALIASES = {
    "reliability2": "reliability", "dphtotal": "dph_total", "gpu_totalram": "gpu_total_ram",
    "ubuntu_version": "os_version", "driver_version": "driver_vers",
    "cuda_vers": "cuda_max_good", "dph": "dph_total", "dlperf_usd": "dlperf_per_dphtotal",
    "flops_usd": "flops_per_dphtotal", "display_active": "gpu_display_active",
    "target_reliability": "expected_reliability",
}
IGNORED_OFFER_COLUMNS = frozenset({"rented"})
"""The real backend does not filter by ``rented`` (rented offers are simply not listed)."""


class QueryError(ValueError):
    """The query is malformed; the message is safe to return to the client."""


def _coerce(value: Any, like: Any) -> Any:
    """Coerce a query value to the type of the row value ``like`` (strings → numbers)."""
    if isinstance(like, bool):
        if isinstance(value, str):
            return value.strip().lower() in {"true", "1", "yes"}
        return bool(value)
    if isinstance(like, int | float) and isinstance(value, str):
        try:
            return float(value)
        except ValueError as e:
            raise QueryError(f"invalid numeric value {value!r}") from e
    return value


def _match_one(row_value: Any, op: str, value: Any, *, geo: bool = False) -> bool:
    if op in ("in", "notin"):
        if not isinstance(value, list):
            value = [value]
        hit = any(_equal(row_value, v, geo=geo) for v in value)
        return hit if op == "in" else not hit
    if op == "eq":
        return _equal(row_value, value, geo=geo)
    if op == "neq":
        return not _equal(row_value, value, geo=geo)
    if row_value is None or value is None:
        return False
    value = _coerce(value, row_value)
    try:
        if op == "gt":
            return bool(row_value > value)
        if op == "gte":
            return bool(row_value >= value)
        if op == "lt":
            return bool(row_value < value)
        if op == "lte":
            return bool(row_value <= value)
    except TypeError:
        return False
    raise QueryError(f"unknown operator {op!r}")


def _equal(row_value: Any, value: Any, *, geo: bool = False) -> bool:
    if row_value is None or value is None:
        return row_value is None and value is None
    if geo and isinstance(value, str) and isinstance(row_value, str):
        code = value.strip()
        if len(code) == 2:
            return row_value.upper().endswith(", " + code.upper())
        return row_value.lower() == code.lower()
    try:
        return bool(row_value == _coerce(value, row_value))
    except QueryError:
        return False


def offer_column(row: dict[str, Any], column: str, now: float) -> tuple[Any, bool]:
    """(value, is_geolocation) of a (possibly virtual) offer column."""
    column = OFFER_ALIASES.get(column, column)
    if column == "verified":
        return row.get("verification") == "verified", False
    if column == "datacenter":
        return row.get("hosting_type") == 1, False
    if column == "duration":
        return float(row.get("end_date", now)) - now, False
    if column == "geolocation":
        return row.get("geolocation"), True
    return row.get(column), False


def check_ops(column: str, spec: Any) -> dict[str, Any]:
    """Validate one filter entry and return it; raises QueryError when malformed."""
    if not isinstance(spec, dict):
        raise QueryError(f"filter for {column} must be an object of operators")
    for op in spec:
        if op not in OPERATORS:
            raise QueryError(f"Unknown operator {op!r} for {column}")
    return spec


def filter_offers(rows: Iterable[dict[str, Any]], query: dict[str, Any],
                  now: float) -> list[dict[str, Any]]:
    """Rows that satisfy every filter of ``query`` (control keys are ignored here)."""
    filters = [(c, check_ops(c, s)) for c, s in query.items()
               if c not in CONTROL_KEYS and c not in IGNORED_OFFER_COLUMNS]
    out = []
    for row in rows:
        ok = True
        for column, spec in filters:
            value, geo = offer_column(row, column, now)
            if not all(_match_one(value, op, v, geo=geo) for op, v in spec.items()):
                ok = False
                break
        if ok:
            out.append(row)
    return out


def sort_rows(rows: list[dict[str, Any]], order: list[Any],
              column: Callable[[dict[str, Any], str], Any]) -> list[dict[str, Any]]:
    """Stable multi-key sort; ``order`` items are ``[col, "asc"|"desc"]`` or
    ``{"col":..,"dir":..}``. Nulls sort last in either direction."""
    keys: list[tuple[str, bool]] = []
    for item in order or []:
        if isinstance(item, dict):
            col, direction = str(item.get("col")), str(item.get("dir", "asc"))
        elif isinstance(item, list | tuple) and item:
            col = str(item[0])
            direction = str(item[1]) if len(item) > 1 else "asc"
        else:
            raise QueryError(f"bad order entry {item!r}")
        keys.append((col, direction.lower().startswith("desc")))
    result = list(rows)
    for col, desc in reversed(keys):
        present = [r for r in result if column(r, col) is not None]
        missing = [r for r in result if column(r, col) is None]
        try:
            present.sort(key=lambda r, c=col: column(r, c), reverse=desc)
        except TypeError:
            present.sort(key=lambda r, c=col: str(column(r, c)), reverse=desc)
        result = present + missing
    return result


INSTANCE_UNFILTERABLE = frozenset({"dph_total", "num_gpus"})


def filter_instances(rows: Iterable[dict[str, Any]],
                     select_filters: dict[str, Any]) -> list[dict[str, Any]]:
    """Instance rows matching ``select_filters`` (``/api/v1/instances``); computed columns
    raise QueryError."""
    if not isinstance(select_filters, dict):
        raise QueryError("select_filters must be an object")
    for column, spec in select_filters.items():
        if column in INSTANCE_UNFILTERABLE:
            raise QueryError(f"{column} is not a valid search key")
        check_ops(column, spec)
    out = []
    for row in rows:
        if all(_match_one(row.get(c), op, v) for c, spec in select_filters.items()
               for op, v in spec.items()):
            out.append(row)
    return out


def encode_token(offset: int) -> str:
    """Opaque page cursor for ``next_token``."""
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_token(token: str) -> int:
    """Offset from a cursor; raises QueryError(``invalid_token``) for anything else."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = int(data["offset"])
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise QueryError("invalid_token") from e
    if offset < 0:
        raise QueryError("invalid_token")
    return offset
