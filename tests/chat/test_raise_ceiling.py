"""The "Pay up to $X/h" button (``job.raise_ceiling``) of the prompt the engine posts when
offers exist only above a job's approved price ceiling.

Through :func:`gpubot.chat.dispatch.handle_action`, as the Slack front calls it, on real
databases: a SQLite file, then a fresh PostgreSQL database (tests/fixtures/postgres.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.listeners import ACTION_RE
from gpubot.chat.dispatch import CLAIMED_IN_EFFECT, JOB_ACTIONS, handle_action
from gpubot.config import BotConfig, load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.models import JobState
from gpubot.render.blocks import ACTION_RAISE_CEILING, ceiling_prompt_blocks
from gpubot.testing.fakes import FakeClock, fake_deps, seed_job
from tests.bot.conftest import ADMIN, ADMIN2, ALICE, CHANNEL, Kicks
from tests.security.conftest import job_snapshot

BOB = "UBOB0001"
"""An allowed user who is neither the job's requester nor an admin."""
JOB = "j-0c0ffee1"
WAITING = "waiting for a price approval: no offer at or below the approved $0.0660/h"

CONFIG = f"""
[roles]
admins = ["{ADMIN}", "{ADMIN2}"]
allowed_users = ["{ALICE}", "{BOB}"]
approval_above_price_per_hour_usd = 2.0
"""


@pytest.fixture
def config() -> BotConfig:
    return load_config_text(CONFIG, name="raise_ceiling.toml")


@pytest.fixture
def deps(database_url: str, tmp_path: Path, config: BotConfig) -> Iterator[EngineDeps]:
    built = fake_deps(tmp_path / "home", database_url=database_url, clock=FakeClock(),
                      config=config)
    built.enqueuer = Kicks()
    try:
        yield built
    finally:
        built.sessions.kw["bind"].dispose()


def _seed(
    deps: EngineDeps,
    job_id: str = JOB,
    *,
    requester: str = ALICE,
    state: JobState = JobState.RENTING,
    ceiling: str | None = "0.066",
) -> str:
    """A job of ``requester`` waiting for a price approval at ``ceiling`` $/h; the clock then
    moves on 5 minutes (so "due now" is visible)."""
    with session_scope(deps.sessions) as session:
        job = seed_job(session, job_id, requester=requester, channel=CHANNEL, state=state,
                       created_at=deps.clock())
        job.price_ceiling_per_hour_usd = Decimal(ceiling) if ceiling is not None else None
        job.phase_detail = WAITING
    deps.clock.advance(minutes=5)  # type: ignore[attr-defined]
    return job_id


def _click(deps: EngineDeps, price: str, *, user: str = ALICE, job_id: str = JOB,
           request_key: str | None = None) -> Any:
    return handle_action(deps, ACTION_RAISE_CEILING, f"{job_id}:{price}", user=user,
                         channel=CHANNEL, request_key=request_key)


def _audit(deps: EngineDeps) -> list[AuditEventRow]:
    with session_scope(deps.sessions) as session:
        rows = list(session.scalars(select(AuditEventRow).order_by(AuditEventRow.id)))
        session.expunge_all()
        return rows


def _replies(deps: EngineDeps, job_id: str = JOB) -> list[str]:
    """The texts of the replies in the job's thread, oldest first."""
    with session_scope(deps.sessions) as session:
        return list(session.scalars(
            select(MessageRow.text)
            .where(MessageRow.thread_key == job_id, MessageRow.kind == "reply")
            .order_by(MessageRow.id)
        ))


def _kicks(deps: EngineDeps) -> int:
    kicks = deps.enqueuer
    assert isinstance(kicks, Kicks)
    return kicks.count


def _unchanged(deps: EngineDeps, before: dict[str, Any], job_id: str = JOB) -> None:
    """Nothing of the job, its thread or the kicks changed, nothing but ``denied`` audited."""
    assert job_snapshot(deps, job_id) == before
    assert _replies(deps, job_id) == []
    assert _kicks(deps) == 0
    assert [e.action for e in _audit(deps) if e.action != "denied"] == []


# -- the raise ---------------------------------------------------------------------------------


def test_the_owner_raises_the_ceiling_and_the_job_is_due_at_once(deps: EngineDeps) -> None:
    _seed(deps)
    now = deps.clock()
    assert job_snapshot(deps, JOB)["phase_detail"] == WAITING

    reply = _click(deps, "0.0792")

    assert reply.ok and not reply.duplicate, reply.text
    assert reply.job_id == JOB
    assert reply.text == f"{JOB}: approved price raised from $0.0660/h to $0.0792/h."
    job = job_snapshot(deps, JOB)
    assert job["price_ceiling_per_hour_usd"] == Decimal("0.0792")
    assert job["phase_detail"] == ""
    assert job["due_at"] == now and job["updated_at"] == now
    assert job["state"] == JobState.RENTING.value
    [event] = _audit(deps)
    assert (event.actor, event.action, event.target) == (ALICE, "ceiling.raise", JOB)
    assert Decimal(event.detail["from"]) == Decimal("0.066")
    assert Decimal(event.detail["to"]) == Decimal("0.0792")
    [note] = _replies(deps)
    assert f"<@{ALICE}>" in note and "$0.0660/h" in note and "$0.0792/h" in note
    assert _kicks(deps) == 1


