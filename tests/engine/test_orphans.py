"""The orphan sweep, and the tick's refusal to act on a failed listing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, InstanceRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.engine import orphans as sweep
from gpubot.engine.orphans import OrphanState
from gpubot.engine.tick import reconcile_tick
from gpubot.models import JobState
from gpubot.testing.fakes import T0, FakeClock, FakeProvider, observation, seed_instance, seed_job

GRACE = timedelta(minutes=10)


@pytest.mark.parametrize(
    ("first_seen", "destroyed", "now", "decision"),
    [
        (None, None, T0, "remember"),
        (T0, None, T0, "wait"),
        (T0, None, T0 + GRACE - timedelta(seconds=1), "wait"),
        (T0, None, T0 + GRACE, "destroy"),
        (T0, T0 + GRACE, T0 + GRACE + timedelta(minutes=1), "redestroy"),
    ],
)
def test_orphan_decision(first_seen, destroyed, now, decision) -> None:  # type: ignore[no-untyped-def]
    state = OrphanState(first_seen, destroyed)
    assert sweep.orphan_decision(state, now=now, grace=GRACE) == decision


def _audit(deps: EngineDeps, action: str) -> list[str]:
    with session_scope(deps.sessions) as s:
        rows = s.scalars(select(AuditEventRow).where(AuditEventRow.action == action))
        return [r.target for r in rows]


def _sweep(deps: EngineDeps, provider: FakeProvider, clock: FakeClock) -> list[str]:
    return sweep.sweep_orphans(deps, provider.list_instances(), now=clock())


def test_labelled_orphan_destroyed_only_after_grace(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock, ops_channel: str
) -> None:
    assert deps.config.engine.orphan_grace_minutes == 10
    provider.add(observation("900", label="gpubot:j-gone"))

    assert _sweep(deps, provider, clock) == []
    assert _audit(deps, "orphan_seen") == ["900"]
    clock.advance(minutes=9, seconds=59)
    assert _sweep(deps, provider, clock) == []
    assert provider.destroyed == []
    assert _audit(deps, "orphan_seen") == ["900"]  # first-seen is not reset

    clock.advance(seconds=1)
    assert _sweep(deps, provider, clock) == ["900"]
    assert provider.destroyed == ["900"]
    assert _audit(deps, "orphan_destroyed") == ["900"]
    with session_scope(deps.sessions) as s:
        msgs = [
            m.text for m in s.scalars(select(MessageRow).where(MessageRow.channel == ops_channel))
        ]
    assert len(msgs) == 1
    assert "Orphan destroyed: instance 900 labelled gpubot:j-gone" in msgs[0]
    assert "no live record for 10 m" in msgs[0]


def test_orphan_audit_note_is_plain_text_and_the_ops_note_escaped(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock, ops_channel: str
) -> None:
    """The audit is a record, not Slack markup: it keeps the label as the provider gave it;
    the ops note shows it escaped (a label can never ping a channel)."""
    label = "gpubot:j-x&<!channel>"
    provider.add(observation("901", label=label))
    _sweep(deps, provider, clock)
    clock.advance(minutes=10)
    assert _sweep(deps, provider, clock) == ["901"]
    with session_scope(deps.sessions) as s:
        notes = [
            r.reason
            for r in s.scalars(
                select(AuditEventRow).where(AuditEventRow.action == "orphan_destroyed")
            )
        ]
        msgs = [
            m.text for m in s.scalars(select(MessageRow).where(MessageRow.channel == ops_channel))
        ]
    assert notes == [f"destroyed: labelled {label!r}, no live record for 10 m"]
    assert "<!channel>" not in msgs[0] and "&lt;!channel&gt;" in msgs[0]


def test_unlabelled_and_foreign_instances_are_never_touched(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    provider.add(observation("1", label=None))
    provider.add(observation("2", label="my-notebook"))
    provider.add(observation("3", label="gpubotx:j-1"))  # prefix must end at the colon
    provider.add(observation("4", label="other:gpubot:j-1"))
    for _ in range(3):
        assert _sweep(deps, provider, clock) == []
        clock.advance(hours=1)
    assert provider.destroyed == []
    assert _audit(deps, "orphan_seen") == []


def test_live_records_protect_their_instances(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    with session_scope(deps.sessions) as s:
        seed_job(s, "j-live")
        seed_instance(s, "j-live", "10")
        seed_job(s, "j-pend", state=JobState.RENTING)
        seed_instance(s, "j-pend", None, label="gpubot:j-pend")  # create not yet recorded
        seed_job(s, "j-fin", state=JobState.SUCCEEDED)
        seed_instance(s, "j-fin", "12")  # job finished, instance left behind
        seed_job(s, "j-dead")
        seed_instance(s, "j-dead", "13", status="destroyed", destroyed_at=T0)
    provider.add(observation("10", label="gpubot:j-live"))
    provider.add(observation("11", label="gpubot:j-pend"))
    provider.add(observation("12", label="gpubot:j-fin"))
    provider.add(observation("13", label="gpubot:j-dead"))

    assert _sweep(deps, provider, clock) == []
    assert sorted(_audit(deps, "orphan_seen")) == ["12", "13"]
    clock.advance(minutes=10)
    assert sorted(_sweep(deps, provider, clock)) == ["12", "13"]
    assert sorted(provider.destroyed) == ["12", "13"]


def test_grace_restarts_when_an_instance_is_claimed_again(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    provider.add(observation("20", label="gpubot:j-x"))
    _sweep(deps, provider, clock)  # seen
    clock.advance(minutes=5)
    with session_scope(deps.sessions) as s:
        seed_job(s, "j-x")
        row = seed_instance(s, "j-x", "20")
        row_id = row.id
    _sweep(deps, provider, clock)  # cleared
    assert _audit(deps, "orphan_cleared") == ["20"]
    clock.advance(minutes=5)
    with session_scope(deps.sessions) as s:
        inst = s.get(InstanceRow, row_id)
        assert inst is not None
        inst.destroyed_at = clock()
    assert _sweep(deps, provider, clock) == []  # seen again: a fresh grace
    clock.advance(minutes=10)
    assert _sweep(deps, provider, clock) == ["20"]


def test_failed_destroy_is_retried_next_sweep(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    provider.add(observation("30", label="gpubot:j-y"))
    _sweep(deps, provider, clock)
    clock.advance(minutes=10)
    provider.fail_destroy = True
    assert _sweep(deps, provider, clock) == []
    assert _audit(deps, "orphan_destroyed") == []
    provider.fail_destroy = False
    assert _sweep(deps, provider, clock) == ["30"]


def test_still_listed_after_destroy_is_destroyed_again_quietly(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    provider.destroy_removes = False
    provider.add(observation("40", label="gpubot:j-z"))
    _sweep(deps, provider, clock)
    clock.advance(minutes=10)
    assert _sweep(deps, provider, clock) == ["40"]
    assert _sweep(deps, provider, clock) == []
    assert provider.destroyed == ["40", "40"]
    assert _audit(deps, "orphan_destroyed") == ["40"]


def test_tick_with_failing_listing_destroys_nothing(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock
) -> None:
    with session_scope(deps.sessions) as s:
        seed_job(s, "j-1")
        row = seed_instance(s, "j-1", "50")
        row.destroy_requested_at = T0  # a destroy awaiting verification
        row_id = row.id
    provider.add(observation("50", label="gpubot:j-1"))
    provider.add(observation("60", label="gpubot:j-orphan"))
    reconcile_tick(deps, dispatch=lambda job_id, token: None, sweep=True)  # seen
    clock.advance(hours=2)
    provider.fail_listing = True
    report = reconcile_tick(deps, dispatch=lambda job_id, token: None, sweep=True)
    assert report.listed_ok is False
    assert report.orphans_destroyed == []
    assert "destroy" not in provider.calls
    with session_scope(deps.sessions) as s:
        inst = s.get(InstanceRow, row_id)
        assert inst is not None
        assert inst.destroyed_at is None  # its absence from a failed listing proves nothing
        assert inst.provider_status != "gone"
        assert inst.last_seen_at == T0  # untouched since the successful tick
    # The same tick with a working listing does act.
    provider.fail_listing = False
    report = reconcile_tick(deps, dispatch=lambda job_id, token: None, sweep=True)
    assert report.orphans_destroyed == ["60"]
