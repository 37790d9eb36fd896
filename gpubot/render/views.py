"""Plain data the renderers draw from. Built by services from database rows; pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class JobView:
    """Everything a job's status card shows (the job's top-level message, or its card in
    its group's thread)."""

    job_id: str
    template: str
    kind: str
    state: str
    requester: str
    params: dict[str, object] = field(default_factory=dict)
    phase_detail: str = ""
    reason: str = ""
    step: int | None = None
    total_steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    eta_seconds: float | None = None
    spent_usd: Decimal = Decimal(0)
    price_per_hour_usd: Decimal | None = None
    budget_usd: Decimal | None = None
    gpu_name: str = ""
    provider_id: str | None = None
    rental_type: str | None = None
    attempts: int = 0
    ssh_command: str | None = None
    results: list[dict[str, object]] = field(default_factory=list)
    updated_at: datetime | None = None
    """When the job last changed: the card's "as of" time (checkpoint ages count to it)."""
    plan_lines: list[str] = field(default_factory=list)
    """The launch plan (raw lines, first one the title): the card shows it until an instance
    is rented."""
    last_checkpoint_key: str | None = None
    last_checkpoint_at: datetime | None = None
    in_group: bool = False
    """A sweep or shard run: the card lives in the group's thread and mentions nobody."""
