"""A secrets scan of everything the bot records, shows or hands to a rented machine.

One real flow: a signed ``/gpu trainx`` over HTTP (Bolt, the WSGI app), the job driven to
success by the engine on the simulator (real SSH, moto's S3), the outbox delivered to the
fake Slack Web API. Every secret in force has a distinctive value and is registered for
redaction, as at start-up. Then none of them may appear in any database row, any request
the fake Slack received, any log record (DEBUG), nor, while the job runs, in the environment
of the instance's processes or any file under the instance's root.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.test import Client

from bot.app import build_app
from bot.delivery import SlackDeliverer
from bot.http import make_wsgi_app
from gpubot import redact
from gpubot.db.engine import session_scope
from gpubot.db.tables import Base, InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.settings import Settings
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from tests.bot.conftest import command_body, sign, wait_until
from tests.fixtures.slack_fake import SlackFake
from tests.scenarios.conftest import drive, job_row
from tests.scenarios.test_job_flow import inline_tick
from tests.security.conftest import QuickSlackFake

SLACK_BOT_TOKEN = "xoxb-SECSCAN-bot-7f3a9c1e5b2d"
SLACK_SIGNING_SECRET = "SECSCAN-signing-4d2b8e6f0a13"
AWS_SECRET_ACCESS_KEY = "SECSCAN-aws-secret-9d41c7e2b8f6"


@pytest.fixture
def s3_store(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """The moto-backed store, with a distinctive AWS secret in force (boto3 reads the env)."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET_ACCESS_KEY)
    store = S3Store(f"gpubot-secscan-{os.getpid()}-{time.monotonic_ns()}", "gpubot/")
    store.ensure_bucket()
    return store


@pytest.fixture
def secret_slack() -> Iterator[SlackFake]:
    fake = QuickSlackFake(token=SLACK_BOT_TOKEN, post_interval_seconds=0).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def known_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep this test's registrations out of the rest of the session."""
    monkeypatch.setattr(redact, "_known_secrets", set(redact._known_secrets))


def _secrets(sim: SimServer) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": SLACK_BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
        "VAST_API_KEY": sim.api_key,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ACCESS_KEY,
    }


def _leaks(text: str | bytes, secrets: dict[str, str]) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [name for name, value in secrets.items() if value.encode() in data]


def _scan_instance(sim: SimServer, provider_id: str, secrets: dict[str, str]) -> list[str]:
    """Leaks in the running instance: its processes' environments and every file."""
    found: list[str] = []
    pids = sim.control.instance_processes(provider_id)
    assert pids, "the job's processes should be running"
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue  # exited meanwhile
        assert b"GPUBOT_JOB_ID=" in environ or b"GPUBOT_SIM_INSTANCE=" in environ
        found += [f"/proc/{pid}/environ: {n}" for n in _leaks(environ, secrets)]
    assert sim.engine is not None
    root = sim.engine.root_of(int(provider_id))
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "train.py" for p in files), "the job's code should be on the instance"
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path.relative_to(root)}: {n}" for n in _leaks(data, secrets)]
    return found


def _scan_database(deps: EngineDeps, secrets: dict[str, str]) -> tuple[list[str], int]:
    found: list[str] = []
    rows = 0
    with session_scope(deps.sessions) as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)).all():
                rows += 1
                for column, value in zip(table.columns, row, strict=True):
                    text = value if isinstance(value, str) else json.dumps(value, default=str)
                    found += [f"{table.name}.{column.name}: {n}" for n in _leaks(text, secrets)]
    return found, rows


def test_no_secret_is_recorded_shown_or_sent_to_the_instance(
    known_secrets: None,
    sim: SimServer,
    engine: EngineDeps,
    secret_slack: SlackFake,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    secrets = _secrets(sim)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == AWS_SECRET_ACCESS_KEY
    settings = Settings(
        GPUBOT_HOME=str(engine.settings.home),
        VAST_API_KEY=sim.api_key,
        VAST_URL=sim.url,
        GPUBOT_S3_BUCKET=engine.settings.s3_bucket,
        GPUBOT_TICK_SECONDS=0.5,
        SLACK_BOT_TOKEN=SLACK_BOT_TOKEN,
        SLACK_SIGNING_SECRET=SLACK_SIGNING_SECRET,
        SLACK_API_URL=secret_slack.url,
    )
    for value in secrets.values():
        redact.register_secret(value)
    deps = dataclasses.replace(engine, settings=settings)
    http = Client(make_wsgi_app(build_app(deps, settings=settings), deps))
    deliverer = SlackDeliverer.from_settings(settings, deps)
    deliverer.post_interval = deliverer.card_update_interval = 0.0

    def tick() -> None:
        inline_tick(deps)
        deliverer.deliver_once()

    # a signed launch through the Slack HTTP path
    body = command_body("trainx steps=30 step_seconds=0.15", user="U1", channel="C1",
                        trigger="secscan.1", response_url=secret_slack.webhook_url)
    response = http.post(
        "/slack/events", data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 **sign(body, secret=SLACK_SIGNING_SECRET)},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    # The listener acks at once and launches after the ack: wait for the job row.
    job_ids: list[str] = []

    def launched() -> bool:
        with session_scope(deps.sessions) as session:
            job_ids[:] = list(session.scalars(select(JobRow.id)))
        return bool(job_ids)

    wait_until(launched, what="the launch after the ack", timeout_s=30.0)
    [job_id] = job_ids

    # while it runs: the instance's environment and files
    running = drive(deps, job_id, tick=tick,
                    until=lambda j: j.state == "running" and bool((j.progress or {}).get("step")))
    assert running.state == "running"
    with session_scope(deps.sessions) as session:
        provider_id = session.scalars(
            select(InstanceRow.provider_id).where(InstanceRow.job_id == job_id)
        ).one()
    assert provider_id is not None
    instance_leaks = _scan_instance(sim, provider_id, secrets)
    assert not [x for x in instance_leaks if "AWS_SECRET_ACCESS_KEY" in x], instance_leaks
    assert instance_leaks == []

    # to the end, destroy verified, every message delivered
    job = drive(deps, job_id, tick=tick, until=lambda j: j.state in {"succeeded", "failed"})
    assert job.state == "succeeded", job.reason
    for _ in range(20):
        if deliverer.deliver_once() == 0:
            break
    assert job_row(deps, job_id).thread_ts, "the thread parent was posted to the fake Slack"

    # the database, every column of every row
    db_leaks, rows = _scan_database(deps, secrets)
    assert rows > 10
    assert db_leaks == []
    # every call the fake Slack received (the Authorization header is where the token belongs)
    calls = list(secret_slack.calls)
    assert len(calls) >= 3
    assert any(SLACK_BOT_TOKEN in c.authorization for c in calls)
    slack_leaks = [
        f"{c.method}: {n}"
        for c in calls
        for n in _leaks(c.body + json.dumps(c.params, default=str), secrets)
    ]
    slack_leaks += [
        f"webhook: {n}" for w in secret_slack.webhooks for n in _leaks(json.dumps(w), secrets)
    ]
    assert slack_leaks == []
    # every log record, message and arguments, at DEBUG
    assert len(caplog.records) > 20
    log_leaks = [
        f"{r.name}: {n}"
        for r in caplog.records
        for n in _leaks(r.getMessage() + (r.exc_text or ""), secrets)
    ]
    assert log_leaks == []
