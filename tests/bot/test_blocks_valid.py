"""Every payload the bot builds is valid Block Kit within Slack's documented limits, and keeps
its meaning: newest log lines kept, code fences closed, ``<`` ``>`` ``&`` shown as typed.

Validity is judged by :func:`tests.fixtures.slack_fake.block_kit_errors` (slack_sdk's
``Block.parse`` + ``validate_json()`` plus the documented limits slack_sdk leaves out), the same
check the fake Web API answers ``invalid_blocks`` with.
"""

from __future__ import annotations

import re
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from gpubot.chat.dispatch import handle_command
from gpubot.commands import help_text
from gpubot.config import BotConfig
from gpubot.db.tables import JobGroupRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.render import mrkdwn as md
from gpubot.render import slack as slack_render
from gpubot.render.blocks import ceiling_prompt_blocks, idle_warning_blocks
from gpubot.render.text import PHASE_LABELS, card_blocks, card_lines
from gpubot.render.views import JobView
from tests.bot.conftest import ALICE, BOT_TOKEN, CHANNEL, make_offer
from tests.fixtures.slack_fake import SlackFake, block_kit_errors

EVIL = "<!channel> <@U0ADMIN> <https://evil.example|Re-login> & co"
EVIL_ESCAPED = "&lt;!channel&gt; &lt;@U0ADMIN&gt; &lt;https://evil.example|Re-login&gt; &amp; co"
LIVE = re.compile(r"<(?:!|@U0ADMIN|https://evil)")


def _texts(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["text"]] if isinstance(node.get("text"), str) else []
        return found + [t for v in node.values() for t in _texts(v)]
    if isinstance(node, list):
        return [t for v in node for t in _texts(v)]
    return []


def assert_valid(blocks: list[dict[str, Any]], *, max_blocks: int = 50) -> str:
    """Valid, no text with an open code fence, no live markup; returns all texts joined."""
    assert block_kit_errors(blocks, max_blocks=max_blocks) == []
    texts = _texts(blocks)
    for text in texts:
        assert text.count("```") % 2 == 0, f"open code fence in: {text[-200:]}"
        assert not LIVE.search(text), f"live markup in: {text[:300]}"
    return "\n".join(texts)


def _view(state: str, **kw: Any) -> JobView:
    base = JobView(
        job_id="j-0123abcd",
        template="train",
        kind="batch",
        state=state,
        requester=ALICE,
        phase_detail=EVIL,
        step=120,
        total_steps=1000,
        metrics={EVIL: 0.5, "loss": 1.234},
        spent_usd=Decimal("1.2345"),
        price_per_hour_usd=Decimal("0.4"),
        budget_usd=Decimal(20),
        gpu_name="RTX <4090>",
        provider_id="123456",
        rental_type="on_demand",
        reason=f"lost: {EVIL}",
    )
    return replace(base, **kw)


# -- job cards ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(PHASE_LABELS))
def test_a_job_card_in_every_state_is_valid_and_escapes_job_values(state: str) -> None:
    view = _view(state)
    joined = assert_valid(card_blocks(view))
    assert EVIL_ESCAPED in joined
    assert "RTX &lt;4090&gt;" in joined
    assert len("\n".join(card_lines(view))) <= md.MESSAGE_TEXT_MAX
    has_cancel = "job.cancel" in str(card_blocks(view))
    assert has_cancel is (state not in {"succeeded", "failed", "cancelled"})


def test_a_failure_with_a_10_kb_single_log_line_keeps_its_newest_characters() -> None:
    reason = "the job exited with status 1. Last log lines:\n" + "E" * 10_000 + " <module> END"
    blocks = card_blocks(_view("failed", reason=reason))
    joined = assert_valid(blocks)
    assert "&lt;module&gt; END\n```" in joined  # the newest characters, escaped, fence closed
    assert "reason: the job exited with status 1" in joined


def test_a_failure_quoting_many_log_lines_keeps_the_newest_lines() -> None:
    lines = [f"line {i:03d} a & b" for i in range(400)]
    reason = "the job exited with status 2. Last log lines:\n" + "\n".join(lines)
    joined = assert_valid(card_blocks(_view("failed", reason=reason)))
    assert "line 399 a &amp; b" in joined
    assert "line 000" not in joined
    assert "earlier lines not shown" in joined


# -- command replies ------------------------------------------------------------------------


def test_help_keeps_every_line_and_shows_placeholders(deps: EngineDeps, config: BotConfig) -> None:
    reply = handle_command(deps, "help", user=ALICE, channel=CHANNEL, request_key=None)
    joined = assert_valid(reply.blocks)
    assert "&lt;job&gt;" in joined and "<job>" not in joined
    shown = md.unescape(joined)
    for line in help_text(config).splitlines():
        if line.strip():
            assert line.rstrip() in shown, f"help line lost: {line!r}"


def test_a_long_log_tail_keeps_the_newest_lines_in_a_closed_fence() -> None:
    lines = [f'  File "x.py", line {i}, in <module>' for i in range(5000)] + ["Error: last"]
    blocks = slack_render.code_blocks("Last 5000 lines of j-1:", lines)
    joined = assert_valid(blocks)
    assert joined.endswith("Error: last\n```")
    assert "in &lt;module&gt;" in joined


