"""Slack issue item 6 and App Home: the help's ``jobs`` line, the manifest's scopes, confirm
dialogs on destructive buttons, the status chart in the job's thread (never a server path),
decisions replacing the approval buttons, the health server in Socket Mode, and App Home
(buttons, thread links, readable activity, republished on a state change)."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpubot.commands.usage import help_text, usage
from gpubot.config import BotConfig

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
