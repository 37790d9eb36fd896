"""Process settings from the environment (and ``.env``); the names are a fixed contract.

``Settings()`` reads nothing but the environment and ``.env``; derived paths (database file,
SSH key, broker folders) are computed from ``GPUBOT_HOME`` on access, and nothing is created
until :meth:`Settings.ensure_home` is called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_FIELDS = frozenset(
    {"vast_api_key", "slack_bot_token", "slack_signing_secret", "slack_app_token"}
)


def _env(name: str) -> Any:
    return Field(validation_alias=AliasChoices(name))


class Settings(BaseSettings):
    """Every setting the bot reads. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    home: Path = Field(
        default_factory=lambda: Path("~/.gpubot").expanduser(),
        validation_alias=AliasChoices("GPUBOT_HOME"),
    )
    database_url: str | None = Field(None, validation_alias=AliasChoices("GPUBOT_DATABASE_URL"))
    broker_url: str | None = Field(None, validation_alias=AliasChoices("GPUBOT_BROKER_URL"))
    config_path: Path | None = Field(None, validation_alias=AliasChoices("GPUBOT_CONFIG"))
    vast_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("VAST_API_KEY"))
    vast_url: str = Field("https://console.vast.ai", validation_alias=AliasChoices("VAST_URL"))
    slack_bot_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_BOT_TOKEN")
    )
    slack_signing_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET")
    )
    slack_app_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_APP_TOKEN")
    )
    slack_api_url: str = Field(
        "https://slack.com/api/", validation_alias=AliasChoices("SLACK_API_URL")
    )
    s3_bucket: str | None = Field(None, validation_alias=AliasChoices("GPUBOT_S3_BUCKET"))
    s3_prefix: str = Field("gpubot/", validation_alias=AliasChoices("GPUBOT_S3_PREFIX"))
    ssh_key_path: Path | None = Field(None, validation_alias=AliasChoices("GPUBOT_SSH_KEY"))
    tick_seconds: float = Field(10.0, validation_alias=AliasChoices("GPUBOT_TICK_SECONDS"))
    label_prefix: str = Field("gpubot", validation_alias=AliasChoices("GPUBOT_LABEL_PREFIX"))
    port: int = Field(3000, validation_alias=AliasChoices("PORT"))

    @field_validator("vast_url", "slack_api_url")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("tick_seconds")
    @classmethod
    def _positive_tick(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be > 0 seconds")
        return value

    @field_validator("label_prefix")
    @classmethod
    def _label_prefix(cls, value: str) -> str:
        if not value or ":" in value or len(value) > 32:
            raise ValueError("must be 1-32 characters without ':'")
        return value

    # -- derived values -----------------------------------------------------------------

    @property
    def vast_server_url(self) -> str:
        """VAST_URL without a trailing slash (the SDK appends ``/api/v0`` as is)."""
        return self.vast_url.rstrip("/")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'gpubot.db'}"

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker: GPUBOT_BROKER_URL, else the embedded broker in home.

        The embedded broker, ``gpubotfs://``, is kombu's filesystem transport with atomic
        writes (``workers/embedded_broker.py``, registered when ``workers.celery_app`` is
        imported) in :attr:`broker_folder`: worker, beat and chat processes on one machine."""
        return self.broker_url or "gpubotfs://"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def effective_ssh_key_path(self) -> Path:
        return self.ssh_key_path or self.home / "id_ed25519"

    @property
    def effective_config_path(self) -> Path | None:
        """GPUBOT_CONFIG, else ./gpubot.toml if present, else None (built-in templates)."""
        if self.config_path is not None:
            return self.config_path
        local = Path("gpubot.toml")
        return local if local.is_file() else None

    def secret_values(self) -> list[str]:
        """The raw secret strings in force (for redaction); empty ones are left out."""
        values = []
        for name in SECRET_FIELDS:
            secret = getattr(self, name)
            if secret is not None and secret.get_secret_value():
                values.append(secret.get_secret_value())
        for env_name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if os.environ.get(env_name):
                values.append(os.environ[env_name])
        return values

    def ensure_home(self) -> Path:
        """Create GPUBOT_HOME (mode 0700) and the embedded broker folders; return home."""
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        if self.uses_embedded_broker:
            for sub in ("in", "control"):
                (self.broker_folder / sub).mkdir(parents=True, exist_ok=True)
        return self.home


def describe_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """(ENV_NAME, shown value, source) for every setting; secrets are masked.

    ``source`` is ``env``, ``.env`` or ``default``.
    """
    dotenv: dict[str, str] = {}
    env_file = Path(".env")
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                dotenv[key.strip()] = value.strip()
    rows: list[tuple[str, str, str]] = []
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        env_name = alias.choices[0] if isinstance(alias, AliasChoices) else name.upper()
        assert isinstance(env_name, str)
        if env_name in os.environ:
            source = "env"
        elif env_name in dotenv:
            source = ".env"
        else:
            source = "default"
        value = getattr(settings, name)
        if name in SECRET_FIELDS:
            shown = "(not set)" if value is None else mask_secret(value.get_secret_value())
        elif value is None:
            shown = _derived_default(settings, name)
        else:
            shown = str(value)
        rows.append((str(env_name), shown, source))
    return rows


def _derived_default(settings: Settings, name: str) -> str:
    match name:
        case "database_url":
            return f"{settings.effective_database_url} (SQLite in GPUBOT_HOME)"
        case "broker_url":
            return f"gpubotfs:// in {settings.broker_folder} (embedded, one machine, no server)"
        case "config_path":
            path = settings.effective_config_path
            return str(path) if path else "(built-in templates)"
        case "ssh_key_path":
            return f"{settings.effective_ssh_key_path} (generated ed25519)"
        case "s3_bucket":
            return "(not set: required for jobs; the demo starts a local S3 server)"
    return "(not set)"


def mask_secret(value: str) -> str:
    """Show only the length and the last 2 characters of a secret."""
    if not value:
        return "(empty)"
    if len(value) < 12:
        return "****"
    return f"****{value[-2:]} ({len(value)} chars)"
