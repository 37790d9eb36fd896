"""Console/plain-text and Block Kit renderings of job cards and events. Pure.

Every value of a job (template, phase detail, metric keys, GPU name, failure reason with its
log lines) goes through :mod:`gpubot.render.mrkdwn` before it becomes mrkdwn: the lines
returned here are mrkdwn (escaped), also used as Slack's fallback ``text``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from gpubot.render import mrkdwn as md
from gpubot.render.blocks import ACTION_CANCEL, button, cancel_confirm
from gpubot.render.views import JobView

REASON_LOG_CHARS = 2000
"""At most this many characters of a failure reason's log lines go into a card."""

PHASE_LABELS = {
    "awaiting_approval": "waiting for approval",
    "queued": "queued",
    "renting": "renting an instance",
    "booting": "instance booting",
    "connecting": "connecting over SSH",
    "deploying": "deploying code",
    "setting_up": "setting up the environment",
    "running": "running",
    "interrupted": "interrupted",
    "re_renting": "renting a replacement",
    "restoring": "restoring checkpoint",
    "collecting": "collecting results",
    "tearing_down": "destroying instance",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}

STATE_EMOJI = {"succeeded": ":white_check_mark:", "failed": ":x:", "cancelled": ":no_entry:"}
PLAN_STATES = frozenset({"awaiting_approval", "queued", "renting"})
"""States in which a card without a rented instance still shows the launch plan."""
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled"})
CARD_RESULT_LINKS = 3
"""A finished card links at most this many result files (the result reply lists more)."""


def usd(amount: Decimal | None) -> str:
    """``$1.23``; amounts below one cent keep four places (``$0.0042``)."""
    if amount is None:
        return "-"
    if Decimal(0) < abs(amount) < Decimal("0.01"):
        return f"${amount.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"
    return f"${amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)}"


def progress_bar(step: int | None, total: int | None, width: int = 20) -> str:
    if not step or not total:
        return ""
    frac = max(0.0, min(1.0, step / total))
    filled = int(round(frac * width))
    return "█" * filled + "░" * (width - filled) + f" {frac * 100:.0f}%"


def eta_text(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} m"
    if minutes:
        return f"{minutes} m {secs} s"
    return f"{secs} s"


def _reason_parts(reason: str) -> tuple[str, list[str]]:
    """A failure reason's first line (the summary) and its further lines (log lines)."""
    first, _, rest = md.strip_control(reason).strip().partition("\n")
    return first, [line for line in rest.split("\n")] if rest.strip() else []


def age_text(seconds: float) -> str:
    """``just now``, ``2 min ago``, ``3 h ago`` (for "last checkpoint")."""
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    return f"{int(seconds // 3600)} h ago"


def _file_name(key: str) -> str:
    """The last path segment of an object key (``a/b/ckpt-3/`` -> ``ckpt-3``)."""
    return key.rstrip("/").rsplit("/", 1)[-1]


def card_lines(view: JobView) -> list[str]:
    """The status card as lines of mrkdwn (console front; also the Slack fallback text).

    The card is the job's live top-level message (or its card in its group's thread): the
    headline (state), then the launch plan until an instance is rented, progress with ETA,
    metrics, money (spent at $/h of the budget), the instance (GPU, rental type, attempt),
    the last checkpoint and its age, the first result links once finished, and who launched
    it (a mention, only outside a group). Job values are escaped; a failure reason's log
    lines come as one closed code block that keeps the newest lines (at most
    :data:`REASON_LOG_CHARS` characters).
    """
    phase = PHASE_LABELS.get(view.state, md.inline(view.state, 40))
    head = (
        f"{STATE_EMOJI.get(view.state, ':gear:')} {md.inline(view.job_id, 40)} "
        f"{md.inline(view.template, 60)}: {phase}"
    )
    if view.phase_detail:
        head += f" ({md.inline(view.phase_detail, 200)})"
    lines = [head]
    if view.plan_lines and not view.provider_id and view.state in PLAN_STATES:
        lines.append(md.inline(view.plan_lines[0], 500))
        lines += [md.inline(line, 500) for line in view.plan_lines[1:]]
    if view.step is not None:
        bar = progress_bar(view.step, view.total_steps)
        of = f"/{view.total_steps}" if view.total_steps else ""
        eta = eta_text(view.eta_seconds)
        lines.append(f"step {view.step}{of} {bar}" + (f" ETA {eta}" if eta else ""))
    if view.metrics:
        shown = ", ".join(
            f"{md.inline(k, 80)}={v:.4g}" for k, v in sorted(view.metrics.items())[:6]
        )
        lines.append(f"metrics: {shown}")
    money = f"spent {usd(view.spent_usd)}"
    if view.price_per_hour_usd is not None:
        money += f" at {usd(view.price_per_hour_usd)}/h"
    if view.budget_usd is not None:
        money += f" of budget {usd(view.budget_usd)}"
    lines.append(money)
    if view.provider_id:
        kind = (view.rental_type or "").replace("_", "-")
        attempt = f" (attempt {view.attempts})" if view.attempts > 1 else ""
        lines.append(
            f"instance {md.inline(view.provider_id, 40)} {md.inline(view.gpu_name, 60)} "
            f"{md.inline(kind, 30)}".rstrip()
            + attempt
        )
    if view.last_checkpoint_key:
        when = ""
        if view.last_checkpoint_at is not None and view.updated_at is not None:
            age = (view.updated_at - view.last_checkpoint_at).total_seconds()
            when = f", {age_text(max(0.0, age))}"
        lines.append(
            f"last checkpoint: {md.inline(_file_name(view.last_checkpoint_key), 200)}{when}"
        )
    if view.state == "succeeded" and view.results:
        links = [
            md.link(str(f["url"]) if f.get("url") else None, f.get("name"))
            for f in view.results[:CARD_RESULT_LINKS]
        ]
        more = len(view.results) - CARD_RESULT_LINKS
        lines.append("results: " + ", ".join(links) + (f" (+{more} more)" if more > 0 else ""))
    if view.ssh_command:
        lines.append(f"ssh: `{md.inline(view.ssh_command, 200)}`")
    if view.reason and view.state in {"failed", "cancelled", "interrupted"}:
        first, log_lines = _reason_parts(view.reason)
        lines.append(f"reason: {md.inline(first, 500)}")
        if log_lines:
            lines.append(md.code_block(log_lines, REASON_LOG_CHARS))
    if not view.in_group and view.requester:
        lines.append(f"launched by {md.mention(view.requester)}")
    return lines


def card_blocks(view: JobView, *, buttons: bool = True) -> list[dict[str, Any]]:
    """The status card as Block Kit: the headline, the details, a Cancel button while live
    (with a confirmation dialog: :func:`gpubot.render.blocks.cancel_confirm`).

    Every section stays within Slack's 3000 characters (log lines keep the newest).
    """
    lines = card_lines(view)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": md.clamp(f"*{lines[0]}*")}},
    ]
    if len(lines) > 1:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": md.clamp("\n".join(lines[1:]))}}
        )
    if buttons and view.state not in FINISHED_STATES:
        blocks.append(
            {
                "type": "actions",
                "block_id": f"job:{view.job_id}"[:255],
                # Slack shows the confirm dialog before it sends the click (Block Kit
                # composition objects:
                # https://api.slack.com/reference/block-kit/composition-objects#confirm).
                "elements": [
                    button(ACTION_CANCEL, "Cancel", view.job_id[: md.BUTTON_VALUE_MAX],
                           "danger", confirm=cancel_confirm(view.job_id)),
                ],
            }
        )
    return blocks
