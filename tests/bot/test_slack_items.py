"""Slack issue item 6 and App Home: the help's ``jobs`` line, the manifest's scopes, confirm
dialogs on destructive buttons, the status chart in the job's thread (never a server path),
decisions replacing the approval buttons, the health server in Socket Mode, and App Home
(buttons, thread links, readable activity, republished on a state change)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gpubot.commands.usage import help_text, usage
from gpubot.config import BotConfig
from gpubot.render import slack as slack_render
from gpubot.render.blocks import button, confirm_dialog, idle_warning_blocks
from gpubot.render.budgets import job_alert_blocks
from tests.bot.conftest import ALICE
from tests.fixtures.slack_fake import block_kit_errors

ROOT = Path(__file__).resolve().parents[2]


def test_help_says_jobs_lists_the_callers_own_jobs(config: BotConfig) -> None:
    for text in (usage("jobs", config), help_text(config)):
        line = next(t for t in text.split("\n") if "jobs" in t and "all" in t.lower())
        assert "this channel" not in text
        assert "your" in line.lower() or "your" in text.lower().split("jobs [all]")[1][:120]


def test_manifest_grants_the_scopes_the_deliverer_uses() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "slack-manifest.yml").read_text())
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"im:write", "files:write", "chat:write", "commands"} <= scopes


# -- confirm dialogs on destructive buttons ----------------------------------------------------

EVIL_JOB = "j-<!channel>&" + "x" * 300


def _buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for b in blocks if b.get("type") == "actions" for e in b["elements"]]


def test_the_fake_refuses_a_malformed_or_oversized_confirm_dialog() -> None:
    def with_confirm(confirm: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "actions", "elements": [button("job.cancel", "Cancel", "j-1",
                                                        "danger") | {"confirm": confirm}]}]

    good = confirm_dialog("Cancel j-1?", "It is destroyed.", "Cancel it")
    assert block_kit_errors(with_confirm(good)) == []
    assert block_kit_errors(with_confirm({"title": {"type": "plain_text", "text": "x"}}))
    assert block_kit_errors(with_confirm({**good, "title": {"type": "plain_text",
                                                              "text": "t" * 101}}))
    assert block_kit_errors(with_confirm({**good, "confirm": {"type": "mrkdwn", "text": "ok"}}))


@pytest.mark.parametrize("job_id", ["j-0a1b2c3d", EVIL_JOB])
def test_cancel_destroy_stop_and_reject_ask_for_confirmation(job_id: str) -> None:
    messages = {
        "approval": slack_render.approval_blocks(job_id, ALICE, ["Plan", "1 x 4090"], "cost",
                                                 ["UADMIN1"]),
        "idle": idle_warning_blocks(job_id, "idle"),
        "budget": job_alert_blocks(job_id, "80 %"),
    }
    for name, blocks in messages.items():
        assert block_kit_errors(blocks) == [], name
        for element in _buttons(blocks):
            if element["action_id"] in {"job.cancel", "job.destroy", "job.reject"}:
                confirm = element.get("confirm")
                assert confirm, f"{name}: {element['action_id']} has no confirm dialog"
                assert confirm["style"] == "danger"
                assert job_id[:20] in confirm["text"]["text"] or "j-" in confirm["text"]["text"]
                assert confirm["confirm"]["text"] and confirm["deny"]["text"]
