"""vast.ai adapter on the official ``vastai`` SDK: query building, reply parsing, the provider."""

from gpubot.providers.vastai.provider import VastAIProvider

__all__ = ["VastAIProvider"]
