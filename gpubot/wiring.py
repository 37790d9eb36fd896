"""Builds the real adapters from settings (the composition root for worker, bot and demo)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from gpubot.config import BotConfig, load_config
from gpubot.db.engine import make_engine, make_sessionmaker, upgrade_to_head
from gpubot.deps import EngineDeps
from gpubot.errors import ConfigError, GpubotError
from gpubot.notify import ops
from gpubot.ports import Clock, Enqueuer, RunnerFactory, system_clock
from gpubot.providers.base import Provider
from gpubot.redact import register_secret
from gpubot.remote.runner import Runner, SSHTarget
from gpubot.settings import Settings
from gpubot.storage.base import ObjectStore

if TYPE_CHECKING:
    from gpubot.remote.pool import SSHPool

logger = logging.getLogger(__name__)


def ssh_connect(target: SSHTarget, *, known_host_key: str | None) -> Runner:
    """RunnerFactory on paramiko: connects now (raises SSHConnectError)."""
    from gpubot.remote.ssh import ParamikoRunner

    runner = ParamikoRunner(target=target, known_host_key=known_host_key)
    runner.connect()
    return runner


def build_ssh_connector() -> tuple[RunnerFactory, SSHPool]:
    """The production RunnerFactory: leases from the process's SSH pool (connections reused
    across ticks; see gpubot.remote.pool), and that pool."""
    from gpubot.remote.pool import shared_pool

    pool = shared_pool()
    return pool.connect, pool


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


def prepare_vast(
    provider: Provider, settings: Settings, config: BotConfig, public_key: str
) -> None:
    """Once per process, for the vast.ai provider built from settings:

    - pace its calls per endpoint, shared by every worker: through the broker's Redis when
      GPUBOT_BROKER_URL is ``redis://`` (one key per endpoint), in-process for the embedded
      broker (one worker process); intervals from ``[engine] vast_min_interval_seconds``;
    - register the bot's SSH public key on the vast account (idempotent), so vast adds it to
      every instance at creation; a failure is logged and the per-instance attach (done after
      every create) still authorises the key.
    """
    from gpubot.providers.vastai import VastAIProvider
    from gpubot.providers.vastai.pace import make_pace

    if not isinstance(provider, VastAIProvider):
        return
    if provider.pace is None:
        provider.pace = make_pace(
            settings.broker_url,
            config.engine.vast_min_interval_seconds,
            identity=provider.pace_identity,
        )
    try:
        provider.ensure_account_ssh_key(public_key)
    except GpubotError as exc:
        logger.warning("registering the SSH key on the vast.ai account failed: %s", exc)


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
    if provider is None:
        provider = make_provider(settings)
        prepare_vast(provider, settings, config, public_key)
    connect, pool = build_ssh_connector()
    deps = EngineDeps(
        settings=settings,
        config=config,
        sessions=sessions,
        provider=provider,
        store=store or make_store(settings),
        connect=connect,
        ssh_pool=pool,
        ssh_key_path=settings.effective_ssh_key_path,
        ssh_public_key=public_key,
        clock=clock or system_clock,
    )
    if enqueuer is not None:
        deps.enqueuer = enqueuer
    return deps
