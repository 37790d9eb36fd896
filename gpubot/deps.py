"""Everything a service needs, wired once per process (worker, bot, demo, tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from gpubot.config import BotConfig
from gpubot.ports import Clock, Enqueuer, RunnerFactory, system_clock
from gpubot.providers.base import Provider
from gpubot.settings import Settings
from gpubot.storage.base import ObjectStore

if TYPE_CHECKING:
    from gpubot.remote.pool import SSHPool


class _NoKick:
    def kick(self) -> None:
        return None


@dataclass
class EngineDeps:
    settings: Settings
    config: BotConfig
    sessions: sessionmaker[Session]
    provider: Provider
    store: ObjectStore
    connect: RunnerFactory
    ssh_key_path: Path
    ssh_public_key: str
    clock: Clock = system_clock
    enqueuer: Enqueuer = field(default_factory=_NoKick)
    ssh_pool: SSHPool | None = None
    """The process's SSH connection pool when ``connect`` leases from one (production);
    told when an instance is destroyed so its connections close."""
