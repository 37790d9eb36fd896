"""A train job from launch to results against the simulator, real SSH and moto's S3 server."""

from __future__ import annotations

import json
from decimal import Decimal

from sqlalchemy import func, select

from gpubot.chat.launch import plan_launch, submit
from gpubot.commands.grammar import parse_command
from gpubot.db.engine import session_scope
from gpubot.db.tables import InstanceRow, JobRow, LedgerEntryRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.engine.steps import advance_job
from gpubot.engine.tick import reconcile_tick
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from tests.scenarios.conftest import drive


def launch(deps: EngineDeps, text: str, key: str) -> str:
    plan = plan_launch(deps, parse_command(text, deps.config))
    job_id, created = submit(deps, plan, requester="U1", channel="C1", request_key=key)
    assert created
    return job_id


def inline_tick(deps: EngineDeps) -> None:
    reconcile_tick(deps, dispatch=lambda job_id, token: advance_job(deps, job_id, token))


def instances_of(deps: EngineDeps, job_id: str) -> list[InstanceRow]:
    with session_scope(deps.sessions) as session:
        rows = list(session.scalars(select(InstanceRow).where(InstanceRow.job_id == job_id)))
        for row in rows:
            session.expunge(row)
        return rows


def ledger_total(deps: EngineDeps, job_id: str) -> Decimal:
    with session_scope(deps.sessions) as session:
        total = session.scalar(
            select(func.coalesce(func.sum(LedgerEntryRow.amount_usd), 0)).where(
                LedgerEntryRow.job_id == job_id
            )
        )
        return Decimal(str(total))


def thread_texts(deps: EngineDeps, job_id: str) -> list[str]:
    with session_scope(deps.sessions) as session:
        return [
            m.text
            for m in session.scalars(
                select(MessageRow).where(MessageRow.job_id == job_id).order_by(MessageRow.id)
            )
        ]


