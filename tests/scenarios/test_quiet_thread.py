"""What a channel sees of a job and of a sweep, through the real delivery to the Slack fake.

One quiet live card per job: the top-level message IS the job's card (edited in place up to
its outcome and cost); the thread gets only what needs attention or record (the final result
with the requester's mention, links and the chart). A sweep is one top-level message (the
live summary); its runs' cards live in that thread, without a mention each.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from slack_sdk import WebClient
from sqlalchemy import select

from bot.delivery import SlackDeliverer
from gpubot import groups
from gpubot.commands.grammar import parse_command
from gpubot.commands.types import SweepCommand
from gpubot.config import load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import MessageRow
from gpubot.deps import EngineDeps
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from tests.fixtures.slack_fake import Posted, SlackFake
from tests.groups.conftest import drive_group
from tests.scenarios.conftest import TEST_TEMPLATES, drive, make_engine
from tests.scenarios.test_job_flow import inline_tick, launch

CHANNEL = "C1"
REQUESTER = "U1"
MENTION = re.compile(r"<@U[A-Z0-9]+>")


@pytest.fixture
def slack() -> Iterator[SlackFake]:
    fake = SlackFake(post_interval_seconds=0.01, update_limit=10_000).start()
    try:
        yield fake
    finally:
        fake.stop()


def deliverer_for(deps: EngineDeps, slack: SlackFake) -> SlackDeliverer:
    """The production deliverer, paced fast enough for a test (every card version is sent)."""
    return SlackDeliverer(
        WebClient(token=slack.token, base_url=slack.url),
        deps,
        post_interval_seconds=0.01,
        card_update_interval_seconds=0.0,
        method_intervals_seconds={"chat.update": 0.0},
    )


def drain(deps: EngineDeps, deliverer: SlackDeliverer, timeout_s: float = 20.0) -> None:
    """Deliver until no message is dirty (polling with a deadline)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        deliverer.deliver_once()
        with session_scope(deps.sessions) as session:
            dirty = session.scalars(
                select(MessageRow.id).where(MessageRow.dirty.is_(True))
            ).first()
        if dirty is None:
            return
        assert time.monotonic() < deadline, "the outbox did not drain"
        time.sleep(0.02)  # pacing between delivery rounds, bounded by the deadline


def posts(slack: SlackFake) -> tuple[list[Posted], list[Posted]]:
    """``(top level, in a thread)``: the messages chat.postMessage created in the fake."""
    with slack._lock:
        made = list(slack.messages.values())
    return [m for m in made if not m.thread_ts], [m for m in made if m.thread_ts]


def test_an_uneventful_train_job_is_one_live_card_and_a_quiet_thread(
    engine: EngineDeps, slack: SlackFake
) -> None:
    # given a train job launched from the channel, delivered to Slack as it runs
    deliverer = deliverer_for(engine, slack)
    job_id = launch(engine, "trainx steps=60 step_seconds=0.1", "k-quiet")

    def tick() -> None:
        inline_tick(engine)
        deliverer.deliver_once()

    # when it runs to success
    job = drive(
        engine, job_id, until=lambda j: j.state in {"succeeded", "failed", "cancelled"},
        tick=tick,
    )
    drain(engine, deliverer)

    # then: one top-level message, which is the card, edited to the outcome and cost
    assert job.state == "succeeded", job.reason
    top, in_thread = posts(slack)
    assert len(top) == 1, [m.text for m in top]
    [parent] = slack.top_level(CHANNEL)
    assert job_id in parent.text and "succeeded" in parent.text
    assert re.search(r"spent \$\d", parent.text), parent.text
    assert "succeeded" in str(parent.blocks) and "$" in str(parent.blocks)
    history = "\n".join(parent.history)
    assert "Plan for trainx" in parent.history[0]  # the plan is the card's first state
    assert "running" in history and "last checkpoint: checkpoint-" in history
    # at most 4 messages in its thread, none of them "rented", "running" or per checkpoint
    assert 1 <= len(in_thread) <= 4, [m.text for m in in_thread]
    thread = slack.thread(CHANNEL, parent.ts)
    texts = "\n".join(m.text for m in thread)
    assert "Rented instance" not in texts and "is running" not in texts
    assert "Checkpoint saved" not in texts
    # the result mentions the requester, with the final cost; the chart is in the thread
    [result] = [m for m in thread if "Final cost" in m.text]
    assert f"<@{REQUESTER}>" in result.text and "succeeded" in result.text
    assert [f["thread_ts"] for f in slack.files] == [parent.ts]
    assert not slack.rejected


@pytest.fixture
def gengine32(
    tmp_path: Path, sim: SimServer, s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> EngineDeps:
    """The scenario templates, room for a 32-run sweep in the live-job quotas."""
    roles = "\n[roles]\nper_user_max_live_jobs = 64\nper_channel_max_live_jobs = 64\n"
    text = TEST_TEMPLATES + roles
    config = load_config_text(text, name="sweep32.toml")
    return make_engine(tmp_path / "home", sim, s3_store, config, monkeypatch)


def test_a_32_run_sweep_is_one_top_level_message_with_its_runs_in_the_thread(
    gengine32: EngineDeps, slack: SlackFake
) -> None:
    # given a sweep of 32 runs, delivered to Slack
    deps = gengine32
    deliverer = deliverer_for(deps, slack)
    lrs = ",".join(f"0.{i:03d}1" for i in range(32))
    command = parse_command(f"sweep trainx lr={lrs} steps=20", deps.config)
    assert isinstance(command, SweepCommand)
    sub = groups.submit_sweep(
        deps, command, requester=REQUESTER, channel=CHANNEL, request_key="k-32"
    )
    assert len(sub.job_ids) == 32
    drain(deps, deliverer)

    # when it is cancelled and has ended
    groups.cancel_group(deps, sub.group_id, REQUESTER)
    group = drive_group(deps, sub.group_id)
    drain(deps, deliverer)

    # then: one top-level message, the live summary, which shows how the group ended
    assert group.state == "cancelled"
    top, in_thread = posts(slack)
    assert len(top) == 1, [m.text for m in top]
    [parent] = slack.top_level(CHANNEL)
    assert sub.group_id in parent.text and "cancelled" in parent.text
    # each run's card is a thread message edited in place, with no mention of its own
    thread = slack.thread(CHANNEL, parent.ts)
    for job_id in sub.job_ids:
        [card] = [m for m in thread if m.text.split(" ")[1:2] == [job_id]]
        assert "cancelled" in card.text and not MENTION.search(card.text)
    assert len(in_thread) == len(thread)
    # mentions only in the group's own replies (who cancelled; the final reply naming the
    # requester), never in the runs' cards
    mentions = sum(len(MENTION.findall(m.text)) for m in thread)
    assert mentions <= 2
    assert not slack.rejected