def test_an_admin_raises_the_ceiling_of_someone_elses_job(deps: EngineDeps) -> None:
    _seed(deps)
    reply = _click(deps, "0.1", user=ADMIN)
    assert reply.ok, reply.text
    assert job_snapshot(deps, JOB)["price_ceiling_per_hour_usd"] == Decimal("0.1")
    assert [(e.actor, e.action) for e in _audit(deps)] == [(ADMIN, "ceiling.raise")]


def test_a_job_without_a_ceiling_gets_one(deps: EngineDeps) -> None:
    _seed(deps, ceiling=None)
    reply = _click(deps, "0.5")
    assert reply.ok and "no limit" in reply.text, reply.text
    assert job_snapshot(deps, JOB)["price_ceiling_per_hour_usd"] == Decimal("0.5")
    [event] = _audit(deps)
    assert event.detail == {"from": "None", "to": str(Decimal("0.5").quantize(Decimal("1e-8")))}


def test_the_price_is_rounded_down_to_the_columns_scale(deps: EngineDeps) -> None:
    _seed(deps)
    assert _click(deps, "0.079212345678").ok
    assert job_snapshot(deps, JOB)["price_ceiling_per_hour_usd"] == Decimal("0.07921234")


# -- who may --------------------------------------------------------------------------------------


def test_a_stranger_is_refused_and_nothing_changes(deps: EngineDeps) -> None:
    _seed(deps)
    before = job_snapshot(deps, JOB)

    reply = _click(deps, "0.0792", user=BOB)

    assert not reply.ok and "Only" in reply.text
    _unchanged(deps, before)
    assert [(e.actor, e.action, e.target) for e in _audit(deps)] == [(BOB, "denied", JOB)]


def test_a_stranger_with_a_bad_price_is_still_refused_as_a_stranger(deps: EngineDeps) -> None:
    _seed(deps)
    reply = _click(deps, "abc", user=BOB)
    assert not reply.ok and "Only" in reply.text
    assert [(e.actor, e.action) for e in _audit(deps)] == [(BOB, "denied")]


def test_above_the_approval_threshold_the_requester_is_refused(deps: EngineDeps) -> None:
    _seed(deps)
    before = job_snapshot(deps, JOB)

    reply = _click(deps, "2.5")

    assert not reply.ok
    assert "$2.5000/h" in reply.text and "$2.0000/h" in reply.text and "admin" in reply.text
    _unchanged(deps, before)
    assert [(e.actor, e.action, e.target) for e in _audit(deps)] == [(ALICE, "denied", JOB)]


def test_above_the_approval_threshold_an_admin_raises_it(deps: EngineDeps) -> None:
    _seed(deps)
    reply = _click(deps, "2.5", user=ADMIN)
    assert reply.ok, reply.text
    assert job_snapshot(deps, JOB)["price_ceiling_per_hour_usd"] == Decimal("2.5")
    assert [(e.actor, e.action) for e in _audit(deps)] == [(ADMIN, "ceiling.raise")]
    assert _kicks(deps) == 1


def test_above_the_threshold_an_admin_may_not_approve_their_own_job(deps: EngineDeps) -> None:
    _seed(deps, requester=ADMIN)
    before = job_snapshot(deps, JOB)

    mine = _click(deps, "2.5", user=ADMIN)

    assert not mine.ok
    _unchanged(deps, before)
    assert _click(deps, "2.5", user=ADMIN2).ok
    assert job_snapshot(deps, JOB)["price_ceiling_per_hour_usd"] == Decimal("2.5")


def test_at_the_approval_threshold_the_requester_may_raise_it(deps: EngineDeps) -> None:
    _seed(deps)
    assert _click(deps, "2.0").ok
    assert job_snapshot(deps, JOB)["price_ceiling_per_hour_usd"] == Decimal("2")


# -- nothing to do, or nothing doable ----------------------------------------------------------


@pytest.mark.parametrize("price", ["0.066", "0.06600000", "0.05"])
def test_a_price_at_or_below_the_ceiling_changes_nothing(deps: EngineDeps, price: str) -> None:
    _seed(deps)
    before = job_snapshot(deps, JOB)

    reply = _click(deps, price)

    assert reply.ok
    assert reply.text == f"{JOB} may already pay up to $0.0660/h; nothing changed."
    _unchanged(deps, before)
    assert _audit(deps) == []


