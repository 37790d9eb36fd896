"""App Home: the user's live jobs (thread link, Cancel and Keep alive with confirm dialogs),
spend against budgets, recent activity as sentences; republished through the outbox when a
job of the user changes state (one coalesced ``views.publish`` per user)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from slack_sdk import WebClient
from sqlalchemy import select, update

from bot.delivery import SlackDeliverer
from bot.home import build_home_view
from gpubot.chat import launch
from gpubot.chat.dispatch import handle_command
from gpubot.commands import LaunchCommand
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.notify import events, outbox
from gpubot.render import mrkdwn as md
from gpubot.render.blocks import ACTION_CANCEL, ACTION_KEEP, cancel_confirm
from gpubot.render.views import (
    HOME_JOBS_MAX,
    ActivityEntry,
    HomeJob,
    JobView,
    activity_sentence,
    home_view,
    thread_link,
)
from tests.bot.conftest import ALICE, BOT_TOKEN, CHANNEL
from tests.bot.test_blocks_valid import EVIL, EVIL_ESCAPED, assert_valid
from tests.fixtures.slack_fake import SlackFake, view_errors

BOB = "UBOB0001"


def _launch(deps: EngineDeps, n: int, user: str = ALICE) -> list[str]:
    plan = launch.plan_launch(deps, LaunchCommand(template="train"))
    return [
        launch.submit(deps, plan, requester=user, channel=CHANNEL,
                      request_key=f"home-{user}-{i}")[0]
        for i in range(n)
    ]


def _set_state(deps: EngineDeps, job_ids: list[str], state: str) -> None:
    """What an applied step does: the new state, then the card refresh, in one transaction."""
    with session_scope(deps.sessions) as session:
        for job_id in job_ids:
            session.execute(update(JobRow).where(JobRow.id == job_id).values(state=state))
            job = session.get(JobRow, job_id)
            assert job is not None
            session.refresh(job)
            events.refresh_card(session, job)


def _deliverer(deps: EngineDeps, slack: SlackFake) -> SlackDeliverer:
    client = WebClient(token=BOT_TOKEN, base_url=slack.url, timeout=5)
    return SlackDeliverer(client, deps, post_interval_seconds=0.0,
                          card_update_interval_seconds=0.0,
                          method_intervals_seconds={"chat.update": 0.0, "views.publish": 0.0})


def _home_rows(deps: EngineDeps) -> list[MessageRow]:
    with session_scope(deps.sessions) as session:
        return list(session.scalars(select(MessageRow).where(
            MessageRow.kind == outbox.HOME_KIND)))


def _section_texts(view: dict[str, Any]) -> str:
    return "\n".join(str((b.get("text") or {}).get("text", "")) for b in view["blocks"])


def _buttons(view: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    return [e for b in view["blocks"] if b["type"] == "actions"
            and b.get("block_id") == f"home:{job_id}" for e in b["elements"]]


# -- republish through the outbox -------------------------------------------------------------


def test_a_state_change_republishes_the_users_home_after_one_delivery_run(
    deps: EngineDeps, slack: SlackFake
) -> None:
    [job_id] = _launch(deps, 1)
    deliverer = _deliverer(deps, slack)
    deliverer.deliver_once()  # the card (thread root) and the first Home
    assert json.dumps(slack.views[ALICE]).count(job_id) >= 1
    publishes = len(slack.calls_to("views.publish"))

    _set_state(deps, [job_id], "running")
    [row] = _home_rows(deps)
    assert row.dirty and row.user == ALICE
    deliverer.deliver_once()

    calls = slack.calls_to("views.publish")
    assert len(calls) == publishes + 1 and calls[-1].status == 200
    assert not slack.rejected
    view = slack.views[ALICE]
    assert view_errors(view) == []
    text = _section_texts(view)
    assert job_id in text and "running" in text
    assert "queued" not in text.split(job_id, 1)[1].split("\n", 1)[0]
    assert not _home_rows(deps)[0].dirty


def test_a_card_refresh_without_a_state_change_publishes_nothing(
    deps: EngineDeps, slack: SlackFake
) -> None:
    [job_id] = _launch(deps, 1)
    deliverer = _deliverer(deps, slack)
    deliverer.deliver_once()
    publishes = len(slack.calls_to("views.publish"))
    with session_scope(deps.sessions) as session:
        session.execute(update(JobRow).where(JobRow.id == job_id)
                        .values(phase_detail="step 3"))
        job = session.get(JobRow, job_id)
        assert job is not None
        session.refresh(job)
        events.refresh_card(session, job)
    assert not _home_rows(deps)[0].dirty
    deliverer.deliver_once()
    assert len(slack.calls_to("views.publish")) == publishes


def test_many_state_changes_in_one_tick_give_one_publish_per_user(
    deps: EngineDeps, slack: SlackFake
) -> None:
    alice_jobs = _launch(deps, 3)
    bob_jobs = _launch(deps, 2, user=BOB)
    deliverer = _deliverer(deps, slack)
    deliverer.deliver_once()
    before = {u: [c for c in slack.calls_to("views.publish") if c.params["user_id"] == u]
              for u in (ALICE, BOB)}

    _set_state(deps, alice_jobs + bob_jobs, "renting")
    _set_state(deps, alice_jobs[:2], "booting")
    assert len(_home_rows(deps)) == 2
    deliverer.deliver_once()

    for user, jobs in ((ALICE, alice_jobs), (BOB, bob_jobs)):
        calls = [c for c in slack.calls_to("views.publish") if c.params["user_id"] == user]
        assert len(calls) == len(before[user]) + 1
        published = json.dumps(slack.views[user])
        assert all(j in published for j in jobs)
    assert alice_jobs[0] not in json.dumps(slack.views[BOB])


def test_console_users_get_no_home_rows(deps: EngineDeps) -> None:
    _launch(deps, 1, user="console")
    assert _home_rows(deps) == []


# -- what the Home shows ----------------------------------------------------------------------


def test_each_live_job_has_its_thread_link_and_confirmed_buttons(
    deps: EngineDeps, slack: SlackFake
) -> None:
    [job_id] = _launch(deps, 1)
    _deliverer(deps, slack).deliver_once()  # posts the card: the thread's ts is known
    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, job_id)
        assert job is not None and job.thread_ts
        ts = job.thread_ts
    view = build_home_view(deps, ALICE)
    assert view_errors(view) == []
    link = thread_link(CHANNEL, ts)
    assert link == f"https://slack.com/app_redirect?channel={CHANNEL}&message_ts={ts}"
    assert f"<{link.replace('&', '&amp;')}|open thread>" in _section_texts(view)
    cancel, keep = _buttons(view, job_id)
    assert cancel["action_id"] == ACTION_CANCEL and cancel["value"] == job_id
    assert cancel["confirm"] == cancel_confirm(job_id)
    assert keep["action_id"] == ACTION_KEEP and keep["value"] == f"{job_id}:2"
    assert "alive" in keep["confirm"]["title"]["text"]


def test_spend_against_user_channel_and_team_budgets(deps: EngineDeps) -> None:
    _launch(deps, 1)
    text = _section_texts(build_home_view(deps, ALICE))
    assert "• You: $0.00" in text
    assert f"• {md.channel_ref(CHANNEL)}: $0.00" in text
    assert "• Team: $0.00" in text


def test_recent_activity_reads_as_sentences(deps: EngineDeps) -> None:
    [job_id] = _launch(deps, 1)
    reply = handle_command(deps, f"cancel {job_id}", user=ALICE, channel=CHANNEL,
                           request_key=None)
    assert reply.ok, reply.text
    text = _section_texts(build_home_view(deps, ALICE))
    assert f"<@{ALICE}> cancelled `{job_id}`" in text
    assert f"<@{ALICE}> ran `/gpu cancel`" in text


def test_activity_sentences_escape_every_value() -> None:
    at = datetime(2025, 1, 2, 10, 0, tzinfo=UTC)
    sentence = activity_sentence(ActivityEntry(at, EVIL, "cancel", EVIL, EVIL))
    assert sentence.startswith("`01-02 10:00 UTC` ")
    assert "<!" not in sentence and "<@U0ADMIN>" not in sentence
    assert EVIL_ESCAPED in sentence
    unknown = activity_sentence(ActivityEntry(at, ALICE, "weird<!here>", "x"))
    assert "&lt;!here&gt;" in unknown and f"<@{ALICE}>" in unknown


# -- limits -----------------------------------------------------------------------------------


def test_fifty_live_jobs_give_a_valid_view_that_says_how_many_more(
    deps: EngineDeps, slack: SlackFake
) -> None:
    jobs = _launch(deps, 50)
    view = build_home_view(deps, ALICE)
    assert view_errors(view) == []
    assert len(view["blocks"]) <= 100
    assert f"and {50 - HOME_JOBS_MAX} more" in json.dumps(view)
    assert jobs[-1] in json.dumps(view)  # newest first
    client = WebClient(token=BOT_TOKEN, base_url=slack.url, timeout=5)
    client.views_publish(user_id=ALICE, view=view)  # the fake validates like Slack
    assert not slack.rejected


def test_fifty_jobs_with_hostile_values_stay_valid_and_escaped() -> None:
    base = JobView(job_id="j-0123abcd", template=EVIL, kind="batch", state="running",
                   requester=ALICE, phase_detail=EVIL * 20, step=5, total_steps=10,
                   spent_usd=Decimal("1.5"), gpu_name=EVIL)
    jobs = [HomeJob(replace(base, job_id=f"j-{i:08d}"), channel=CHANNEL,
                    thread_ts=f"1700000000.{i:06d}") for i in range(50)]
    at = datetime(2025, 1, 2, 10, 0, tzinfo=UTC)
    view = home_view(user=ALICE, jobs=jobs, total_jobs=50,
                     spend_lines=[md.escape(EVIL)] * 200,
                     activity=[ActivityEntry(at, "<!channel>", "launch", EVIL, EVIL * 50)] * 30)
    assert view_errors(view) == []
    joined = assert_valid(view["blocks"], max_blocks=100)
    assert EVIL_ESCAPED in joined
