"""Escalations to the operators' channel (failed destroys, orphans, billing differences)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from gpubot.notify import outbox

logger = logging.getLogger(__name__)

_ops_channel: str | None = None


def configure(channel: str | None) -> None:
    """Set the ops channel (from gpubot.toml ``[ops] channel``); None logs only."""
    global _ops_channel
    _ops_channel = channel


def escalate(session: Session, text: str) -> None:
    """Tell the operators. Always logged; posted when an ops channel is configured."""
    logger.warning("escalation: %s", text)
    if _ops_channel:
        outbox.to_channel(session, channel=_ops_channel, text=text)
