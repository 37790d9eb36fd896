"""Job output reaches Slack as text, never as live markup.

A job controls its result file names, its metric keys and its log lines (quoted in a failure
reason). Each of them is posted here through the real outbox and the real Slack delivery to the
fake Web API, and the text Slack receives (message text and every block) must carry no live
``<!channel>``, ``<@U…>`` or ``<http…|…>`` from the job, and show ``<``, ``>``, ``&`` escaped
(Slack's "Formatting text for app surfaces": ``&lt;`` ``&gt;`` ``&amp;`` are shown as typed).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from slack_sdk import WebClient
from sqlalchemy import select, update

from bot.delivery import SlackDeliverer
from gpubot.chat import launch
from gpubot.commands import LaunchCommand
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.notify import events
from tests.bot.conftest import ALICE, BOT_TOKEN
from tests.fixtures.slack_fake import Posted, SlackFake, block_kit_errors

CHANNEL = "CESCAPE01"
EVIL_FILE = "model.bin> <!channel> <@U0ADMIN> <"
EVIL_METRIC = "<!channel> <https://evil.example/sso|Re-login>"
EVIL_LOG = "Traceback (most recent call last): <module> & <!here> <@U0ADMIN> <https://evil.example|ok>"

RESULT_URL = "https://bucket.s3.example/jobs/x/model.bin"
LIVE_MARKUP = re.compile(r"<(?:!|@U|#C|https?:)[^<>]*>")
"""Markup Slack acts on: special mentions, user/channel mentions, links."""


def _launch(deps: EngineDeps) -> str:
    plan = launch.plan_launch(deps, LaunchCommand(template="train"))
    job_id, _ = launch.submit(deps, plan, requester=ALICE, channel=CHANNEL, request_key="esc1")
    return job_id


def _deliver_all(deps: EngineDeps, slack: SlackFake, timeout_s: float = 20.0) -> None:
    client = WebClient(token=BOT_TOKEN, base_url=slack.url, timeout=5)
    deliverer = SlackDeliverer(client, deps, post_interval_seconds=0.0)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(deps.sessions) as session:
            dirty = session.scalars(select(MessageRow).where(MessageRow.dirty.is_(True))).all()
            if not dirty:
                return
        assert time.monotonic() < deadline, f"{len(dirty)} rows still undelivered"
        deliverer.deliver_once()
        time.sleep(0.01)


def _strings(node: Any) -> list[str]:
    """Every ``text`` string inside a block tree."""
    if isinstance(node, dict):
        found = [node["text"]] if isinstance(node.get("text"), str) else []
        return found + [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _texts(posted: Posted) -> list[str]:
    """Every mrkdwn string Slack received for a message: its text and each block's texts."""
    return [posted.text, *_strings(posted.blocks or [])]


def _received(slack: SlackFake) -> list[str]:
    with slack._lock:
        messages = list(slack.messages.values())
    assert messages, "nothing reached Slack"
    return [t for m in messages for t in _texts(m)]


def _ours(markup: str) -> bool:
    """Markup the bot itself writes: the requester's mention, the presigned result link."""
    return markup == f"<@{ALICE}>" or markup.startswith(f"<{RESULT_URL}")


def _finish(deps: EngineDeps, job_id: str, state: str, **values: Any) -> None:
    with session_scope(deps.sessions) as session:
        session.execute(
            update(JobRow).where(JobRow.id == job_id).values(state=state, **values)
        )
        job = session.get(JobRow, job_id)
        assert job is not None
        session.refresh(job)
        events.refresh_card(session, job)
        events.finished(session, job)


def _assert_inert(texts: list[str], *escaped: str) -> None:
    joined = "\n".join(texts)
    live = [m for m in LIVE_MARKUP.findall(joined) if not _ours(m)]
    assert not live, f"live markup from job data reached Slack: {live}"
    for piece in escaped:
        assert piece in joined, f"{piece!r} not shown escaped in: {joined[:2000]}"


def test_a_result_file_name_is_shown_as_text_not_as_a_mention(
    deps: EngineDeps, slack: SlackFake
) -> None:
    slack.strict(channels={CHANNEL})
    job_id = _launch(deps)
    files = [
        {
            "name": EVIL_FILE,
            "url": RESULT_URL + "?X-Amz-Signature=abc&b=1",
            "size_bytes": 12,
            "sha256": "ab" * 32,
        }
    ]
    _finish(deps, job_id, "succeeded", results={"files": files})
    _deliver_all(deps, slack)

    texts = _received(slack)
    _assert_inert(texts, "model.bin&gt; &lt;!channel&gt; &lt;@U0ADMIN&gt; &lt;")
    # the link itself is ours (a presigned https URL) and stays a link, with the name escaped
    assert any(f"<{RESULT_URL}?X-Amz-Signature=abc&amp;b=1|model.bin&gt;" in t for t in texts)
    assert not slack.rejected


def test_a_metric_key_cannot_ping_the_channel_or_show_a_disguised_link(
    deps: EngineDeps, slack: SlackFake
) -> None:
    slack.strict(channels={CHANNEL})
    job_id = _launch(deps)
    progress = {"step": 10, "total_steps": 100, "metrics": {EVIL_METRIC: 0.5, "loss": 1.25}}
    with session_scope(deps.sessions) as session:
        session.execute(
            update(JobRow).where(JobRow.id == job_id).values(state="running", progress=progress)
        )
        job = session.get(JobRow, job_id)
        assert job is not None
        session.refresh(job)
        events.refresh_card(session, job)  # the live card quotes the metric keys
    _deliver_all(deps, slack)
    _finish(deps, job_id, "succeeded", progress=progress)  # the closing reply quotes them too
    _deliver_all(deps, slack)

    _assert_inert(
        _received(slack), "&lt;!channel&gt; &lt;https://evil.example/sso|Re-login&gt;"
    )
    assert not slack.rejected


def test_a_log_line_in_a_failure_reason_is_quoted_inert_and_the_card_is_valid(
    deps: EngineDeps, slack: SlackFake
) -> None:
    slack.strict(channels={CHANNEL})
    job_id = _launch(deps)
    reason = (
        "the job exited with status 1. Last log lines:\n"
        + "\n".join(f"older line {i}" for i in range(8))
        + "\n" + "x" * 4000 + "\n" + EVIL_LOG
    )
    _finish(deps, job_id, "failed", reason=reason)
    _deliver_all(deps, slack)

    texts = _received(slack)
    _assert_inert(
        texts,
        "&lt;module&gt; &amp; &lt;!here&gt; &lt;@U0ADMIN&gt; &lt;https://evil.example|ok&gt;",
    )
    assert not slack.rejected, slack.rejected  # Slack accepted every block (no invalid_blocks)
    with slack._lock:
        cards = [m for m in slack.messages.values() if m.blocks]
    assert cards
    for card in cards:
        assert block_kit_errors(card.blocks) == []
        flat = json.dumps(card.blocks)
        assert "job.cancel" not in flat, "a failed job's card must not keep a Cancel button"
