"""Builds the real adapters from settings (the composition root for worker, bot and demo)."""

from __future__ import annotations

import logging
import os

from gpubot.config import BotConfig, load_config
from gpubot.db.engine import make_engine, make_sessionmaker, upgrade_to_head
from gpubot.errors import ConfigError
from gpubot.providers.base import Provider
from gpubot.redact import register_secret
from gpubot.remote.runner import Runner, SSHTarget
from gpubot.services import ops
from gpubot.services.deps import EngineDeps
from gpubot.services.ports import Clock, Enqueuer, system_clock
from gpubot.settings import Settings
from gpubot.storage.base import ObjectStore

logger = logging.getLogger(__name__)


def ssh_connect(target: SSHTarget, *, known_host_key: str | None) -> Runner:
    """RunnerFactory on paramiko: connects now (raises SSHConnectError)."""
    from gpubot.remote.ssh import ParamikoRunner

    runner = ParamikoRunner(target=target, known_host_key=known_host_key)
    runner.connect()
    return runner


def make_store(settings: Settings) -> ObjectStore:
    from gpubot.storage.s3 import S3Store

    if not settings.s3_bucket:
        raise ConfigError(
            "is not set: checkpoints and results need a bucket (any S3-compatible store; "
            "AWS_ENDPOINT_URL for R2/MinIO)",
            key="GPUBOT_S3_BUCKET",
        )
    return S3Store(settings.s3_bucket, settings.s3_prefix)


def register_secrets(settings: Settings) -> None:
    for value in settings.secret_values():
        register_secret(value)
    register_secret(os.environ.get("AWS_SECRET_ACCESS_KEY"))


def build_engine_deps(
    settings: Settings | None = None,
    *,
    config: BotConfig | None = None,
    provider: Provider | None = None,
    store: ObjectStore | None = None,
    clock: Clock | None = None,
    enqueuer: Enqueuer | None = None,
    migrate: bool = True,
) -> EngineDeps:
    """Everything the services need, from settings. Creates GPUBOT_HOME and the schema."""
    from gpubot.providers.registry import make_provider
    from gpubot.remote.ssh import load_or_create_key

    settings = settings or Settings()
    settings.ensure_home()
    register_secrets(settings)
    config = config or load_config(settings.effective_config_path)
    ops.configure(config.ops.channel)
    url = settings.effective_database_url
    if migrate:
        upgrade_to_head(url)
    sessions = make_sessionmaker(make_engine(url))
    _, public_key = load_or_create_key(settings.effective_ssh_key_path)
    deps = EngineDeps(
        settings=settings,
        config=config,
        sessions=sessions,
        provider=provider or make_provider(settings),
        store=store or make_store(settings),
        connect=ssh_connect,
        ssh_key_path=settings.effective_ssh_key_path,
        ssh_public_key=public_key,
        clock=clock or system_clock,
    )
    if enqueuer is not None:
        deps.enqueuer = enqueuer
    return deps
