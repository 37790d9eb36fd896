"""Outbox delivery against the fake Web API: threads, in-place cards, pacing, 429s, outages."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from slack_sdk import WebClient
from sqlalchemy import select, update

from bot.delivery import SlackDeliverer
from gpubot.chat import launch
from gpubot.commands import LaunchCommand
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.models import JobState
from gpubot.notify import events, outbox
from tests.bot.conftest import ALICE, BOT_TOKEN, SIGNING_SECRET
from tests.fixtures.slack_fake import SlackFake

CHANNEL = "CBUSY001"


def _launch(deps: EngineDeps, n: int, channel: str = CHANNEL) -> list[str]:
    plan = launch.plan_launch(deps, LaunchCommand(template="train"))
    return [
        launch.submit(deps, plan, requester=ALICE, channel=channel, request_key=f"k{channel}{i}")[
            0
        ]
        for i in range(n)
    ]


def _deliverer(deps: EngineDeps, slack: SlackFake, **kwargs: float) -> SlackDeliverer:
    client = WebClient(token=BOT_TOKEN, base_url=slack.url, timeout=5)
    return SlackDeliverer(
        client, deps, method_intervals_seconds={"chat.update": 0.02}, **kwargs  # type: ignore[arg-type]
    )


def _dirty(deps: EngineDeps) -> int:
    with session_scope(deps.sessions) as session:
        return len(session.scalars(select(MessageRow).where(MessageRow.dirty.is_(True))).all())


def _drain(deliverer: SlackDeliverer, deps: EngineDeps, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _dirty(deps):
        assert time.monotonic() < deadline, f"{_dirty(deps)} rows still undelivered"
        deliverer.deliver_once()
        time.sleep(0.01)


def _finish(deps: EngineDeps, job_id: str, state: JobState = JobState.SUCCEEDED) -> None:
    with session_scope(deps.sessions) as session:
        session.execute(update(JobRow).where(JobRow.id == job_id).values(state=state.value))
        job = session.get(JobRow, job_id)
        assert job is not None
        session.refresh(job)
        events.refresh_card(session, job)
        events.finished(session, job)


def _assert_429s_honoured(slack: SlackFake) -> None:
    """After a 429 on a channel, no post to that channel came before Retry-After elapsed."""
    posts = slack.calls_to("chat.postMessage")
    for i, call in enumerate(posts):
        if call.status != 429:
            continue
        channel = call.params["channel"]
        later = [c for c in posts[i + 1 :] if c.params["channel"] == channel]
        if later:
            assert later[0].at - call.at >= slack.retry_after - 0.02


def test_twenty_cards_in_one_channel_end_in_their_final_state(
    deps: EngineDeps, tmp_path: Path
) -> None:
    slack = SlackFake(
        token=BOT_TOKEN,
        post_interval_seconds=0.05,
        update_limit=8,
        update_window_seconds=0.5,
        retry_after=0.3,
    ).start()
    try:
        job_ids = _launch(deps, 20)
        # Besides its own limits, the fake rate-limits some posts and updates outright.
        slack.force_429("chat.postMessage", 3)
        slack.force_429("chat.update", 3)
        deliverer = _deliverer(
            deps, slack, post_interval_seconds=0.06, card_update_interval_seconds=0.1
        )
        deadline = time.monotonic() + 10
        while len(slack.top_level(CHANNEL)) < 10 and time.monotonic() < deadline:
            deliverer.deliver_once()
            time.sleep(0.01)
        for job_id in job_ids:  # progress for every job, then the end, while delivering
            with session_scope(deps.sessions) as session:
                session.execute(update(JobRow).where(JobRow.id == job_id).values(state="running"))
                job = session.get(JobRow, job_id)
                assert job is not None
                session.refresh(job)
                events.refresh_card(session, job)
            deliverer.deliver_once()
        for job_id in job_ids:
            _finish(deps, job_id)
        _drain(deliverer, deps)
    finally:
        slack.stop()

    # each job's live card is its top-level message, edited to its final state
    parents = {m.text.split()[1]: m for m in slack.top_level(CHANNEL)}
    assert sorted(parents) == sorted(job_ids)
    for job_id, parent in parents.items():
        thread = slack.thread(CHANNEL, parent.ts)
        assert parent.history[0].split("\n")[0].split()[1] == job_id
        assert "succeeded" in parent.text.splitlines()[0], parent.text
        assert any("succeeded. Final cost" in m.text for m in thread)
        with session_scope(deps.sessions) as session:
            job = session.get(JobRow, job_id)
            assert job is not None and job.thread_ts == parent.ts
    _assert_429s_honoured(slack)
    assert slack.rate_limited.count("chat.postMessage") >= 3
    assert slack.rate_limited.count("chat.update") >= 3
    assert all(c.status in (200, 429) for c in slack.calls)
    for call in slack.calls:
        body = call.body + json.dumps(call.params, default=str)
        assert BOT_TOKEN not in body and SIGNING_SECRET not in body


def test_429_sets_not_before_and_other_channels_go_on(deps: EngineDeps, slack: SlackFake) -> None:
    [job_a] = _launch(deps, 1, channel="CAAAA001")
    [job_b] = _launch(deps, 1, channel="CBBBB001")
    slack.retry_after = 30
    slack.force_429("chat.postMessage", 1)
    deliverer = _deliverer(deps, slack, post_interval_seconds=0.0)
    before = datetime.now(UTC)
    deliverer.deliver_once()
    with session_scope(deps.sessions) as session:
        rows = {(m.job_id, m.kind): m for m in session.scalars(select(MessageRow))}
    limited = rows[(job_a, "card")]  # the job's live card is its top-level message
    assert limited.dirty and limited.ts is None
    assert limited.not_before >= before + timedelta(seconds=29)
    assert rows[(job_b, "card")].ts is not None  # the other channel was not blocked
    assert [c.params["channel"] for c in slack.calls_to("chat.postMessage")].count("CAAAA001") == 1


def test_outage_leaves_rows_dirty_until_slack_is_back(deps: EngineDeps, slack: SlackFake) -> None:
    _launch(deps, 2)
    deliverer = _deliverer(deps, slack, post_interval_seconds=0.06)
    slack.down = True
    assert deliverer.deliver_once() == 0
    assert _dirty(deps) == 3  # each job's live card, and the requester's App Home
    slack.down = False
    with session_scope(deps.sessions) as session:  # time passes: the back-off is over
        session.execute(update(MessageRow).values(not_before=datetime.now(UTC)))
    _drain(deliverer, deps)
    assert len(slack.top_level(CHANNEL)) == 2


def test_files_and_ephemerals_are_delivered_into_the_thread(
    deps: EngineDeps, slack: SlackFake, tmp_path: Path
) -> None:
    from gpubot.render.charts import loss_chart_png

    [job_id] = _launch(deps, 1)
    png = loss_chart_png([(1, 2.0), (2, 1.5), (3, 1.1)], tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with session_scope(deps.sessions) as session:
        outbox.upload(
            session, channel=CHANNEL, thread_key=job_id, path=str(png), title="loss", job_id=job_id
        )
        session.add(MessageRow(channel=CHANNEL, kind="ephemeral", user=ALICE, text="psst"))
    _drain(_deliverer(deps, slack, post_interval_seconds=0.06), deps)
    [parent] = slack.top_level(CHANNEL)
    assert slack.files == [
        {"id": slack.files[0]["id"], "title": "loss", "channel": CHANNEL, "thread_ts": parent.ts}
    ]
    assert slack.ephemerals[0]["user"] == ALICE
