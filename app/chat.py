"""``gpubot chat "/gpu …"``: the terminal front on an engine wired from settings."""

from __future__ import annotations


def main(text: str, *, user: str, channel: str, follow: bool) -> int:
    """Run one command as ``user`` in ``channel``; follow the job's thread when ``follow``.

    Returns the console front's exit code (``bot.console``: 0 ok, 1 job failed, 2 refused,
    3 timed out). Raises ``ConfigError`` when the settings cannot build an engine.
    """
    from bot.console import run_chat
    from gpubot.wiring import build_engine_deps
    from workers.runtime import CeleryKicker

    deps = build_engine_deps(enqueuer=CeleryKicker())
    return run_chat(deps, text, user=user, channel=channel, follow=follow)
