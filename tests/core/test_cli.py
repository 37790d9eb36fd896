"""The ``gpubot`` command line, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GPUBOT_", "VAST_", "SLACK_"))
    }
    environ.update(GPUBOT_HOME=str(home), **env)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=home,
        timeout=120,
    )


def test_config_check_on_empty_home_prints_the_defaults(tmp_path: Path) -> None:
    result = run(["config", "check"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in (
        "GPUBOT_HOME", "GPUBOT_DATABASE_URL", "GPUBOT_BROKER_URL", "GPUBOT_CONFIG",
        "VAST_API_KEY", "VAST_URL", "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET",
        "SLACK_APP_TOKEN", "SLACK_API_URL", "GPUBOT_S3_BUCKET", "GPUBOT_S3_PREFIX",
        "GPUBOT_SSH_KEY", "GPUBOT_TICK_SECONDS", "GPUBOT_LABEL_PREFIX", "PORT",
    ):
        assert name in out
    assert "https://console.vast.ai" in out and "10.0" in out and "gpubot/" in out
    assert "templates: ocr, train" in out


def test_config_check_masks_secrets(tmp_path: Path) -> None:
    secret = "xoxb-1234567890-very-secret-token"
    result = run(["config", "check"], tmp_path, SLACK_BOT_TOKEN=secret)
    assert result.returncode == 0
    assert secret not in result.stdout + result.stderr
    assert "SLACK_BOT_TOKEN" in result.stdout and "[env]" in result.stdout


def test_config_check_names_the_broken_key_and_line(tmp_path: Path) -> None:
    (tmp_path / "gpubot.toml").write_text('[budgets]\nteam_monthly_usd = 100\nbogus = 1\n')
    result = run(["config", "check"], tmp_path)
    assert result.returncode != 0
    assert "bogus" in result.stderr and "line 3" in result.stderr


def test_db_upgrade_creates_the_schema_on_sqlite(tmp_path: Path) -> None:
    result = run(["db", "upgrade"], tmp_path)
    assert result.returncode == 0, result.stderr
    import sqlite3

    with sqlite3.connect(tmp_path / "gpubot.db") as conn:
        names = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"jobs", "instances", "ledger_entries", "audit_events", "messages"} <= names


@pytest.mark.parametrize("command", ["serve", "worker", "beat", "sim", "chat", "demo"])
def test_every_procfile_and_cli_command_answers_help(tmp_path: Path, command: str) -> None:
    result = run([command, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: gpubot" in result.stdout


def test_procfile_names_existing_commands() -> None:
    from app.cli import build_parser

    procfile = (Path(__file__).parents[2] / "Procfile").read_text().splitlines()
    kinds = {k: v.split() for k, v in (line.split(":", 1) for line in procfile if line.strip())}
    assert set(kinds) == {"bot", "worker", "answers", "beat"}
    assert kinds["beat"] == ["gpubot", "beat"]
    for argv in kinds.values():
        assert argv[0] == "gpubot"
        build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown command/flag


def test_worker_refuses_a_queue_the_app_does_not_declare(tmp_path: Path) -> None:
    result = run(["worker", "--queues", "answers,anwsers"], tmp_path)
    assert result.returncode == 2
    assert "unknown queue(s) anwsers" in result.stderr and "celery, answers" in result.stderr


def test_demo_without_the_demo_extra_names_the_extra(tmp_path: Path) -> None:
    # given an environment where moto cannot be imported (a stand-in module that fails)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "moto.py").write_text("raise ImportError('blocked for the test', name='moto')\n")
    # when the demo starts
    result = run(["demo"], tmp_path, PYTHONPATH=str(blocker))
    # then it stops at once with a message naming the extra and how to install it
    assert result.returncode == 2, result.stderr
    assert "'demo' extra" in result.stderr and "pip install -e '.[demo]'" in result.stderr


def test_beat_keeps_its_schedule_in_gpubot_home_not_in_the_working_directory(
    tmp_path: Path,
) -> None:
    # given an empty working directory, GPUBOT_HOME elsewhere and a broker URL (kombu's
    # in-memory transport: no server, and not the embedded-broker branch of the config)
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GPUBOT_", "SLACK_"))}
    environ.update(GPUBOT_HOME=str(home), GPUBOT_BROKER_URL="memory://")
    # when `gpubot beat` runs until its schedule file exists
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "beat", "--loglevel=WARNING"],
        cwd=cwd,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(home.glob("celerybeat-schedule*")):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "beat wrote no schedule file in GPUBOT_HOME"
            time.sleep(0.1)  # polling for the file, bounded by the deadline
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # then the schedule lives in GPUBOT_HOME and nothing was written to the working directory
    assert list(home.glob("celerybeat-schedule*"))
    assert list(cwd.iterdir()) == []
