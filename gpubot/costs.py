"""Cost math: compute, storage and bandwidth charges, estimates, budget verdicts, display.

Pure: standard library only. Money is ``Decimal`` USD throughout.

Units and rounding rules:

* An hour is 3600 s. A storage month is **30 days = 720 h** (vast.ai quotes storage in
  $/GB/month). A bandwidth GB is **10^9 bytes** (decimal GB, as vast.ai bills traffic).
* Ledger amounts (what the functions return) are rounded half-up to
  :data:`LEDGER_QUANTUM` = 10^-8 USD, so many small per-tick charges add up without drift.
  Sum ledger amounts first and round only for display.
* Display (:func:`format_usd`) rounds half-up to cents; a non-zero amount below one cent is
  shown with 4 decimal places (``$0.0042``), and below $0.0001 as ``under $0.0001`` (never a
  bare ``<``, which starts markup in Slack's mrkdwn).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from gpubot.models import RentalChoice

LEDGER_QUANTUM = Decimal("0.00000001")
SECONDS_PER_HOUR = Decimal(3600)
HOURS_PER_STORAGE_MONTH = Decimal(720)
"""vast.ai storage is priced per GB per month; a month is taken as 30 days."""
BYTES_PER_GB = Decimal(10) ** 9
BUDGET_THRESHOLDS_PCT: tuple[int, ...] = (50, 80, 100)
"""Budget alerts at 50 %, 80 % and 100 %; at 100 % the job is stopped (checkpoint, destroy)."""

_CENT = Decimal("0.01")
_SUB_CENT = Decimal("0.0001")


def _dec(x: Decimal | int | float | str) -> Decimal:
    """A Decimal from a number; floats go through ``str`` so 0.1 stays 0.1."""
    if isinstance(x, Decimal):
        return x
    if isinstance(x, float):
        return Decimal(repr(x))
    return Decimal(x)


def _ledger(x: Decimal) -> Decimal:
    return x.quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_UP)


def _non_negative(name: str, value: Decimal) -> Decimal:
    if not value.is_finite() or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def compute_cost_usd(price_per_hour_usd: Decimal, seconds: float | int | Decimal) -> Decimal:
    """What ``seconds`` of a ``price_per_hour_usd`` rental cost (billed per second).

    Raises:
        ValueError: a negative or non-finite price or duration.
    """
    price = _non_negative("price_per_hour_usd", _dec(price_per_hour_usd))
    secs = _non_negative("seconds", _dec(seconds))
    return _ledger(price * secs / SECONDS_PER_HOUR)


def hourly_charge_usd(
    compute_per_hour_usd: Decimal,
    storage_per_gb_month_usd: Decimal,
    disk_gb: float | int | Decimal,
) -> Decimal:
    """What a running instance costs per hour: compute plus its disk's storage.

    This is the rate a plan quotes and the simulator (like vast) charges; cards show it.
    """
    return _ledger(
        _dec(compute_per_hour_usd)
        + storage_cost_usd(storage_per_gb_month_usd, disk_gb, SECONDS_PER_HOUR)
    )


def storage_cost_usd(
    storage_per_gb_month_usd: Decimal,
    disk_gb: float | int | Decimal,
    seconds: float | int | Decimal,
) -> Decimal:
    """Storage for ``disk_gb`` over ``seconds`` at $/GB/month, a month being 720 h.

    Storage is billed whenever the instance exists, running or stopped.
    """
    rate = _non_negative("storage_per_gb_month_usd", _dec(storage_per_gb_month_usd))
    gb = _non_negative("disk_gb", _dec(disk_gb))
    secs = _non_negative("seconds", _dec(seconds))
    return _ledger(rate * gb * secs / (HOURS_PER_STORAGE_MONTH * SECONDS_PER_HOUR))


def bandwidth_cost_usd(
    bytes_up: int, bytes_down: int, up_per_gb_usd: Decimal, down_per_gb_usd: Decimal
) -> Decimal:
    """Traffic charges: bytes / 10^9 x the $/GB rate, for each direction."""
    up = _non_negative("bytes_up", _dec(bytes_up))
    down = _non_negative("bytes_down", _dec(bytes_down))
    up_rate = _non_negative("up_per_gb_usd", _dec(up_per_gb_usd))
    down_rate = _non_negative("down_per_gb_usd", _dec(down_per_gb_usd))
    return _ledger((up * up_rate + down * down_rate) / BYTES_PER_GB)


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """A launch's expected cost, shown in the plan before anything is rented."""

    compute_usd: Decimal
    storage_usd: Decimal
    total_usd: Decimal
    price_per_hour_usd: Decimal
    """All-in $/h: the rental's price plus the disk's storage per hour."""
    hours: Decimal


