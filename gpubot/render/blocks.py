"""Small Block Kit builders shared by the engine's messages. Pure."""

from __future__ import annotations

from typing import Any

ACTION_CANCEL = "job.cancel"
ACTION_KEEP = "job.keep"
ACTION_DESTROY = "job.destroy"
ACTION_EXTEND_BUDGET = "job.extend_budget"
ACTION_APPROVE = "job.approve"
ACTION_REJECT = "job.reject"
ACTION_RAISE_CEILING = "job.raise_ceiling"


CONFIRM_TITLE_MAX = 100
CONFIRM_TEXT_MAX = 300
CONFIRM_BUTTON_MAX = 30
"""Limits of a confirmation dialog object (Block Kit "Composition objects" reference)."""


def _plain(text: str, limit: int) -> dict[str, str]:
    value = "".join(ch for ch in text if ch >= " " or ch == "\n").strip() or "?"
    return {"type": "plain_text", "text": value if len(value) <= limit else
            value[: limit - 1] + "…"}


def confirm_dialog(
    title: str, text: str, confirm: str, deny: str = "Go back", *, style: str = "danger"
) -> dict[str, Any]:
    """A Block Kit confirmation dialog (shown by Slack before the click is sent). All texts are
    raw (plain_text: Slack shows them as they are, no mrkdwn), clamped to Slack's limits:
    title 100, text 300, buttons 30 characters."""
    return {
        "title": _plain(title, CONFIRM_TITLE_MAX),
        "text": _plain(text, CONFIRM_TEXT_MAX),
        "confirm": _plain(confirm, CONFIRM_BUTTON_MAX),
        "deny": _plain(deny, CONFIRM_BUTTON_MAX),
        "style": style,
    }


def button(
    action_id: str,
    text: str,
    value: str,
    style: str | None = None,
    *,
    confirm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A button; ``confirm`` (a :func:`confirm_dialog`) makes Slack ask before sending."""
    element: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": text},
        "value": value,
    }
    if style:
        element["style"] = style
    if confirm:
        element["confirm"] = confirm
    return element


def _short(job_id: str) -> str:
    return job_id if len(job_id) <= 40 else job_id[:39] + "…"


def cancel_confirm(job_id: str) -> dict[str, Any]:
    """The dialog of a Cancel / Stop now button: the job is checkpointed and destroyed."""
    return confirm_dialog(
        f"Cancel {_short(job_id)}?",
        f"{_short(job_id)} will be stopped: a checkpoint is saved where the job supports it, "
        "then its instance is destroyed. This cannot be undone.",
        "Cancel the job",
    )


def destroy_confirm(job_id: str) -> dict[str, Any]:
    """The dialog of Destroy now: the instance is destroyed at once."""
    return confirm_dialog(
        f"Destroy {_short(job_id)} now?",
        f"The instance of {_short(job_id)} will be destroyed now; work since its last "
        "checkpoint is lost. This cannot be undone.",
        "Destroy it",
    )


def keep_confirm(job_id: str, hours: float) -> dict[str, Any]:
    """The dialog of Keep alive: the idle and stuck checks leave the job running (and billing)
    for ``hours`` more."""
    return confirm_dialog(
        f"Keep {_short(job_id)} alive {hours:g} h?",
        f"The idle and stuck checks leave {_short(job_id)} running for {hours:g} more hours, "
        "even with its GPU idle. Its instance bills all that time.",
        "Keep it alive",
        style="primary",
    )


def reject_confirm(job_id: str) -> dict[str, Any]:
    """The dialog of Reject on an approval request: the launch is cancelled."""
    return confirm_dialog(
        f"Reject {_short(job_id)}?",
        f"The launch {_short(job_id)} will be cancelled and nothing will be rented. The "
        "requester is told in the thread.",
        "Reject the launch",
    )


def idle_warning_blocks(job_id: str, text: str) -> list[dict[str, Any]]:
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "block_id": f"idle:{job_id}"[:255],
            "elements": [
                button(ACTION_KEEP, "Keep alive 2 h", f"{job_id}:2", "primary"),
                button(ACTION_DESTROY, "Destroy now", job_id, "danger",
                       confirm=destroy_confirm(job_id)),
            ],
        },
    ]


def raise_ceiling_confirm(job_id: str, price_per_hour_usd: str) -> dict[str, Any]:
    """The dialog of Raise the price: the job may then rent at up to ``price_per_hour_usd``."""
    return confirm_dialog(
        f"Let {_short(job_id)} pay ${price_per_hour_usd}/h?",
        f"{_short(job_id)} may then rent at up to ${price_per_hour_usd} an hour, above the "
        "price approved at launch. Its budget cap still holds.",
        "Raise the price",
        style="primary",
    )


def ceiling_prompt_blocks(
    job_id: str, text: str, price_per_hour_usd: str
) -> list[dict[str, Any]]:
    """The "no offer within the approved price" prompt: ``text`` (mrkdwn), a button raising
    the job's price ceiling to ``price_per_hour_usd`` (a decimal string, $/h; the button's
    value is ``<job id>:<price>``) and Cancel. Both ask before they act."""
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "block_id": f"ceiling:{job_id}"[:255],
            "elements": [
                button(ACTION_RAISE_CEILING, f"Pay up to ${price_per_hour_usd}/h"[:75],
                       f"{job_id}:{price_per_hour_usd}", "primary",
                       confirm=raise_ceiling_confirm(job_id, price_per_hour_usd)),
                button(ACTION_CANCEL, "Cancel", job_id, "danger",
                       confirm=cancel_confirm(job_id)),
            ],
        },
    ]