def test_fifty_offers_fit_and_escape_provider_text() -> None:
    offers = [
        replace(make_offer(str(1000 + i), "RTX <4090>", "0.40", "0.2"), geolocation="A&B <x>")
        for i in range(50)
    ]
    joined = assert_valid(slack_render.offers_blocks(offers, "50 cheapest matching offers"))
    assert "1000" in joined and "A&amp;B &lt;x&gt;" in joined


def test_a_big_cost_table_is_clamped_with_its_fence_closed() -> None:
    rows = [(f"user <U{i:04d}> & co", Decimal(i)) for i in range(400)]
    joined = assert_valid(slack_render.cost_table(rows, "Cost this month"))
    assert "user &lt;U0000&gt; &amp; co" in joined
    assert "more lines not shown" in joined


def test_budget_and_jobs_replies_are_valid(deps: EngineDeps) -> None:
    for text in ("budget", "jobs", "status", "offers"):
        reply = handle_command(deps, text, user=ALICE, channel=CHANNEL, request_key=None)
        if reply.blocks:
            assert_valid(reply.blocks)


def test_fifty_jobs_in_a_list_stay_within_the_block_limits() -> None:
    """(App Home with 50 jobs: tests/bot/test_app_home.py.)"""
    views = [
        _view("failed", job_id=f"j-{i:08d}", reason="exit 1. Last log lines:\n" + "x" * 5000)
        for i in range(50)
    ]
    assert_valid(slack_render.jobs_blocks(views, "Your jobs"))


def test_plan_approval_idle_and_group_messages_are_valid() -> None:
    plan = [f"Plan for train note={EVIL}:"] + [f"• line {i} {EVIL}" for i in range(200)]
    assert_valid(slack_render.plan_blocks("j-1", plan, awaiting_approval=True))
    approval = slack_render.approval_blocks("j-1", ALICE, plan, EVIL, ["UADMIN1", "<!here>"])
    joined = assert_valid(approval)
    assert f"<@{ALICE}>" in joined and "<@UADMIN1>" in joined
    assert_valid(idle_warning_blocks("j-1", md.escape(EVIL)))
    prompt = ceiling_prompt_blocks("j-0123abcd", md.escape(EVIL) * 20, "0.07921234")
    joined = assert_valid(prompt)
    assert "$0.07921234/h" in joined
    [raise_button, _cancel] = prompt[1]["elements"]
    assert raise_button["value"] == "j-0123abcd:0.07921234"

    from gpubot.groups.results import final_text as _final_text

    group = JobGroupRow(id="g-1", kind="sweep", state="succeeded", spec={})
    children = [JobRow(id=f"j-{i:04d}", state="succeeded") for i in range(300)]
    results = {
        "metric": EVIL,
        "ranking": [
            {"job_id": c.id, "state": "succeeded", "metric": 0.5} for c in children
        ],
    }
    group.spec = {"children": [c.id for c in children], "labels": [EVIL] * 300}
    text = _final_text(group, children, results, None)
    assert len(text) <= md.TEXT_SOFT_MAX
    assert not LIVE.search(text)


# -- the fake answers like production ----------------------------------------------------------


def _client(slack: SlackFake) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=slack.url, timeout=5)


def _error(call: Any) -> tuple[str, int]:
    with pytest.raises(SlackApiError) as info:
        call()
    return str(info.value.response["error"]), int(info.value.response.status_code)


def test_the_fake_refuses_what_slack_refuses(slack: SlackFake) -> None:
    client = _client(slack)
    too_long = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 4259}}]
    assert _error(lambda: client.chat_postMessage(channel="C1", text="t", blocks=too_long)) == (
        "invalid_blocks", 200
    )
    assert _error(lambda: client.chat_postMessage(channel="C1", text="x" * 40_001)) == (
        "msg_too_long", 200
    )
    many = [{"type": "divider"}] * 51
    assert _error(lambda: client.chat_postMessage(channel="C1", text="t", blocks=many))[0] == (
        "invalid_blocks"
    )
    view = {"type": "home", "blocks": [{"type": "divider"}] * 101}
    assert _error(lambda: client.views_publish(user_id=ALICE, view=view))[0] == "invalid_blocks"
    client.chat_postMessage(channel="C1", text="ok", blocks=[{"type": "divider"}])

    slack.strict(channels={"CMEMBER", "COTHER"}, member_of={"CMEMBER"})
    assert _error(lambda: client.chat_postMessage(channel="COTHER", text="t"))[0] == (
        "not_in_channel"
    )
    assert _error(lambda: client.chat_postMessage(channel="CNOPE", text="t"))[0] == (
        "channel_not_found"
    )
    client.chat_postMessage(channel="CMEMBER", text="ok")


def test_the_fakes_rate_limit_is_a_429_with_retry_after_and_can_be_switched_off(
    slack: SlackFake,
) -> None:
    client = _client(slack)
    slack.force_429("chat.postMessage")
    with pytest.raises(SlackApiError) as info:
        client.chat_postMessage(channel="C1", text="t")
    assert info.value.response.status_code == 429
    assert info.value.response.headers.get("Retry-After")
    slack.rate_limiting = False
    for _ in range(5):  # faster than one post per interval: allowed when switched off
        client.chat_postMessage(channel="C1", text="t")