class TestTrainJob:
    def test_runs_to_success_with_progress_checkpoints_results_and_verified_destroy(
        self, engine: EngineDeps, sim: SimServer, s3_store: S3Store
    ) -> None:
        # given
        # 12 s of real run time: enough for several polls even on a loaded 2-core machine (the
        # job runs in real time while each poll is a tick plus a step over SSH).
        job_id = launch(engine, "trainx steps=120 step_seconds=0.1", "k-success")
        steps_seen: list[int] = []

        def record(job: JobRow) -> None:
            step = (job.progress or {}).get("step")
            if step is not None and (not steps_seen or steps_seen[-1] != step):
                steps_seen.append(step)

        # when
        job = drive(
            engine,
            job_id,
            until=lambda j: j.state in {"succeeded", "failed", "cancelled"},
            tick=lambda: inline_tick(engine),
            on_poll=record,
        )

        # then: succeeded, progress read while running (a step before the last) and rising
        assert job.state == "succeeded", job.reason
        assert len(steps_seen) >= 2 and steps_seen == sorted(steps_seen), steps_seen
        assert steps_seen[-1] == 120
        # checkpoints and results are in S3 with checksums
        keys = {o.key for o in s3_store.list(f"jobs/{job_id}/")}
        assert any(k.startswith(f"jobs/{job_id}/checkpoints/checkpoint-") for k in keys)
        manifest = s3_store.get_bytes(f"jobs/{job_id}/results/MANIFEST.jsonl").decode()
        entries = [json.loads(line) for line in manifest.splitlines()]
        names = {e["path"] for e in entries}
        assert "metrics.json" in names
        metrics_sha = next(e["sha256"] for e in entries if e["path"] == "metrics.json")
        import hashlib

        body = s3_store.get_bytes(f"jobs/{job_id}/results/metrics.json")
        assert hashlib.sha256(body).hexdigest() == metrics_sha
        assert {f["name"] for f in job.results["files"]} == names
        # the instance is destroyed and gone from the provider's listing
        rows = instances_of(engine, job_id)
        assert len(rows) == 1 and rows[0].destroyed_at is not None
        listed = {o.provider_id for o in engine.provider.list_instances()}
        assert rows[0].provider_id not in listed
        # the ledger equals the simulator's billing within one cent
        billed = Decimal(sim.control.billing(rows[0].provider_id)["total_usd"])
        assert abs(ledger_total(engine, job_id) - billed) <= Decimal("0.01")
        # the thread tells the story
        texts = "\n".join(thread_texts(engine, job_id))
        assert "last checkpoint: checkpoint-" in texts  # a card field, not a reply
        assert "succeeded" in texts and "Final cost" in texts
        # the loss curve is attached to the thread
        with session_scope(engine.sessions) as session:
            files = list(
                session.scalars(
                    select(MessageRow).where(
                        MessageRow.job_id == job_id, MessageRow.kind == "file"
                    )
                )
            )
            paths = [f.file_path for f in files]
        assert len(paths) == 1 and paths[0] is not None
        from pathlib import Path

        assert Path(paths[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_outbid_mid_run_resumes_from_newest_checkpoint_on_a_second_instance(
        self, engine: EngineDeps, sim: SimServer
    ) -> None:
        # given a job past its first checkpoint
        job_id = launch(engine, "trainx steps=200 step_seconds=0.05", "k-outbid")
        job = drive(
            engine,
            job_id,
            until=lambda j: j.state == "running" and bool(j.checkpoint_key),
            tick=lambda: inline_tick(engine),
        )
        first = instances_of(engine, job_id)[0]
        # when the host outbids us
        sim.control.outbid(first.provider_id)
        job = drive(
            engine,
            job_id,
            until=lambda j: j.state in {"succeeded", "failed", "cancelled"},
            tick=lambda: inline_tick(engine),
            timeout_s=120,
        )
        # then it resumed elsewhere from the checkpoint and succeeded
        assert job.state == "succeeded", job.reason
        assert job.attempts == 2
        resume_from = (job.progress or {}).get("resume_from") or ""
        assert "checkpoint-" in resume_from
        rows = instances_of(engine, job_id)
        assert len(rows) == 2 and all(r.destroyed_at is not None for r in rows)
        assert rows[0].provider_id != rows[1].provider_id
        texts = "\n".join(thread_texts(engine, job_id))
        assert "Resumed from checkpoint" in texts
        # the outbid adds two replies (lost, resumed); the rentals are card fields
        with session_scope(engine.sessions) as session:
            replies = list(session.scalars(select(MessageRow.text).where(
                MessageRow.job_id == job_id, MessageRow.kind == "reply"
            )))
        assert any("Instance lost" in r for r in replies), replies
        assert not any("Rented instance" in r for r in replies), replies
        assert len(replies) <= 4 + 2, replies

    def test_job_exiting_non_zero_fails_with_log_lines_and_is_destroyed(
        self, engine: EngineDeps
    ) -> None:
        job_id = launch(engine, "trainx steps=100 fail_at_step=30", "k-fail")
        job = drive(
            engine,
            job_id,
            until=lambda j: j.state in {"succeeded", "failed", "cancelled"},
            tick=lambda: inline_tick(engine),
        )
        assert job.state == "failed"
        assert "exit" in job.reason and "30" in job.reason
        assert all(r.destroyed_at is not None for r in instances_of(engine, job_id))

    def test_setup_failure_fails_with_the_setup_log_and_is_destroyed(
        self, engine: EngineDeps
    ) -> None:
        job_id = launch(engine, "badsetup", "k-setup")
        job = drive(
            engine,
            job_id,
            until=lambda j: j.state in {"succeeded", "failed", "cancelled"},
            tick=lambda: inline_tick(engine),
        )
        assert job.state == "failed"
        assert "could not resolve dependencies" in job.reason
        assert all(r.destroyed_at is not None for r in instances_of(engine, job_id))
