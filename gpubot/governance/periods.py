"""Budget periods and money helpers: which calendar period a time falls in, and exact USD.

Owns the period vocabulary (``day`` (alias ``today``), ``week``, ``month``; calendar periods in
UTC, weeks from Monday) and the two amount helpers every governance module uses: :func:`dec`
(a ``Decimal`` from a vendor or database number) and :func:`quantize` (to the ledger quantum).
Pure: the standard library and the pure core only, so the renderers may use it too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from gpubot import costs
from gpubot.errors import CommandError

PERIODS = ("day", "week", "month")
"""The budget periods, shortest first (the order limits are listed and checked in)."""
_PERIOD_ALIASES = {"today": "day", "day": "day", "week": "week", "month": "month"}
_ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The start of "all time": a job's cap counts every ledger entry since."""


def normalize_period(period: str) -> str:
    """``day`` (also ``today``), ``week`` or ``month``.

    Raises:
        CommandError: any other value.
    """
    key = _PERIOD_ALIASES.get(period.strip().lower())
    if key is None:
        raise CommandError(f"unknown period {period!r}: use day, week or month")
    return key


def period_start(period: str, now: datetime) -> datetime:
    """The UTC start of the calendar ``period`` (day | week | month) containing ``now``.

    Weeks start on Monday 00:00 UTC. ``now`` must be timezone-aware.

    Raises:
        CommandError: an unknown period. ValueError: a naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("period_start needs an aware datetime")
    key = normalize_period(period)
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if key == "day":
        return day
    if key == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_adjective(period: str) -> str:
    """``daily``, ``weekly`` or ``monthly``.

    Raises:
        CommandError: an unknown period.
    """
    return _ADJECTIVES[normalize_period(period)]


def dec(value: object) -> Decimal:
    """A Decimal from a vendor number (floats go through ``str``); junk raises ValueError."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not an amount: {value!r}")
    try:
        out = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as e:
        raise ValueError(f"not an amount: {value!r}") from e
    if not out.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    return out


def quantize(amount_usd: Decimal) -> Decimal:
    """``amount_usd`` rounded half-up to the ledger quantum (``costs.LEDGER_QUANTUM``)."""
    return amount_usd.quantize(costs.LEDGER_QUANTUM, rounding=ROUND_HALF_UP)
