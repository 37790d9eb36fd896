"""The dispatcher shared by Slack and the console: permissions, audit, changes, refusals."""

from __future__ import annotations

import io
import threading
from pathlib import Path

from sqlalchemy import select, update

from bot.console import run_chat
from gpubot.chat.dispatch import handle_action, handle_command
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.models import JobState
from gpubot.notify import events
from tests.bot.conftest import ADMIN, ADMIN2, ALICE, MALLORY

C = "CGPU0001"


def _run(deps: EngineDeps, text: str, user: str = ALICE, key: str | None = None):  # type: ignore[no-untyped-def]
    return handle_command(deps, text, user=user, channel=C, request_key=key)


def _job(deps: EngineDeps, job_id: str) -> JobRow:
    with session_scope(deps.sessions) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        return job


def _actions(deps: EngineDeps) -> list[str]:
    with session_scope(deps.sessions) as session:
        return [
            e.action for e in session.scalars(select(AuditEventRow).order_by(AuditEventRow.id))
        ]


def test_cancel_only_by_requester_or_admin_and_audited(deps: EngineDeps) -> None:
    job_id = _run(deps, "train").job_id
    assert job_id
    refused = _run(deps, f"cancel {job_id}", user=ADMIN2 + "X")
    assert not refused.ok  # not on the allow-list at all
    with session_scope(deps.sessions) as session:
        session.execute(update(JobRow).where(JobRow.id == job_id).values(requester=ADMIN2))
    refused = _run(deps, f"cancel {job_id}", user=ALICE)
    assert not refused.ok and "Only" in refused.text
    assert not _job(deps, job_id).cancel_requested
    done = _run(deps, f"cancel {job_id}", user=ADMIN)
    assert done.ok
    assert _job(deps, job_id).cancel_requested
    assert "cancel" in _actions(deps) and "denied" in _actions(deps)


def test_keep_sets_keep_until_and_clears_the_idle_warning(deps: EngineDeps) -> None:
    job_id = _run(deps, "train").job_id
    assert job_id
    with session_scope(deps.sessions) as session:
        session.execute(
            update(JobRow).where(JobRow.id == job_id).values(idle_warned_at=deps.clock())
        )
    reply = handle_action(deps, "job.keep", f"{job_id}:3", user=ALICE, channel=C)
    assert reply.ok, reply.text
    job = _job(deps, job_id)
    assert job.idle_warned_at is None and job.keep_until is not None
    hours = (job.keep_until - deps.clock()).total_seconds() / 3600
    assert 2.9 < hours <= 3.0
    assert _actions(deps)[-1] == "keep"


def test_reject_and_cancel_of_a_waiting_launch_finish_it(deps: EngineDeps) -> None:
    first = _run(deps, "train gpu=h100")
    assert "approval" in first.text and first.job_id
    assert not handle_action(deps, "job.reject", first.job_id, user=ALICE, channel=C).ok
    assert handle_action(deps, "job.reject", first.job_id, user=ADMIN, channel=C).ok
    assert _job(deps, first.job_id).state == JobState.CANCELLED.value
    second = _run(deps, "train gpu=h100")
    assert second.job_id
    assert _run(deps, f"cancel {second.job_id}").ok
    assert _job(deps, second.job_id).state == JobState.CANCELLED.value
    again = handle_action(deps, "job.approve", second.job_id, user=ADMIN, channel=C)
    assert "nothing to approve" in again.text


def test_read_only_and_admin_commands(deps: EngineDeps) -> None:
    offers = _run(deps, "offers gpu=4090")
    assert offers.ok and "RTX 4090" in offers.text and "H100" not in offers.text
    assert "queued" in _run(deps, "jobs").text or "none" in _run(deps, "jobs").text
    sweep = _run(deps, "sweep train lr=1e-5,2e-5")
    assert len(sweep.job_ids) == 2 and sweep.job_id and sweep.job_id.startswith("g-")
    assert "Only an admin" in _run(deps, "audit").text
    audit_text = _run(deps, "audit", user=ADMIN).text
    assert "command offers" in audit_text
    assert "Only an admin" in _run(deps, "budget set team amount=$50").text
    assert "gpubot rents GPUs" in _run(deps, "help").text
    assert "There is no job" in _run(deps, "status j-00000000").text


