"""Delivery never wedges: channels the bot cannot post in, failed threads, rejected blocks.

Slack facts used (chat.postMessage / chat.update method pages, Errors tables):
``not_in_channel`` / ``channel_not_found`` do not heal by retrying (the bot must be invited;
private channels and DMs the bot is not in look like ``channel_not_found``);
``invalid_blocks`` means the blocks were refused, the text alone can still be sent; a DM is
opened with ``conversations.open`` and posted with ``chat.postMessage``.
"""

from __future__ import annotations

import logging
import time

import pytest
from slack_sdk import WebClient
from sqlalchemy import select, update

from bot.delivery import SlackDeliverer
from gpubot.chat import launch
from gpubot.commands import LaunchCommand
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.notify import events, outbox
from tests.bot.conftest import ALICE, BOT_TOKEN
from tests.fixtures.slack_fake import SlackFake

STRANGER = "CSTRANGE1"
"""A channel the bot was never invited to."""
HOME = "CHOME0001"
"""A channel the bot is a member of."""


def _deliverer(deps: EngineDeps, slack: SlackFake) -> SlackDeliverer:
    client = WebClient(token=BOT_TOKEN, base_url=slack.url, timeout=5)
    return SlackDeliverer(client, deps, post_interval_seconds=0.05)


def _launch(deps: EngineDeps, channel: str, key: str) -> str:
    plan = launch.plan_launch(deps, LaunchCommand(template="train"))
    return launch.submit(deps, plan, requester=ALICE, channel=channel, request_key=key)[0]


def _queue_threads(deps: EngineDeps, channel: str, n: int) -> None:
    """``n`` job threads (a parent and a card each) for jobs the database does not know."""
    with session_scope(deps.sessions) as session:
        for i in range(n):
            job_id = f"jx{i:05d}"
            outbox.post_parent(session, channel=channel, text=f"plan {job_id}", job_id=job_id)
            outbox.upsert_card(
                session, job_id=job_id, channel=channel, thread_key=job_id, text=f"{job_id}: q"
            )


def _rows(deps: EngineDeps) -> list[MessageRow]:
    with session_scope(deps.sessions) as session:
        rows = list(session.scalars(select(MessageRow).order_by(MessageRow.id)))
        session.expunge_all()
        return rows


def test_threads_of_parents_dropped_long_ago_do_not_hold_up_other_channels(
    deps: EngineDeps, slack: SlackFake
) -> None:
    """The old wedge: 300 parents in STRANGER were dropped after their attempts, their cards
    stayed queued without a thread and filled every batch. One round must reach HOME."""
    _queue_threads(deps, STRANGER, 300)
    with session_scope(deps.sessions) as session:
        session.execute(
            update(MessageRow)
            .where(MessageRow.kind == "parent")
            .values(dirty=False, attempts=8)
        )
    job_b = _launch(deps, HOME, "kb")

    _deliverer(deps, slack).deliver_once()

    [parent] = slack.top_level(HOME)
    assert job_b in parent.text
    assert not any(r.dirty for r in _rows(deps) if r.channel == STRANGER), "orphans failed"
    assert not [c for c in slack.calls if c.params.get("channel") == STRANGER]


