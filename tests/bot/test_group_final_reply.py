"""A group's end: the final reply mentions the requester and is broadcast to the channel
(``reply_broadcast``), posted in the group's thread."""

from __future__ import annotations

import time

from slack_sdk import WebClient
from sqlalchemy import select, update

from bot.delivery import SlackDeliverer
from gpubot.chat.dispatch import handle_command
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobGroupRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.groups.advance import advance_groups
from gpubot.notify import outbox
from gpubot.render import groups as render
from tests.bot.conftest import ALICE, BOT_TOKEN, CHANNEL
from tests.fixtures.slack_fake import SlackFake


def _finished_sweep(deps: EngineDeps) -> str:
    """A sweep by Alice whose runs have all succeeded; the groups' tick then ends it."""
    reply = handle_command(deps, "sweep train lr=1e-5,2e-5", user=ALICE, channel=CHANNEL,
                           request_key=None)
    group_id = reply.job_id
    assert group_id and group_id.startswith("g-"), reply.text
    with session_scope(deps.sessions) as session:
        session.execute(update(JobRow).where(JobRow.group_id == group_id)
                        .values(state="succeeded"))
    report = advance_groups(deps, now=deps.clock())
    assert report.finished == [group_id]
    return group_id


def test_the_final_reply_mentions_the_requester_and_is_a_broadcast(deps: EngineDeps) -> None:
    group_id = _finished_sweep(deps)
    with session_scope(deps.sessions) as session:
        [final] = session.scalars(
            select(MessageRow).where(MessageRow.group_id == group_id,
                                     MessageRow.kind == outbox.BROADCAST_KIND)
        ).all()
        assert final.thread_key == group_id and final.channel == CHANNEL
        assert f"<@{ALICE}>" in final.text.splitlines()[0]
        assert f"{group_id} succeeded" in final.text
        group = session.get(JobGroupRow, group_id)
        assert group is not None and group.state == "succeeded"


def test_the_final_reply_reaches_slack_in_the_thread_and_the_channel(
    deps: EngineDeps, slack: SlackFake
) -> None:
    group_id = _finished_sweep(deps)
    client = WebClient(token=BOT_TOKEN, base_url=slack.url, timeout=5)
    deliverer = SlackDeliverer(client, deps, post_interval_seconds=0.06,
                               method_intervals_seconds={"chat.update": 0.02})
    deadline = time.monotonic() + 20
    while True:
        deliverer.deliver_once()
        broadcasts = [c for c in slack.calls_to("chat.postMessage")
                      if c.status == 200 and c.params.get("reply_broadcast")]
        if broadcasts or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    [call] = broadcasts
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        assert group is not None and group.thread_ts
        root_ts = group.thread_ts
    assert call.params["thread_ts"] == root_ts
    assert call.params["channel"] == CHANNEL
    assert f"<@{ALICE}>" in str(call.params["text"])


def test_cant_broadcast_still_posts_the_reply_in_the_thread(
    deps: EngineDeps, slack: SlackFake
) -> None:
    _finished_sweep(deps)
    client = WebClient(token=BOT_TOKEN, base_url=slack.url, timeout=5)

    class NoBroadcast(WebClient):
        def chat_postMessage(self, **kwargs):  # type: ignore[no-untyped-def, override]
            if kwargs.get("reply_broadcast"):
                from slack_sdk.errors import SlackApiError
                from slack_sdk.web import SlackResponse

                raise SlackApiError("cant_broadcast", SlackResponse(
                    client=self, http_verb="POST", api_url="", req_args={},
                    data={"ok": False, "error": "cant_broadcast"}, headers={}, status_code=200,
                ))
            return client.chat_postMessage(**kwargs)

    deliverer = SlackDeliverer(NoBroadcast(token=BOT_TOKEN, base_url=slack.url, timeout=5),
                               deps, post_interval_seconds=0.06,
                               method_intervals_seconds={"chat.update": 0.02})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        deliverer.deliver_once()
        with session_scope(deps.sessions) as session:
            final = session.scalars(select(MessageRow).where(
                MessageRow.kind == outbox.BROADCAST_KIND)).one()
            if final.sent_at is not None:
                break
        time.sleep(0.02)
    assert final.sent_at is not None
    posted = [c for c in slack.calls_to("chat.postMessage")
              if c.params.get("thread_ts") and f"<@{ALICE}>" in str(c.params.get("text"))]
    assert posted and not posted[-1].params.get("reply_broadcast")


def test_final_text_without_a_requester_mentions_nobody() -> None:
    final = render.GroupFinal(group_id="g-1", kind="sweep", state="failed",
                              children=[("j-1", "failed")])
    assert "<@" not in render.final_text(final)
    mentioned = render.final_text(
        render.GroupFinal(group_id="g-1", kind="sweep", state="failed",
                          children=[("j-1", "failed")], requester=ALICE)
    )
    assert mentioned.startswith(f":x: <@{ALICE}> g-1 failed")
