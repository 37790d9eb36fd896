"""Domain values: frozen dataclasses and enums shared by the core, the adapters and the fronts.

Pure: imports the standard library only. Money is ``Decimal`` USD, time is UTC-aware
``datetime``/``timedelta``, and units are in the names (``price_per_hour_usd``, ``disk_gb``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


class RentalType(enum.StrEnum):
    """How an instance is rented on vast.ai."""

    ON_DEMAND = "on_demand"
    """Fixed price, never preempted."""
    INTERRUPTIBLE = "interruptible"
    """A bid (``price`` on create); can be outbid and paused by the host."""


class InterruptibleMode(enum.StrEnum):
    """The user's choice for ``interruptible=``."""

    YES = "yes"
    NO = "no"
    AUTO = "auto"


class JobState(enum.StrEnum):
    """A job's phase. Advanced one step per reconcile tick from stored state (see lifecycle.py)."""

    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RENTING = "renting"
    BOOTING = "booting"
    CONNECTING = "connecting"
    DEPLOYING = "deploying"
    SETTING_UP = "setting_up"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    RE_RENTING = "re_renting"
    RESTORING = "restoring"
    COLLECTING = "collecting"
    TEARING_DOWN = "tearing_down"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_finished(self) -> bool:
        return self in _FINISHED_JOB_STATES

    @classmethod
    def finished_states(cls) -> frozenset[JobState]:
        return _FINISHED_JOB_STATES

    @classmethod
    def live_states(cls) -> frozenset[JobState]:
        return frozenset(s for s in cls if s not in _FINISHED_JOB_STATES)


_FINISHED_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class ProviderStatus(enum.StrEnum):
    """The domain's view of a provider-side instance status (vast's status values, and an outbid
    interruptible instance, map onto these in the provider adapter)."""

    PROVISIONING = "provisioning"
    """Contract exists, container not running yet (null, created, loading)."""
    RUNNING = "running"
    STOPPED = "stopped"
    """Stopped on our request."""
    OUTBID = "outbid"
    """An interruptible instance paused by the host (outbid or reclaimed)."""
    EXITED = "exited"
    OFFLINE = "offline"
    """Host offline or no heartbeat (offline, unknown): will not come back during a poll."""
    FAILED = "failed"
    """Container failed to start (e.g. OCI runtime error)."""
    UNKNOWN = "unknown"
    """A status value we do not know; treated like PROVISIONING until a deadline."""