def estimate_job_cost(
    choice: RentalChoice, disk_gb: float | int, expected_hours: float | Decimal
) -> CostEstimate:
    """Expected cost of running ``choice`` for ``expected_hours`` with ``disk_gb`` of disk.

    What vast charges while the instance runs is compute plus storage, and this estimate is
    that sum, so a plan's quote equals the charge. Compute is the choice's price without the
    storage vast folds into its quoted price: the bid for interruptible, ``dph_base`` for
    on-demand (``dph_total`` when the offer did not report ``dph_base``, which then errs high
    by the searched disk's storage). Storage is ``disk_gb`` at the offer's $/GB/month, billed
    for every second the instance exists.
    """
    hours = _non_negative("expected_hours", _dec(expected_hours))
    seconds = hours * SECONDS_PER_HOUR
    compute_per_hour = choice.compute_per_hour_usd
    compute = compute_cost_usd(compute_per_hour, seconds)
    storage = storage_cost_usd(choice.offer.storage_per_gb_month_usd, disk_gb, seconds)
    storage_per_hour = storage_cost_usd(
        choice.offer.storage_per_gb_month_usd, disk_gb, SECONDS_PER_HOUR
    )
    return CostEstimate(
        compute_usd=compute,
        storage_usd=storage,
        total_usd=compute + storage,
        price_per_hour_usd=_ledger(compute_per_hour + storage_per_hour),
        hours=hours,
    )


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    """Where a spend stands against its limit."""

    spent_usd: Decimal
    limit_usd: Decimal
    used_pct: Decimal
    """spent / limit x 100, rounded half-up to 0.1 (100 when the limit is 0)."""
    new_alert_pcts: tuple[int, ...]
    """Thresholds (of 50/80/100) now crossed that were not alerted yet, ascending."""
    stop: bool
    """True when spent >= limit: checkpoint and destroy."""
    remaining_usd: Decimal
    """limit - spent, never below 0."""


def budget_verdict(
    spent_usd: Decimal, limit_usd: Decimal, already_alerted_pcts: Iterable[int] = ()
) -> BudgetVerdict:
    """Compare ``spent_usd`` with ``limit_usd`` at the 50/80/100 % thresholds.

    A threshold counts as crossed when spent >= limit x pct / 100 (so exactly 50 % alerts).
    A limit of 0 means nothing may be spent: every threshold is crossed and stop is due.

    Raises:
        ValueError: a negative amount.
    """
    spent = _non_negative("spent_usd", _dec(spent_usd))
    limit = _non_negative("limit_usd", _dec(limit_usd))
    alerted = set(already_alerted_pcts)
    crossed = tuple(
        pct for pct in BUDGET_THRESHOLDS_PCT if spent * 100 >= limit * pct and pct not in alerted
    )
    used = Decimal(100) if limit == 0 else spent * 100 / limit
    return BudgetVerdict(
        spent_usd=spent,
        limit_usd=limit,
        used_pct=used.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP),
        new_alert_pcts=crossed,
        stop=spent >= limit,
        remaining_usd=max(limit - spent, Decimal(0)),
    )


def forecast_runout(
    spent_usd: Decimal, limit_usd: Decimal, burn_per_hour_usd: Decimal
) -> timedelta | None:
    """How long until ``limit_usd`` is reached at ``burn_per_hour_usd``.

    None when nothing burns (rate <= 0); ``timedelta(0)`` when the limit is already reached.
    Rounded down to whole seconds.
    """
    spent, limit, burn = _dec(spent_usd), _dec(limit_usd), _dec(burn_per_hour_usd)
    if burn <= 0:
        return None
    if spent >= limit:
        return timedelta(0)
    seconds = (limit - spent) / burn * SECONDS_PER_HOUR
    return timedelta(seconds=int(seconds))


def format_duration(td: timedelta) -> str:
    """A short human duration, rounded down: ``45 s``, ``12 m``, ``3 h 10 m``, ``2 d 5 h``.

    Zero parts after the first are dropped (``3 h``); negative durations get a leading ``-``.
    """
    total = int(td.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    days, rem = divmod(total, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, seconds = divmod(rem, 60)
    if days:
        parts = [f"{days} d"] + ([f"{hours} h"] if hours else [])
    elif hours:
        parts = [f"{hours} h"] + ([f"{minutes} m"] if minutes else [])
    elif minutes:
        parts = [f"{minutes} m"]
    else:
        parts = [f"{seconds} s"]
    return sign + " ".join(parts)


def format_usd(amount: Decimal) -> str:
    """Display money: half-up to cents (``$1.23``, ``$1,234.50``); sub-cent ``$0.0042``.

    Zero is ``$0.00``; non-zero amounts under $0.0001 are ``under $0.0001``; negatives get ``-``.
    """
    value = _dec(amount)
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value == 0:
        return "$0.00"
    cents = value.quantize(_CENT, rounding=ROUND_HALF_UP)
    if cents >= _CENT:
        return f"{sign}${cents:,.2f}"
    sub = value.quantize(_SUB_CENT, rounding=ROUND_HALF_UP)
    if sub == 0:
        return f"{sign}under $0.0001"
    return f"{sign}${sub:.4f}"