def test_status_of_a_job_draws_its_loss_chart(deps: EngineDeps) -> None:
    job_id = _run(deps, "train").job_id
    assert job_id
    with session_scope(deps.sessions) as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(metrics_history={"points": [[10, 2.0], [20, 1.4], [30, 1.1]]})
        )
    reply = _run(deps, f"status {job_id}")
    assert reply.file_path is None and "thread" in reply.text  # never a server path
    with session_scope(deps.sessions) as session:
        [chart] = session.scalars(
            select(MessageRow).where(MessageRow.job_id == job_id, MessageRow.kind == "file")
        ).all()
    assert chart.thread_key == job_id
    assert chart.file_path and Path(chart.file_path).read_bytes()[:4] == b"\x89PNG"


def test_a_request_key_is_answered_once(deps: EngineDeps) -> None:
    first = _run(deps, "jobs", key="k-1")
    second = _run(deps, "jobs", key="k-1")
    assert second.duplicate and second.text == first.text
    assert _actions(deps).count("command") == 1


def test_outsiders_are_refused_and_nothing_changes(deps: EngineDeps) -> None:
    reply = _run(deps, "train", user=MALLORY)
    assert not reply.ok and reply.ephemeral
    with session_scope(deps.sessions) as session:
        assert session.scalars(select(JobRow)).first() is None


def test_console_prints_the_plan_and_follows_the_thread(deps: EngineDeps) -> None:
    out = io.StringIO()
    assert run_chat(deps, "/gpu train lr=2e-5", user=ALICE, channel=C, follow=False, out=out) == 0
    assert "Plan for train" in out.getvalue()
    assert run_chat(deps, "/gpu train lr=oops", user=ALICE, out=io.StringIO()) == 2

    def finish_when_started() -> None:
        # Plays the worker: waits for the job row, then finishes it.
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with session_scope(deps.sessions) as session:
                job = session.scalars(
                    select(JobRow)
                    .where(JobRow.state == "queued")
                    .order_by(JobRow.created_at.desc())
                ).first()
                if job is not None and job.params.get("lr") == 0.001:
                    job.state = JobState.SUCCEEDED.value
                    session.flush()
                    events.refresh_card(session, job)
                    events.finished(session, job)
                    return
            time.sleep(0.05)

    worker = threading.Thread(target=finish_when_started)
    worker.start()
    out = io.StringIO()
    code = run_chat(
        deps,
        "/gpu train lr=1e-3",
        user=ALICE,
        channel=C,
        out=out,
        timeout_seconds=20,
        poll_seconds=0.05,
    )
    worker.join()
    text = out.getvalue()
    assert code == 0, text
    # the job's live card (its thread's root) is followed version by version
    assert "[card]" in text and "succeeded. Final cost" in text
    with session_scope(deps.sessions) as session:  # the console never marks rows delivered
        assert all(m.dirty for m in session.scalars(select(MessageRow)))


def test_budget_and_cost_use_the_budget_and_report_services(deps: EngineDeps) -> None:
    set_reply = _run(deps, f"budget set user=<@{ALICE}> amount=$50", user=ADMIN)
    assert set_reply.ok, set_reply.text
    shown = _run(deps, "budget")
    assert shown.ok and "$50" in shown.text, shown.text
    cost = _run(deps, "cost week by=user")
    assert cost.ok, cost.text
    assert "budget_set" in _actions(deps) or "budget.set" in _actions(deps)


def test_a_launch_over_a_budget_is_refused(deps: EngineDeps) -> None:
    assert _run(deps, f"budget set user=<@{ALICE}> amount=$0.01", user=ADMIN).ok
    reply = _run(deps, "train")
    assert not reply.ok and "budget" in reply.text, reply.text
    with session_scope(deps.sessions) as session:
        assert session.scalars(select(JobRow)).first() is None