@dataclass(frozen=True, slots=True)
class Offer:
    """One rentable machine on the market, as the bot sees it."""

    offer_id: str
    gpu_name: str
    num_gpus: int
    gpu_ram_gb: float
    price_per_hour_usd: Decimal
    """On-demand $/h for the whole machine including the allocated storage (vast ``dph_total``)."""
    min_bid_per_hour_usd: Decimal
    """Current winning interruptible bid for the machine, $/h (vast ``min_bid``)."""
    storage_per_gb_month_usd: Decimal
    upload_per_gb_usd: Decimal
    download_per_gb_usd: Decimal
    reliability: float
    cuda_max: float
    compute_cap: int
    """Compute capability ×100 (890 = 8.9)."""
    dlperf: float
    datacenter: bool
    verified: bool
    host_id: str
    machine_id: str
    disk_space_gb: float
    geolocation: str = ""
    inet_down_mbps: float = 0.0
    compute_per_hour_usd: Decimal | None = None
    """On-demand compute $/h without storage (vast ``dph_base``); None when unknown. An
    interruptible bid is for compute only: storage is billed on top either way."""

    @property
    def storage_per_hour_usd(self) -> Decimal:
        """$/h of the searched disk (``dph_total - dph_base``); 0 when ``dph_base`` is unknown."""
        if self.compute_per_hour_usd is None:
            return Decimal(0)
        return max(Decimal(0), self.price_per_hour_usd - self.compute_per_hour_usd)

    @property
    def dlperf_per_usd(self) -> float:
        price = float(self.price_per_hour_usd)
        return self.dlperf / price if price > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a job needs from a machine: the template's resources plus the user's overrides."""

    gpu_names: tuple[str, ...] = ()
    """Allowed GPU names (exact vast names such as "RTX 4090"); empty means any."""
    num_gpus: int = 1
    min_gpu_ram_gb: float = 0.0
    min_cuda: float = 0.0
    min_compute_cap: int = 0
    min_reliability: float = 0.95
    max_price_per_hour_usd: Decimal | None = None
    datacenter_only: bool = False
    disk_gb: int = 20
    verified_only: bool = True
    min_inet_down_mbps: float = 0.0
    blocked_host_ids: frozenset[str] = frozenset()


class OfferRanking(enum.StrEnum):
    """How qualifying offers are ordered."""

    PRICE = "price"
    """Cheapest $/h first; ties broken by reliability."""
    DLPERF_PER_USD = "dlperf_per_usd"
    """Most deep-learning performance per dollar first."""


@dataclass(frozen=True, slots=True)
class RentalChoice:
    """The outcome of offer choice: which offer, how to rent it, and why (one sentence)."""

    offer: Offer
    rental_type: RentalType
    bid_per_hour_usd: Decimal | None
    """The bid for an interruptible rental, None for on-demand."""
    reason: str

    @property
    def price_per_hour_usd(self) -> Decimal:
        """The $/h vast will charge while it runs: the bid plus the disk's storage per hour for
        an interruptible rental, the offer's on-demand ``dph_total`` otherwise."""
        if self.rental_type is RentalType.INTERRUPTIBLE and self.bid_per_hour_usd is not None:
            return self.bid_per_hour_usd + self.offer.storage_per_hour_usd
        return self.offer.price_per_hour_usd

    @property
    def compute_per_hour_usd(self) -> Decimal:
        """The compute part of :attr:`price_per_hour_usd`: the bid for interruptible, vast's
        ``dph_base`` for on-demand (``dph_total`` when the offer did not report ``dph_base``)."""
        return self.price_per_hour_usd - self.offer.storage_per_hour_usd


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything the provider needs to create one instance."""

    image: str
    disk_gb: int
    label: str
    """``<label_prefix>:<job id>``; the create is de-duplicated and the orphan sweep keys on it."""
    ssh_public_key: str
    bid_per_hour_usd: Decimal | None = None
    """Set for an interruptible rental; None rents on-demand."""
    env: dict[str, str] = field(default_factory=dict)
    onstart: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceObservation:
    """What the provider says about one of our instances right now."""

    provider_id: str
    status: ProviderStatus
    label: str | None
    is_bid: bool
    price_per_hour_usd: Decimal
    """Current all-in contract $/h (vast ``dph_total``: compute + storage + fee)."""
    storage_per_gb_month_usd: Decimal = Decimal(0)
    disk_gb: float = 0.0
    ssh_host: str | None = None
    ssh_port: int | None = None
    gpu_util_pct: float | None = None
    gpu_name: str = ""
    num_gpus: int = 1
    min_bid_per_hour_usd: Decimal | None = None
    status_message: str = ""
    started_at: datetime | None = None
    raw_status: dict[str, Any] = field(default_factory=dict)
    """The vendor's own status fields (actual_status, cur_state, ...) for display and audit."""
    compute_per_hour_usd: Decimal | None = None
    """$/h charged only while running: the all-in price minus the storage rate per hour (vast
    ``dph_total - storage_total_cost``). None when the provider gave no usable price."""
    bytes_up_billed: int | None = None
    """Cumulative billed upload (from the instance), in bytes; None when not reported."""
    bytes_down_billed: int | None = None
    """Cumulative billed download (to the instance), in bytes; None when not reported."""
    pull_error: str | None = None
    """The provider's own message when the image could not be pulled (quoted, never
    reworded); None otherwise."""
    readable: bool = True
    """False when the provider listed this instance but a field failed validation: the
    instance exists (never "gone") but nothing else in this observation may be trusted."""

    @property
    def ssh_ready(self) -> bool:
        return self.status is ProviderStatus.RUNNING and bool(self.ssh_host and self.ssh_port)


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """The provider account's money left."""

    credit_usd: Decimal
    email: str = ""