@pytest.mark.parametrize(
    "price", ["abc", "nan", "sNaN", "Infinity", "-1", "0", "0.000000001", "1e9",
              "1000.00000001", "", ":", "0x10"]
)
def test_a_bad_price_is_refused_and_changes_nothing(deps: EngineDeps, price: str) -> None:
    _seed(deps)
    before = job_snapshot(deps, JOB)

    reply = _click(deps, price, user=ADMIN)

    assert not reply.ok
    assert reply.text == f"{JOB}: not a usable price per hour in USD."
    _unchanged(deps, before)
    assert _audit(deps) == []


def test_the_most_a_click_may_set_is_1000_per_hour(deps: EngineDeps) -> None:
    _seed(deps)
    assert _click(deps, "1000", user=ADMIN).ok
    assert job_snapshot(deps, JOB)["price_ceiling_per_hour_usd"] == Decimal(1000)


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_a_finished_job_is_refused(deps: EngineDeps, state: JobState) -> None:
    _seed(deps, state=state)
    before = job_snapshot(deps, JOB)

    reply = _click(deps, "0.0792")

    assert not reply.ok and state.value in reply.text
    _unchanged(deps, before)
    assert _audit(deps) == []


def test_a_job_awaiting_approval_is_refused(deps: EngineDeps) -> None:
    # its approver judges the launch with the ceiling it was submitted with
    _seed(deps, state=JobState.AWAITING_APPROVAL)
    before = job_snapshot(deps, JOB)

    reply = _click(deps, "0.0792")

    assert not reply.ok and "approval" in reply.text, reply.text
    _unchanged(deps, before)
    assert _audit(deps) == []


def test_a_running_job_gets_the_ceiling_for_its_next_rent_and_keeps_its_detail(
    deps: EngineDeps
) -> None:
    # a job not waiting on a price (running, showing its progress): the raise holds for a
    # later re-rent; its detail and its turn are its own
    _seed(deps, state=JobState.RUNNING)
    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, JOB)
        assert job is not None
        job.phase_detail = "step 40/100"
    before = job_snapshot(deps, JOB)

    reply = _click(deps, "0.0792")

    assert reply.ok, reply.text
    job = job_snapshot(deps, JOB)
    assert job["price_ceiling_per_hour_usd"] == Decimal("0.0792")
    assert job["phase_detail"] == "step 40/100"
    assert job["due_at"] == before["due_at"]


def test_an_unknown_job_is_refused(deps: EngineDeps) -> None:
    _seed(deps)
    reply = _click(deps, "0.0792", job_id="j-deadbeef")
    assert not reply.ok and "no job" in reply.text
    assert _audit(deps) == []


# -- redeliveries and routing ----------------------------------------------------------------


def test_the_same_click_delivered_twice_acts_once(deps: EngineDeps) -> None:
    _seed(deps)

    first = _click(deps, "0.0792", request_key="action:1700000002.000000")
    second = _click(deps, "0.0792", request_key="action:1700000002.000000")

    assert first.ok and not first.duplicate
    assert second.duplicate and second.text == first.text and second.job_id == JOB
    assert [e.action for e in _audit(deps)] == ["ceiling.raise"]
    assert len(_replies(deps)) == 1
    assert _kicks(deps) == 1


def test_the_action_is_routed_and_listened_for() -> None:
    assert ACTION_RAISE_CEILING == "job.raise_ceiling"
    assert ACTION_RAISE_CEILING in JOB_ACTIONS
    assert ACTION_RAISE_CEILING not in CLAIMED_IN_EFFECT  # a guarded set: remembered after
    assert ACTION_RE.match(ACTION_RAISE_CEILING)
    assert not ACTION_RE.match("job.raise_ceiling2")
    assert not ACTION_RE.match("job.raise_ceilin")


def test_the_prompts_button_value_is_what_the_handler_takes(deps: EngineDeps) -> None:
    _seed(deps)
    [_, actions] = ceiling_prompt_blocks(JOB, "no offer within the approved price", "0.0792")
    button = next(e for e in actions["elements"] if e["action_id"] == ACTION_RAISE_CEILING)
    reply = handle_action(deps, button["action_id"], button["value"], user=ALICE,
                          channel=CHANNEL)
    assert reply.ok, reply.text
    assert job_snapshot(deps, JOB)["price_ceiling_per_hour_usd"] == Decimal("0.0792")


def test_a_ceiling_raised_elsewhere_meanwhile_is_not_lowered(deps: EngineDeps) -> None:
    _seed(deps)
    assert _click(deps, "0.09", user=ADMIN).ok
    reply = _click(deps, "0.0792")  # the owner clicks an older prompt's button
    assert reply.ok and "$0.0900/h" in reply.text
    assert job_snapshot(deps, JOB)["price_ceiling_per_hour_usd"] == Decimal("0.09")
    assert [e.action for e in _audit(deps)] == ["ceiling.raise"]