def test_not_in_channel_fails_threads_at_once_and_the_requester_is_told_once(
    deps: EngineDeps, slack: SlackFake
) -> None:
    slack.strict(channels={STRANGER, HOME}, member_of={HOME})
    _queue_threads(deps, STRANGER, 300)
    mine = [_launch(deps, STRANGER, "ka1"), _launch(deps, STRANGER, "ka2")]
    job_b = _launch(deps, HOME, "kb")
    deliverer = _deliverer(deps, slack)

    deliverer.deliver_once()  # one delivery run

    [parent] = slack.top_level(HOME)
    assert job_b in parent.text, "the other channel is served in the same run"
    refused = [c for c in slack.calls_to("chat.postMessage") if c.params["channel"] == STRANGER]
    assert len(refused) == 1, "one refusal is enough for the channel's other rows this round"
    rows = _rows(deps)
    stranger = [r for r in rows if r.channel == STRANGER]
    # 300 threads of a parent and a card each, and the two jobs' live cards (their roots)
    assert len(stranger) == 2 * 300 + 2
    assert not any(r.dirty for r in stranger), "parents and their cards failed at once"
    assert all(r.sent_at is None and r.ts is None for r in stranger)

    # The requester learns it by DM (conversations.open + chat.postMessage), once.
    deadline = time.monotonic() + 10
    while not slack.dms:
        assert time.monotonic() < deadline, [c.method for c in slack.calls]
        deliverer.deliver_once()
        time.sleep(0.01)  # pacing of the next post, bounded by the deadline
    dm = slack.dms[ALICE]
    [text] = [m.text for m in slack.top_level(dm)]
    assert "/invite @gpubot" in text and f"<#{STRANGER}>" in text
    assert mine[0] in text or mine[1] in text

    # Future messages of a failed thread fail too instead of queueing forever.
    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, mine[0])
        assert job is not None
        events.note(session, job, "progress: step 10")
        session.execute(update(JobRow).where(JobRow.id == mine[1]).values(state="running"))
        job2 = session.get(JobRow, mine[1])
        assert job2 is not None
        session.refresh(job2)
        events.refresh_card(session, job2)
    calls_before = len(slack.calls)
    for _ in range(3):
        deliverer.deliver_once()
    # (The requester's App Home is no message of the thread: it shows the new state.)
    queued = [r for r in _rows(deps) if r.dirty and r.kind != outbox.HOME_KIND]
    assert not queued, "nothing stays queued"
    sent = [c.method for c in slack.calls[calls_before:] if c.method != "views.publish"]
    assert sent == [], "nothing more was sent"
    dms = [m for m in slack.messages.values() if m.channel == dm]
    assert len(dms) == 1, "told once, not once per job or message"


def test_rejected_blocks_are_sent_as_text_so_the_card_never_stays_stale(
    deps: EngineDeps, slack: SlackFake, caplog: pytest.LogCaptureFixture
) -> None:
    slack.strict(channels={HOME})
    job_id = _launch(deps, HOME, "kc")
    deliverer = _deliverer(deps, slack)
    cancel = {
        "type": "actions",
        "elements": [
            {"type": "button", "action_id": "cancel", "value": job_id,
             "text": {"type": "plain_text", "text": "Cancel"}, "style": "danger"}
        ],
    }
    with session_scope(deps.sessions) as session:  # the card shows "running" and Cancel
        outbox.upsert_card(
            session, job_id=job_id, channel=HOME, thread_key=None,
            text=f"{job_id} running", blocks=[
                {"type": "section", "text": {"type": "mrkdwn", "text": f"{job_id} running"}},
                cancel,
            ],
        )
    deadline = time.monotonic() + 10
    while [r for r in _rows(deps) if r.dirty]:
        assert time.monotonic() < deadline
        deliverer.deliver_once()
        time.sleep(0.01)  # pacing of the next post, bounded by the deadline
    [card] = slack.top_level(HOME)  # the job's live card is its top-level message
    assert "running" in card.text
    assert card.blocks and card.blocks[-1]["type"] == "actions"

    secret_line = "metric line " + "x" * 3100  # over a section's 3000 characters
    caplog.set_level(logging.INFO, logger="bot.delivery")
    with session_scope(deps.sessions) as session:  # the job ended; Slack refuses the blocks
        outbox.upsert_card(
            session, job_id=job_id, channel=HOME, thread_key=None,
            text=f"{job_id} succeeded\n{secret_line}",
            blocks=[
                {"type": "header", "text": {"type": "plain_text", "text": "Done"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": secret_line}},
            ],
        )
        outbox.reply(session, channel=HOME, thread_key=job_id, job_id=job_id,
                     text="bad reply", blocks=[{"type": "bogus"}])
    deadline = time.monotonic() + 10
    while [r for r in _rows(deps) if r.dirty]:
        assert time.monotonic() < deadline
        deliverer.deliver_once()
        time.sleep(0.01)  # pacing of the next post, bounded by the deadline

    assert card.text.startswith(f"{job_id} succeeded"), "the card is not stale"
    assert card.blocks == [], "its Cancel button is gone"
    assert len(card.text) <= 4000, "the text is clamped"
    assert any(m.text == "bad reply" and not m.blocks for m in slack.thread(HOME, card.ts))
    assert {r[1] for r in slack.rejected} == {"invalid_blocks"}
    logged = caplog.text
    assert "section@1" in logged and "invalid_blocks" in logged
    assert "bogus@0" in logged or "?@0" in logged
    assert "xxxxxxxx" not in logged, "no message content in logs"
