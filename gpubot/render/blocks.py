"""Small Block Kit builders shared by the engine's messages. Pure."""

from __future__ import annotations

from typing import Any

ACTION_CANCEL = "job.cancel"
ACTION_KEEP = "job.keep"
ACTION_DESTROY = "job.destroy"
ACTION_EXTEND_BUDGET = "job.extend_budget"
ACTION_APPROVE = "job.approve"
ACTION_REJECT = "job.reject"


def button(action_id: str, text: str, value: str, style: str | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": text},
        "value": value,
    }
    if style:
        element["style"] = style
    return element


def idle_warning_blocks(job_id: str, text: str) -> list[dict[str, Any]]:
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "block_id": f"idle:{job_id}",
            "elements": [
                button(ACTION_KEEP, "Keep alive 2 h", f"{job_id}:2", "primary"),
                button(ACTION_DESTROY, "Destroy now", job_id, "danger"),
            ],
        },
    ]
