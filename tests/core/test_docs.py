"""The documents that operators rely on stay in step with the code."""

from __future__ import annotations

from pathlib import Path

import yaml  # type: ignore[import-untyped]

from gpubot.settings import Settings

ROOT = Path(__file__).parents[2]


def setting_names() -> list[str]:
    names = []
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        names.append(alias.choices[0])  # type: ignore[union-attr]
    return names


def test_every_setting_is_in_env_example_and_readme() -> None:
    env_example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    names = setting_names()
    assert len(names) == 16
    for name in names:
        assert f"{name}=" in env_example, name
        assert name in readme, name


def test_compose_file_has_the_services_and_one_beat() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "bot", "worker", "beat", "flower"} <= set(services)
    commands = [str(s.get("command", "")) for s in services.values()]
    assert sum("beat" in c and "gpubot" in c for c in commands) == 1


def test_slack_manifest_declares_the_command_and_interactivity() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "slack-manifest.yml").read_text())
    commands = manifest["features"]["slash_commands"]
    assert [c["command"] for c in commands] == ["/gpu"]
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"commands", "chat:write"} <= scopes
