"""Forged, stale, replayed and malformed requests to ``POST /slack/events``.

Complements tests/bot/test_slack_http.py (unsigned, wrong secret, six minutes old, tampered
text, three re-signed deliveries): here the *identical* signed bytes are replayed, the clock
runs ahead, headers are missing or garbage, bodies are huge, and button clicks are forged.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from werkzeug.test import Client

from bot.http import MAX_BODY_BYTES, make_http_server
from bot.listeners import WORKING
from gpubot.config import BotConfig
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, JobRow
from gpubot.deps import EngineDeps
from tests.bot.conftest import (
    ALICE,
    FORM,
    FixedOffersProvider,
    Kicks,
    MemoryStore,
    action_body,
    command_body,
    make_settings,
    sign,
)
from tests.fixtures.postgres import fresh_database
from tests.fixtures.slack_fake import SlackFake
from tests.security.conftest import (
    all_jobs,
    audit_actions,
    job_snapshot,
    launch,
    message_count,
    post,
    wait_until,
)


def _launch_audits(deps: EngineDeps) -> int:
    with session_scope(deps.sessions) as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEventRow)
                .where(AuditEventRow.action == "launch")
            )
            or 0
        )


def _job_ids(deps: EngineDeps) -> list[str]:
    with session_scope(deps.sessions) as session:
        return list(session.scalars(select(JobRow.id)))


# -- replays of a signed launch -----------------------------------------------------------


@pytest.mark.parametrize(
    "second_extra",
    [
        pytest.param({}, id="plain-replay-within-5-minutes"),
        pytest.param(
            {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"},
            id="redelivery-with-retry-num",
        ),
    ],
)
def test_identical_signed_launch_sent_twice_launches_once(
    http: Client, deps: EngineDeps, slack: SlackFake, second_extra: dict[str, str]
) -> None:
    # The same bytes twice, so the same response_url: both answers land on this path.
    path = "/webhook/replayed-launch"
    body = command_body(
        "train lr=2e-5", trigger="4242.replay.1",
        response_url=slack.webhook_url.split("/webhook/")[0] + path,
    )
    headers = sign(body, timestamp=int(time.time()) - 30)  # same ts, same signature both times

    def answers() -> list[str]:
        return [str(p.params.get("text", "")) for p in list(slack.webhook_log)
                if p.path == path and not p.params.get("delete_original")]

    first_status, first_ack = post(http, body, headers)
    [first] = wait_until(answers, what="the first answer")
    second_status, second_ack = post(http, body, {**headers, **second_extra})
    [_, second] = wait_until(lambda: len(answers()) >= 2 and answers(), what="the second")

    assert (first_status, second_status) == (200, 200)
    assert json.loads(first_ack) == json.loads(second_ack) == {
        "text": WORKING, "response_type": "ephemeral"
    }
    [job_id] = _job_ids(deps)
    assert job_id in first and job_id in second
    assert "Already handled" not in first
    assert "Already handled" in second
    assert _launch_audits(deps) == 1


# -- forged or malformed signatures and timestamps ------------------------------------------


def _assert_nothing_happened(deps: EngineDeps, provider: FixedOffersProvider) -> None:
    assert all_jobs(deps) == {}
    assert provider.searches == 0
    assert audit_actions(deps) == []


def test_signature_over_a_different_body_is_refused(
    http: Client, deps: EngineDeps, provider: FixedOffersProvider
) -> None:
    harmless = command_body("help", trigger="1.1.1")
    launch_body = command_body("train gpu=h100 budget=500", trigger="1.1.2")
    headers = sign(harmless)
    assert post(http, launch_body, headers)[0] == 401
    # the right body and secret, but the signature was made for another timestamp
    ts = int(time.time())
    moved = {**sign(launch_body, timestamp=ts - 1), "X-Slack-Request-Timestamp": str(ts)}
    assert post(http, launch_body, moved)[0] == 401
    _assert_nothing_happened(deps, provider)


def test_timestamp_six_minutes_in_the_future_is_refused(
    http: Client, deps: EngineDeps, provider: FixedOffersProvider
) -> None:
    body = command_body("train lr=2e-5")
    status, _ = post(http, body, sign(body, timestamp=int(time.time()) + 360))
    assert status == 401
    _assert_nothing_happened(deps, provider)


@pytest.mark.parametrize(
    "drop, override",
    [
        pytest.param(("X-Slack-Request-Timestamp",), {}, id="no-timestamp"),
        pytest.param(("X-Slack-Signature",), {}, id="no-signature"),
        pytest.param(
            ("X-Slack-Request-Timestamp", "X-Slack-Signature"), {}, id="no-headers-at-all"
        ),
        pytest.param((), {"X-Slack-Signature": ""}, id="empty-signature"),
        pytest.param((), {"X-Slack-Signature": "v1=00"}, id="other-version"),
        pytest.param((), {"X-Slack-Signature": "v0="}, id="empty-digest"),
    ],
)
def test_missing_or_empty_signature_headers_are_refused(
    http: Client,
    deps: EngineDeps,
    provider: FixedOffersProvider,
    drop: tuple[str, ...],
    override: dict[str, str],
) -> None:
    body = command_body("train lr=2e-5")
    headers = {k: v for k, v in sign(body).items() if k not in drop} | override
    assert post(http, body, headers)[0] == 401
    _assert_nothing_happened(deps, provider)


@pytest.mark.parametrize("timestamp", ["abc", "", "1.7e9", "-"])
def test_non_numeric_timestamp_is_refused_with_401(
    http: Client, deps: EngineDeps, provider: FixedOffersProvider, timestamp: str
) -> None:
    body = command_body("train lr=2e-5")
    headers = {**sign(body), "X-Slack-Request-Timestamp": timestamp}
    status, _ = post(http, body, headers)
    _assert_nothing_happened(deps, provider)
    assert status == 401


def test_non_numeric_timestamp_never_launches(
    http: Client, deps: EngineDeps, provider: FixedOffersProvider
) -> None:
    """Whatever the status code, a garbage timestamp must not get past verification."""
    body = command_body("train lr=2e-5")
    for timestamp in ("abc", "", "1.7e9", " 1700000000"):
        status, _ = post(http, body, {**sign(body), "X-Slack-Request-Timestamp": timestamp})
        assert status != 200
    _assert_nothing_happened(deps, provider)


@pytest.fixture
def live_server(http: Client, deps: EngineDeps) -> Iterator[str]:
    """The production WSGI app on a real werkzeug server (127.0.0.1, OS-chosen port)."""
    from bot.app import build_app

    server = make_http_server(build_app(deps, settings=deps.settings), deps,
                              host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/slack/events"
    finally:
        server.shutdown()
        server.server_close()


def _raw_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _huge_body() -> str:
    body = command_body("train lr=2e-5", trigger="huge.1")
    return body + "&padding=" + "A" * (2 * MAX_BODY_BYTES)


def test_huge_signed_body_is_never_dispatched(
    live_server: str, deps: EngineDeps, provider: FixedOffersProvider
) -> None:
    body = _huge_body()
    headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(body)}
    status = _raw_post(live_server, body.encode(), headers)
    assert status != 200
    _assert_nothing_happened(deps, provider)


def test_huge_body_gets_413_not_5xx(live_server: str) -> None:
    body = _huge_body()
    headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(body)}
    assert _raw_post(live_server, body.encode(), headers) == 413


# -- forged interactivity (block_actions) -----------------------------------------------------


def test_forged_button_clicks_get_401_and_change_nothing(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    job_id = launch(deps, "train lr=2e-5", user=ALICE, key="forged-1")
    before_job, before_audit = job_snapshot(deps, job_id), audit_actions(deps)
    before_messages = message_count(deps)
    # Even the job's owner: a click is only trusted when Slack signed it.
    for action_id in ("job.cancel", "job.destroy", "job.keep", "job.extend_budget"):
        value = f"{job_id}:1000" if action_id == "job.extend_budget" else job_id
        body = action_body(action_id, value, user=ALICE, response_url=slack.webhook_url)
        harmless = action_body("job.keep", "j-00000000", user=ALICE)
        forgeries = {
            "unsigned": {},
            "wrong secret": sign(body, secret="guessed-secret"),
            "stale": sign(body, timestamp=int(time.time()) - 301),
            "future": sign(body, timestamp=int(time.time()) + 360),
            "other payload's signature": sign(harmless),
        }
        for name, headers in forgeries.items():
            assert post(http, body, headers)[0] == 401, (action_id, name)
    assert job_snapshot(deps, job_id) == before_job
    assert audit_actions(deps) == before_audit
    assert message_count(deps) == before_messages
    assert slack.webhooks == []


def test_signed_click_control_case_does_change_the_job(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    """The same click, correctly signed, works: the forgeries above fail for the signature."""
    job_id = launch(deps, "train lr=2e-5", user=ALICE, key="forged-2")
    body = action_body("job.cancel", job_id, user=ALICE, response_url=slack.webhook_url)
    assert post(http, body, sign(body))[0] == 200
    wait_until(lambda: job_snapshot(deps, job_id)["cancel_requested"], what="cancel")


def test_replayed_budget_click_raises_the_budget_once(
    http: Client, deps: EngineDeps, slack: SlackFake
) -> None:
    job_id = launch(deps, "train lr=2e-5", user=ALICE, key="replay-click")
    start = job_snapshot(deps, job_id)["budget_usd"]
    body = action_body(
        "job.extend_budget", f"{job_id}:10", user=ALICE, response_url=slack.webhook_url
    )
    headers = sign(body)
    assert post(http, body, headers)[0] == 200
    wait_until(lambda: job_snapshot(deps, job_id)["budget_usd"] != start, what="first click")
    assert post(http, body, headers)[0] == 200
    wait_until(lambda: len(slack.webhooks) >= 2, what="second answer")
    assert job_snapshot(deps, job_id)["budget_usd"] == start + Decimal(10)


# -- the same click delivered concurrently ---------------------------------------------------

CONCURRENT_DELIVERIES = 8


@pytest.fixture
def pg_deps(
    tmp_path: Path, slack: SlackFake, config: BotConfig, provider: FixedOffersProvider
) -> Iterator[EngineDeps]:
    """The bot's deps on a fresh PostgreSQL database (dropped afterwards): the production
    database, where concurrent transactions really overlap."""
    from gpubot.wiring import build_engine_deps

    with fresh_database("gpubot_click") as url:
        settings = make_settings(tmp_path / "home", slack.url).model_copy(
            update={"database_url": url}
        )
        built = build_engine_deps(
            settings, config=config, provider=provider, store=MemoryStore(), enqueuer=Kicks()
        )
        yield built
        built.sessions.kw["bind"].dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_one_budget_click_delivered_concurrently_raises_the_budget_once(
    request: pytest.FixtureRequest, slack: SlackFake, database: str
) -> None:
    from bot.app import build_app

    app_deps: EngineDeps = request.getfixturevalue("deps" if database == "sqlite" else "pg_deps")
    job_id = launch(app_deps, "train lr=2e-5", user=ALICE, key=f"concurrent-click-{database}")
    start = job_snapshot(app_deps, job_id)["budget_usd"]
    assert start is not None
    path = "/webhook/concurrent-click"
    body = action_body(
        "job.extend_budget", f"{job_id}:10", user=ALICE,
        response_url=slack.webhook_url.split("/webhook/")[0] + path,
    )
    headers = {**FORM, **sign(body)}  # one signed click, byte for byte, sent N times at once
    server = make_http_server(build_app(app_deps, settings=app_deps.settings), app_deps,
                              host="127.0.0.1", port=0)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{server.server_port}/slack/events"
    start_line = threading.Barrier(CONCURRENT_DELIVERIES)
    statuses: list[int] = []

    def deliver() -> None:
        start_line.wait(timeout=10)
        statuses.append(_raw_post(url, body.encode(), headers))

    senders = [threading.Thread(target=deliver) for _ in range(CONCURRENT_DELIVERIES)]
    try:
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=20)
        assert statuses == [200] * CONCURRENT_DELIVERIES
        wait_until(
            lambda: len([p for p in slack.webhook_log if p.path == path])
            >= CONCURRENT_DELIVERIES,
            timeout_s=20, what="an answer to every delivery",
        )
    finally:
        server.shutdown()
        server.server_close()
    new = start + Decimal(10)
    assert job_snapshot(app_deps, job_id)["budget_usd"] == new
    extends = [a for a in audit_actions(app_deps) if a[1] == "budget.extend"]
    assert extends == [(ALICE, "budget.extend", job_id)]
    answers = {str(p.params.get("text")) for p in slack.webhook_log if p.path == path}
    assert len(answers) == 1, answers  # the replays get the first answer, word for word
    [answer] = answers
    assert job_id in answer and "budget raised" in answer
