"""In-memory fakes for service tests: a marketplace, a steppable clock, an object store, and a
builder for an :class:`~gpubot.deps.EngineDeps` on a fresh SQLite database.

Not used by production code. The fakes keep every call they receive so tests can assert on
what a service did (``provider.destroyed``) rather than on how.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from gpubot.config import BotConfig, load_config
from gpubot.db.engine import make_engine, make_sessionmaker, upgrade_to_head
from gpubot.db.tables import InstanceRow, JobRow, LedgerEntryRow
from gpubot.deps import EngineDeps
from gpubot.errors import NoCapacityError, SSHConnectError, StorageError, TransientProviderError
from gpubot.models import (
    AccountInfo,
    InstanceObservation,
    JobState,
    LaunchSpec,
    Offer,
    ProviderStatus,
    Requirements,
)
from gpubot.remote.runner import Runner, SSHTarget
from gpubot.settings import Settings
from gpubot.storage.base import StoredObject

T0 = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
"""A fixed instant in the middle of a month, a Friday (ISO week starts Mon 2025-03-10)."""


class FakeClock:
    """A frozen UTC clock that moves only when told: ``clock.advance(minutes=5)``."""

    def __init__(self, start: datetime = T0) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by ``delta`` or ``timedelta(**kwargs)``; returns the new time."""
        self.now = self.now + (delta if delta is not None else timedelta(**kwargs))
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when


def observation(
    provider_id: str,
    *,
    label: str | None,
    status: ProviderStatus = ProviderStatus.RUNNING,
    price_per_hour_usd: Decimal | str = "0.40",
    **kw: Any,
) -> InstanceObservation:
    """A listing row with sensible defaults."""
    return InstanceObservation(
        provider_id=provider_id,
        status=status,
        label=label,
        is_bid=kw.pop("is_bid", False),
        price_per_hour_usd=Decimal(price_per_hour_usd),
        **kw,
    )


