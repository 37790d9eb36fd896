"""Build the configured :class:`~gpubot.providers.base.Provider` from settings."""

from __future__ import annotations

from gpubot.errors import ConfigError
from gpubot.providers.base import Provider
from gpubot.settings import Settings


def make_provider(settings: Settings) -> Provider:
    """The vast.ai provider for ``VAST_API_KEY`` at ``VAST_URL`` (``settings.vast_server_url``).

    Point ``VAST_URL`` at the simulator (``gpubot sim``) to run without a real account.

    Raises:
        ConfigError: ``VAST_API_KEY`` is missing or empty (the message never shows a key).
    """
    from gpubot.providers.vastai import VastAIProvider

    secret = settings.vast_api_key
    api_key = secret.get_secret_value().strip() if secret is not None else ""
    if not api_key:
        raise ConfigError(
            "VAST_API_KEY is not set: create an API key at https://cloud.vast.ai/account/ "
            "(or run `gpubot sim` and use its key) and export VAST_API_KEY",
            key="VAST_API_KEY",
        )
    if not settings.vast_server_url:
        raise ConfigError("VAST_URL is empty", key="VAST_URL")
    return VastAIProvider(api_key=api_key, server_url=settings.vast_server_url)
