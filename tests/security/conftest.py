"""Fixtures for the security tests.

Reuses the Slack surface fixtures of ``tests/bot/conftest.py`` (fake Web API over HTTP, engine
deps on SQLite, the fixed-offer provider, the WSGI client) and the end-to-end fixtures of
``tests/scenarios/conftest.py`` (the simulator over HTTP with real SSH, moto's S3 server).
Only the policy differs: two ordinary users (Alice and Bob) besides the admins, so that a
refusal is about *whose job it is*, not about being on the allow-list at all.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import inspect, select
from werkzeug.serving import make_server
from werkzeug.test import Client

from gpubot.chat.dispatch import handle_command
from gpubot.config import BotConfig, load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from tests.bot.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    ADMIN,
    ADMIN2,
    ALICE,
    BOT_TOKEN,
    CHANNEL,
    FORM,
    MALLORY,
    _no_proxy,
    deps,
    http,
    provider,
    sign,
)
from tests.fixtures.slack_fake import SlackFake
from tests.scenarios.conftest import engine, sim  # noqa: F401 - fixtures re-exported

BOB = "UBOB0001"
"""An allowed, non-admin user who does not own the jobs under attack."""

SECURITY_CONFIG = f"""
[roles]
admins = ["{ADMIN}", "{ADMIN2}"]
allowed_users = ["{ALICE}", "{BOB}"]
approval_above_price_per_hour_usd = 2.0
approval_above_estimate_usd = 25
per_user_max_live_jobs = 50
per_channel_max_live_jobs = 50

[templates.notes]
description = "A job whose only input is free text (a prompt, a caption...)."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "builtin:train"
run = "printf '%s' {{GPUBOT_PARAM_NOTE}} > note.out; printf '%s' {{GPUBOT_PARAM_TAG}} > tag.out"

[templates.notes.params.note]
type = "str"
free_text = true
max_length = 512
default = "none"

[templates.notes.params.tag]
type = "str"
default = "t"

[templates.notes.params.mode]
type = "choice"
choices = ["fast", "slow"]
default = "fast"

[templates.notes.params.flag]
type = "bool"
default = false

[templates.notes.resources]
gpu_names = ["RTX 4090", "RTX 3090"]
interruptible = "no"
expected_hours = 0.5
"""


class QuickSlackFake(SlackFake):
    """The bot folder's fake Web API, polling for shutdown every 20 ms instead of 500 ms
    (dozens of tests here each start and stop one)."""

    def start(self) -> QuickSlackFake:
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self


@pytest.fixture
def slack() -> Iterator[SlackFake]:
    fake = QuickSlackFake(token=BOT_TOKEN, post_interval_seconds=0.05).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def config() -> BotConfig:
    """Overrides the bot folder's policy (the ``deps`` fixture builds on it)."""
    return load_config_text(SECURITY_CONFIG, name="security.toml")


# -- helpers ------------------------------------------------------------------------------


def post(client: Client, body: str, headers: dict[str, str],
         content_type: str = FORM["Content-Type"]) -> tuple[int, str]:
    """POST ``body`` to /slack/events; (status, response text)."""
    response = client.post(
        "/slack/events", data=body, headers={"Content-Type": content_type, **headers}
    )
    return response.status_code, response.get_data(as_text=True)


def launch(app_deps: EngineDeps, text: str, *, user: str, key: str) -> str:
    """Launch through the dispatcher (as a Slack command would); returns the job id."""
    reply = handle_command(app_deps, text, user=user, channel=CHANNEL, request_key=key)
    assert reply.ok and reply.job_id, reply.text
    return reply.job_id


def row_dict(row: Any) -> dict[str, Any]:
    """Every column of an ORM row, by attribute name."""
    return {a.key: getattr(row, a.key) for a in inspect(row).mapper.column_attrs}


def job_snapshot(app_deps: EngineDeps, job_id: str) -> dict[str, Any]:
    with session_scope(app_deps.sessions) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        return row_dict(job)


def all_jobs(app_deps: EngineDeps) -> dict[str, dict[str, Any]]:
    with session_scope(app_deps.sessions) as session:
        return {j.id: row_dict(j) for j in session.scalars(select(JobRow))}


def message_count(app_deps: EngineDeps) -> int:
    with session_scope(app_deps.sessions) as session:
        return len(list(session.scalars(select(MessageRow.id))))


def audit_actions(app_deps: EngineDeps) -> list[tuple[str, str, str]]:
    """(actor, action, target) of every audit event, oldest first."""
    with session_scope(app_deps.sessions) as session:
        return [
            (e.actor, e.action, e.target)
            for e in session.scalars(select(AuditEventRow).order_by(AuditEventRow.id))
        ]


def wait_until(predicate: Any, timeout_s: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until truthy (Bolt runs listeners on its own threads)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling interval, bounded by the deadline


def event_body(event: dict[str, Any], event_id: str) -> str:
    return json.dumps(
        {
            "token": "deprecated",
            "team_id": "T0FAKE",
            "api_app_id": "A0GPUBOT",
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "event": event,
        }
    )