@dataclass
class FakeProvider:
    """A marketplace held in memory.

    ``instances`` is the account's listing; ``destroy`` removes an instance from it (set
    ``destroy_removes=False`` to model a slow destroy) and records the id in ``destroyed``.
    Set ``fail_listing = True`` to make :meth:`list_instances` raise TransientProviderError
    (a failing listing is never an empty one). ``charge_rows`` is what :meth:`charges` returns.
    """

    name: str = "fake"
    instances: dict[str, InstanceObservation] = field(default_factory=dict)
    offers: list[Offer] = field(default_factory=list)
    charge_rows: list[dict[str, object]] = field(default_factory=list)
    fail_listing: bool = False
    fail_destroy: bool = False
    destroy_removes: bool = True
    credit_usd: Decimal = Decimal(100)
    destroyed: list[str] = field(default_factory=list)
    created: list[tuple[str, LaunchSpec]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    _next_id: int = 1000

    def add(self, obs: InstanceObservation) -> InstanceObservation:
        self.instances[obs.provider_id] = obs
        return obs

    def search_offers(self, requirements: Requirements, *, interruptible: bool) -> Sequence[Offer]:
        self.calls.append("search_offers")
        return sorted(self.offers, key=lambda o: o.price_per_hour_usd)

    def create_instance(self, offer: Offer, spec: LaunchSpec) -> str:
        self.calls.append("create_instance")
        if offer not in self.offers:
            raise NoCapacityError(f"offer {offer.offer_id} is gone")
        self._next_id += 1
        pid = str(self._next_id)
        self.created.append((pid, spec))
        self.instances[pid] = observation(
            pid,
            label=spec.label,
            status=ProviderStatus.PROVISIONING,
            price_per_hour_usd=spec.bid_per_hour_usd or offer.price_per_hour_usd,
            is_bid=spec.bid_per_hour_usd is not None,
        )
        return pid

    def observe(self, provider_id: str) -> InstanceObservation | None:
        self.calls.append("observe")
        return self.instances.get(provider_id)

    def list_instances(self) -> list[InstanceObservation]:
        self.calls.append("list_instances")
        if self.fail_listing:
            raise TransientProviderError("fake: instance listing failed (HTTP 503)")
        return list(self.instances.values())

    def destroy(self, provider_id: str) -> None:
        self.calls.append("destroy")
        if self.fail_destroy:
            raise TransientProviderError(f"fake: destroy {provider_id} failed (HTTP 503)")
        self.destroyed.append(provider_id)
        if self.destroy_removes:
            self.instances.pop(provider_id, None)

    def stop(self, provider_id: str) -> None:
        self.calls.append("stop")

    def start(self, provider_id: str) -> None:
        self.calls.append("start")

    def set_label(self, provider_id: str, label: str) -> None:
        self.calls.append("set_label")
        obs = self.instances.get(provider_id)
        if obs is not None:
            self.instances[provider_id] = replace(obs, label=label)

    def attach_ssh_key(self, provider_id: str, public_key: str) -> None:
        self.calls.append("attach_ssh_key")

    def account(self) -> AccountInfo:
        return AccountInfo(credit_usd=self.credit_usd, email="fake@example.com")

    def charges(self) -> list[dict[str, object]]:
        self.calls.append("charges")
        return list(self.charge_rows)


@dataclass
class MemoryStore:
    """An ObjectStore in a dict; presigned URLs are fake ``memory://`` URLs."""

    objects: dict[str, bytes] = field(default_factory=dict)

    def presign_put(
        self, key: str, *, expires_seconds: int = 3600, sha256: str | None = None
    ) -> str:
        return f"memory://put/{key}"

    def presign_get(self, key: str, *, expires_seconds: int = 3600) -> str:
        return f"memory://get/{key}"

    def list(self, prefix: str) -> list[StoredObject]:
        return [
            StoredObject(key=k, size_bytes=len(v))
            for k, v in sorted(self.objects.items())
            if k.startswith(prefix)
        ]

    def put_bytes(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError as e:
            raise StorageError(f"no such object: {key}") from e

    def url_for_display(self, key: str) -> str:
        return f"memory://{key}"


def refuse_ssh(target: SSHTarget, *, known_host_key: str | None) -> Runner:
    """A RunnerFactory for tests that must not reach an instance."""
    raise SSHConnectError(f"fake: no SSH in this test ({target.host})")


def fake_deps(
    home: Path,
    *,
    database_url: str | None = None,
    provider: FakeProvider | None = None,
    clock: FakeClock | None = None,
    config: BotConfig | None = None,
    label_prefix: str = "gpubot",
) -> EngineDeps:
    """EngineDeps with fakes (provider, store, no SSH) on ``database_url`` (default: a fresh
    SQLite file in ``home``), migrated to head (Alembic)."""
    home.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{home / 'gpubot.db'}"
    upgrade_to_head(url)
    settings = Settings(home=home, database_url=url, label_prefix=label_prefix)
    return EngineDeps(
        settings=settings,
        config=config or load_config(None),
        sessions=make_sessionmaker(make_engine(url)),
        provider=provider or FakeProvider(),
        store=MemoryStore(),
        connect=refuse_ssh,
        ssh_key_path=home / "id_ed25519",
        ssh_public_key="ssh-ed25519 AAAAfake test@gpubot",
        clock=clock or FakeClock(),
    )


# -- seeding rows -----------------------------------------------------------------------------


def seed_job(
    session: Session,
    job_id: str,
    *,
    requester: str = "U1",
    channel: str = "C1",
    state: JobState = JobState.RUNNING,
    budget_usd: Decimal | str | None = None,
    template: str = "train",
    created_at: datetime = T0,
) -> JobRow:
    job = JobRow(
        id=job_id,
        template=template,
        requester=requester,
        channel=channel,
        state=state.value,
        budget_usd=Decimal(budget_usd) if budget_usd is not None else None,
        created_at=created_at,
        updated_at=created_at,
        due_at=created_at,
        step_started_at=created_at,
    )
    session.add(job)
    session.flush()
    return job


def seed_instance(
    session: Session,
    job_id: str,
    provider_id: str | None,
    *,
    label: str | None = None,
    price_per_hour_usd: Decimal | str = "0.40",
    status: str = "running",
    provider_status: str | None = "running",
    destroyed_at: datetime | None = None,
    created_at: datetime = T0,
) -> InstanceRow:
    row = InstanceRow(
        job_id=job_id,
        provider_id=provider_id,
        label=label or f"gpubot:{job_id}",
        price_per_hour_usd=Decimal(price_per_hour_usd),
        rental_type="on_demand",
        status=status,
        provider_status=provider_status,
        destroyed_at=destroyed_at,
        destroy_requested_at=destroyed_at,
        created_at=created_at,
        metered_until=created_at,
    )
    session.add(row)
    session.flush()
    return row


def seed_ledger(
    session: Session,
    entries: Iterable[tuple[str | None, str, str, str, Decimal | str]],
    *,
    at: datetime = T0,
    instance_id: int | None = None,
) -> list[LedgerEntryRow]:
    """Append ``(job_id, requester, channel, kind, amount_usd)`` entries ending at ``at``."""
    rows = [
        LedgerEntryRow(
            instance_id=instance_id,
            job_id=job_id,
            requester=requester,
            channel=channel,
            kind=kind,
            amount_usd=Decimal(amount),
            period_start=at - timedelta(seconds=10),
            period_end=at,
            created_at=at,
        )
        for job_id, requester, channel, kind, amount in entries
    ]
    session.add_all(rows)
    session.flush()
    return rows
