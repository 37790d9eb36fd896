"""Who may do what: allow-lists, admins and launch approval (``[roles]``); quotas: chat/quotas.py.

Slack has no per-command ACL, so every command *and every button click* is checked here.
Refusals raise :class:`gpubot.errors.PermissionDenied` whose ``user_message`` says why; nothing
has changed when one is raised.
"""

from __future__ import annotations

from decimal import Decimal

from gpubot.config import BotConfig
from gpubot.db.tables import JobRow
from gpubot.errors import PermissionDenied
from gpubot.render.text import usd


def is_admin(config: BotConfig, user: str) -> bool:
    return user in config.roles.admins


def check_may_use(config: BotConfig, user: str, channel: str) -> None:
    """Raise PermissionDenied unless ``user`` may use the bot in ``channel``.

    Empty allow-lists allow everyone / every channel; admins pass the user allow-list.
    """
    roles = config.roles
    if roles.allowed_users and user not in roles.allowed_users and not is_admin(config, user):
        raise PermissionDenied(
            f"user {user} is not allowed",
            user_message="Sorry, you are not on the list of people allowed to rent GPUs. "
            "Ask an admin to add you to [roles] allowed_users.",
        )
    if roles.allowed_channels and channel not in roles.allowed_channels:
        raise PermissionDenied(
            f"channel {channel} is not allowed",
            user_message="GPUs can't be rented from this channel. Use one of: "
            + ", ".join(f"<#{c}>" for c in roles.allowed_channels),
        )


def check_admin(config: BotConfig, user: str, what: str) -> None:
    """Raise PermissionDenied unless ``user`` is an admin; ``what`` names the action."""
    if not is_admin(config, user):
        raise PermissionDenied(
            f"{user} is not an admin", user_message=f"Only an admin can {what}."
        )


def check_owner_or_admin(config: BotConfig, user: str, job: JobRow, what: str) -> None:
    """Raise PermissionDenied unless ``user`` requested ``job`` or is an admin."""
    if user != job.requester and not is_admin(config, user):
        raise PermissionDenied(
            f"{user} may not {what} {job.id}",
            user_message=f"Only <@{job.requester}> (who launched {job.id}) or an admin can "
            f"{what} it.",
        )


def approval_reason(
    config: BotConfig, *, price_per_hour_usd: Decimal, estimate_usd: Decimal
) -> str | None:
    """Why a launch needs an admin's approval, or None when it does not."""
    roles = config.roles
    reasons = []
    limit = roles.approval_above_price_per_hour_usd
    if limit is not None and price_per_hour_usd > limit:
        reasons.append(f"{usd(price_per_hour_usd)}/h is above the {usd(limit)}/h limit")
    limit = roles.approval_above_estimate_usd
    if limit is not None and estimate_usd > limit:
        reasons.append(f"the estimate {usd(estimate_usd)} is above the {usd(limit)} limit")
    return "; ".join(reasons) or None


def check_approver(config: BotConfig, approver: str, requester: str) -> None:
    """Raise PermissionDenied unless ``approver`` is an admin other than ``requester``."""
    if not is_admin(config, approver):
        raise PermissionDenied(
            f"{approver} is not an admin", user_message="Only an admin can approve launches."
        )
    if approver == requester:
        raise PermissionDenied(
            f"{approver} tried to approve their own launch",
            user_message="You can't approve your own launch; another admin has to.",
        )
