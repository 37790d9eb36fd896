"""Typed commands: what :func:`gpubot.commands.grammar.parse_command` returns.

Pure: standard library only. Every command is a frozen dataclass; ``Command`` is their union.
Values are already validated and typed (``Decimal`` USD, hours as float, GB as numbers).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from decimal import Decimal

from gpubot.models import InterruptibleMode
from gpubot.templates import ParamValue


@dataclass(frozen=True, slots=True)
class ResourceOverrides:
    """Resource keys a user may give on any launch (and as ``offers`` filters).

    Every field is None when the user did not give the key: the template's value applies.
    """

    gpu_names: tuple[str, ...] | None = None
    """``gpu=``: canonical vast.ai names (``4090`` -> ``RTX 4090``; ``a100`` -> both variants)."""
    num_gpus: int | None = None
    """``gpus=``"""
    min_gpu_ram_gb: float | None = None
    """``gpu_ram=`` (GB)"""
    max_price_per_hour_usd: Decimal | None = None
    """``max_price=`` ($/h for the machine)"""
    budget_usd: Decimal | None = None
    """``budget=``: cap on the job's total cost"""
    interruptible: InterruptibleMode | None = None
    disk_gb: int | None = None
    """``disk=`` (GB)"""
    image: str | None = None
    hours: float | None = None
    """``hours=``: the expected run time (launch) or the box's lifetime (rent)."""

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True, slots=True)
class LaunchCommand:
    """``<template> k=v ...``: run one job from a template."""

    template: str
    params: dict[str, ParamValue] = field(default_factory=dict)
    """Only the parameters the user gave; template defaults are not filled in."""
    resources: ResourceOverrides = field(default_factory=ResourceOverrides)

    verb = "launch"


@dataclass(frozen=True, slots=True)
class SweepCommand:
    """``sweep <template> k=v1,v2 ...``: one child job per combination of the axes."""

    template: str
    axes: dict[str, list[ParamValue]]
    """Parameters with several values, in the order typed; runs = product of lengths."""
    params: dict[str, ParamValue] = field(default_factory=dict)
    """Fixed parameters (one value each) shared by every run."""
    resources: ResourceOverrides = field(default_factory=ResourceOverrides)

    verb = "sweep"

    def combinations(self) -> list[dict[str, ParamValue]]:
        """Every run's full parameter set (fixed + one value per axis), in a stable order."""
        runs: list[dict[str, ParamValue]] = [dict(self.params)]
        for name, values in self.axes.items():
            runs = [{**run, name: v} for run in runs for v in values]
        return runs


@dataclass(frozen=True, slots=True)
class RentCommand:
    """``rent [resources] [hours=2h]``: an interactive box; the reply is the ssh command."""

    resources: ResourceOverrides = field(default_factory=ResourceOverrides)
    hours: float = 1.0
    """How long to keep the box before it is destroyed (extend with ``keep``)."""

    verb = "rent"


@dataclass(frozen=True, slots=True)
class OffersCommand:
    """``offers [filters] [limit=N] [template=T]``: the cheapest matching offers."""

    filters: ResourceOverrides = field(default_factory=ResourceOverrides)
    limit: int = 10
    template: str | None = None
    """Start from this template's requirements (else no GPU filter)."""

    verb = "offers"


@dataclass(frozen=True, slots=True)
class StatusCommand:
    """``status [job]``: one job's card, or the requester's live jobs."""

    job_id: str | None = None

    verb = "status"


@dataclass(frozen=True, slots=True)
class JobsCommand:
    """``jobs [all]``: live jobs (``all``: also the recently finished)."""

    include_finished: bool = False

    verb = "jobs"


@dataclass(frozen=True, slots=True)
class LogsCommand:
    """``logs <job> [lines=N]``: the tail of the job's log."""

    job_id: str
    lines: int = 50

    verb = "logs"


@dataclass(frozen=True, slots=True)
class CancelCommand:
    """``cancel <job>``: checkpoint if possible, then destroy."""

    job_id: str

    verb = "cancel"


@dataclass(frozen=True, slots=True)
class KeepCommand:
    """``keep <job> [hours]``: postpone idle teardown (and extend a rented box)."""

    job_id: str
    hours: float = 1.0

    verb = "keep"


class BudgetScope(enum.StrEnum):
    TEAM = "team"
    USER = "user"
    CHANNEL = "channel"
    JOB = "job"


class BudgetAction(enum.StrEnum):
    SHOW = "show"
    SET = "set"


class Period(enum.StrEnum):
    TODAY = "today"
    WEEK = "week"
    MONTH = "month"


class CostGroup(enum.StrEnum):
    USER = "user"
    CHANNEL = "channel"
    JOB = "job"


@dataclass(frozen=True, slots=True)
class BudgetCommand:
    """``budget [show|set] [team|user=<@U..>|channel=<#C..>|job=<j-..>] [amount=$N]``.

    ``scope`` None means "whatever applies to the requester" (show only). ``target`` is a Slack
    user id (``U…``/``W…``), channel id (``C…``/``G…``/``D…``) or job id; None for team.
    """

    action: BudgetAction = BudgetAction.SHOW
    scope: BudgetScope | None = None
    target: str | None = None
    amount_usd: Decimal | None = None
    period: Period = Period.MONTH

    verb = "budget"


@dataclass(frozen=True, slots=True)
class CostCommand:
    """``cost [today|week|month] [by=user|channel|job]``: spend so far."""

    period: Period = Period.MONTH
    group_by: CostGroup | None = None

    verb = "cost"


@dataclass(frozen=True, slots=True)
class AuditCommand:
    """``audit [limit=N]``: the latest audit entries (admins)."""

    limit: int = 20

    verb = "audit"


@dataclass(frozen=True, slots=True)
class HelpCommand:
    """``help [topic]``: the topic is a verb or a template name."""

    topic: str | None = None

    verb = "help"


Command = (
    LaunchCommand
    | SweepCommand
    | RentCommand
    | OffersCommand
    | StatusCommand
    | JobsCommand
    | LogsCommand
    | CancelCommand
    | KeepCommand
    | BudgetCommand
    | CostCommand
    | AuditCommand
    | HelpCommand
)
