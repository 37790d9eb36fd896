"""Money governance against the simulator on its own fast clock: budget caps, the idle
reaper (with Keep alive), stuck jobs, the orphan sweep and cost reports."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from gpubot.config import load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.engine.steps import advance_job
from gpubot.engine.tick import reconcile_tick
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from tests.scenarios.conftest import TEST_TEMPLATES, drive, make_engine
from tests.scenarios.test_job_flow import instances_of, launch, ledger_total

SPEED = 60.0
TICK_SECONDS = 0.5
"""Real seconds between ticks; one tick is TICK_SECONDS * SPEED simulated seconds."""

GOVERNANCE_TOML = (
    TEST_TEMPLATES.replace(
        "[engine]\nmax_attempts = 3\ndestroy_deadline_minutes = 5\n", ""
    )
    + """
[templates.pricey]
description = "The training job on a ~$1/h on-demand machine."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "builtin:train"
setup = ['python3 -c "import numpy"']
run = "python3 train.py"

[templates.pricey.params.steps]
type = "int"
default = 100000
max = 100000

[templates.pricey.params.step_seconds]
type = "float"
default = 0.02

[templates.pricey.params.checkpoint_every]
type = "int"
default = 25

[templates.pricey.resources]
gpu_names = ["A100 PCIE", "A100 SXM4"]
min_reliability = 0.8
interruptible = "no"
checkpoints = true
expected_hours = 0.2

[templates.stuck]
description = "A job whose process lives but never progresses."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "builtin:train"
run = "python3 -c 'import time; time.sleep(10**6)'"

[templates.stuck.resources]
interruptible = "no"
min_reliability = 0.8

[idle]
gpu_util_threshold_pct = 5
window_minutes = 4
grace_minutes = 4
stuck_window_minutes = 6

[budgets]
job_default_usd = 50

[engine]
max_attempts = 3
destroy_deadline_minutes = 30
sweep_every_ticks = 1
orphan_grace_minutes = 2
"""
)


@pytest.fixture
def fast_sim(tmp_path: Path) -> Iterator[SimServer]:
    server = SimServer(home=tmp_path / "sim", seed=11, speed=SPEED)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gov(
    tmp_path: Path, fast_sim: SimServer, s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> EngineDeps:
    return make_engine(
        tmp_path / "home",
        fast_sim,
        s3_store,
        load_config_text(GOVERNANCE_TOML, name="governance.toml"),
        monkeypatch,
        tick_seconds=TICK_SECONDS * SPEED,
    )


def tick(deps: EngineDeps, *, sweep: bool = False) -> None:
    reconcile_tick(deps, dispatch=lambda j, t: advance_job(deps, j, t), sweep=sweep)


class Paced:
    """A beat: one tick every TICK_SECONDS real seconds; records the longest interval between
    tick starts in simulated seconds (steps over SSH stretch it beyond the nominal tick)."""

    def __init__(self, deps: EngineDeps, *, sweep: bool = False) -> None:
        self.deps = deps
        self.sweep = sweep
        self.last = None
        self.longest_s = TICK_SECONDS * SPEED

    def __call__(self) -> None:
        import time

        now = self.deps.clock()
        if self.last is not None:
            self.longest_s = max(self.longest_s, (now - self.last).total_seconds())
        self.last = now
        tick(self.deps, sweep=self.sweep)
        time.sleep(TICK_SECONDS)  # the beat interval, bounded by drive's deadline


def paced(deps: EngineDeps, *, sweep: bool = False) -> Paced:
    return Paced(deps, sweep=sweep)


def replies(deps: EngineDeps, job_id: str) -> list[MessageRow]:
    with session_scope(deps.sessions) as session:
        rows = list(
            session.scalars(
                select(MessageRow)
                .where(MessageRow.job_id == job_id, MessageRow.kind == "reply")
                .order_by(MessageRow.id)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def finished(job: JobRow) -> bool:
    return job.state in {"succeeded", "failed", "cancelled"}


class TestBudgetCap:
    def test_job_budget_stops_it_after_a_checkpoint_with_50_80_100_alerts(
        self, gov: EngineDeps, fast_sim: SimServer, s3_store: S3Store
    ) -> None:
        job_id = launch(gov, "pricey budget=$0.50 hours=1", "k-budget")
        beat = paced(gov)
        job = drive(gov, job_id, until=finished, tick=beat, timeout_s=150)
        assert job.state == "failed"
        assert "budget of $0.50 reached" in job.reason
        rows = instances_of(gov, job_id)
        price = rows[0].price_per_hour_usd
        one_tick = price * Decimal(str(beat.longest_s)) / Decimal(3600)
        spent = ledger_total(gov, job_id)
        billed = sum(
            Decimal(fast_sim.control.billing(r.provider_id)["total_usd"]) for r in rows
        )
        assert spent <= Decimal("0.50") + one_tick, (spent, one_tick)
        assert billed <= Decimal("0.50") + 2 * one_tick, (billed, one_tick)
        texts = "\n".join(r.text for r in replies(gov, job_id))
        for pct in ("50%", "80%", "100%"):
            assert pct in texts.replace(" %", "%"), texts
        # a checkpoint reached S3 before the destroy
        assert job.checkpoint_key
        assert s3_store.list(job.checkpoint_key)
        assert all(r.destroyed_at is not None for r in rows)


class TestIdleReaper:
    def test_idle_rental_is_warned_then_destroyed_and_keep_alive_postpones_it(
        self, gov: EngineDeps
    ) -> None:
        from gpubot.chat.dispatch import handle_action

        policy = gov.config.idle
        job_id = launch(gov, "rent hours=2", "k-idle")
        job = drive(gov, job_id, until=lambda j: j.idle_warned_at is not None, tick=paced(gov))
        warning = [r for r in replies(gov, job_id) if "idle" in r.text]
        assert warning and "job.keep" in str(warning[-1].blocks)
        # Keep alive (the button) postpones the reaper
        reply = handle_action(gov, "job.keep", f"{job_id}:0.1", user="U1", channel="C1")
        assert "keep" in reply.text.lower() or "alive" in reply.text.lower()
        kept = drive(gov, job_id, until=lambda j: j.keep_until is not None, tick=lambda: None)
        assert kept.idle_warned_at is None
        keep_until = kept.keep_until
        assert keep_until is not None
        # ... and once the keep expires, idle window + grace later it is destroyed
        beat = paced(gov)
        job = drive(gov, job_id, until=finished, tick=beat, timeout_s=120)
        assert job.state == "cancelled" and "idle" in job.reason
        assert job.finished_at is not None
        # window + grace + one tick (plus the tick that saw the keep expire)
        limit_s = (policy.window_minutes + policy.grace_minutes) * 60 + 2 * beat.longest_s
        assert (job.finished_at - keep_until).total_seconds() <= limit_s
        assert (job.finished_at - keep_until).total_seconds() >= (
            (policy.window_minutes + policy.grace_minutes) * 60
        )
        assert all(r.destroyed_at is not None for r in instances_of(gov, job_id))


class TestStuckJob:
    def test_live_process_with_idle_gpu_and_no_progress_is_warned_and_destroyed(
        self, gov: EngineDeps
    ) -> None:
        job_id = launch(gov, "stuck", "k-stuck")
        job = drive(gov, job_id, until=finished, tick=paced(gov), timeout_s=120)
        assert job.state == "failed" and "stuck" in job.reason
        assert any("stuck" in r.text for r in replies(gov, job_id))
        assert all(r.destroyed_at is not None for r in instances_of(gov, job_id))


class TestOrphanSweep:
    def test_labelled_orphan_destroyed_after_grace_unlabelled_left_alone(
        self, gov: EngineDeps, fast_sim: SimServer
    ) -> None:
        orphan = fast_sim.control.create_instance("gpubot:j-deadbeef")
        stranger = fast_sim.control.create_instance("someone-else")
        # a failing listing destroys nothing
        fast_sim.control.advance(3600)  # far past the orphan grace
        fast_sim.control.inject("GET", r"/api/v1/instances", 500, count=3)
        for _ in range(3):
            report = reconcile_tick(gov, dispatch=lambda j, t: None, sweep=True)
            assert not report.listed_ok and report.orphans_destroyed == []
        ids = {o.provider_id for o in gov.provider.list_instances()}
        assert {str(orphan), str(stranger)} <= ids
        # a healthy sweep destroys the labelled orphan after the grace period only
        import time

        deadline = time.monotonic() + 60
        while str(orphan) in {o.provider_id for o in gov.provider.list_instances()}:
            tick(gov, sweep=True)
            assert time.monotonic() < deadline, "orphan never destroyed"
            time.sleep(TICK_SECONDS)
        ids = {o.provider_id for o in gov.provider.list_instances()}
        assert str(stranger) in ids
        with session_scope(gov.sessions) as session:
            actions = [
                (e.action, e.target) for e in session.scalars(select(AuditEventRow))
            ]
        assert any(a == "orphan_destroyed" and str(orphan) in t for a, t in actions), actions
        fast_sim.control.billing()  # the simulator still answers


class TestCostReport:
    def test_cost_week_by_user_equals_ledger_and_simulator_charges(
        self, gov: EngineDeps, fast_sim: SimServer
    ) -> None:
        from gpubot.chat.dispatch import handle_command

        job_id = launch(gov, "trainx steps=60 step_seconds=0.02", "k-cost")
        job = drive(gov, job_id, until=finished, tick=paced(gov), timeout_s=120)
        assert job.state == "succeeded", job.reason
        reply = handle_command(gov, "/gpu cost week by user", user="U1", channel="C1",
                               request_key="k-cost-report")
        match = re.search(r"total\s+\$([0-9.]+)", reply.text)
        assert match, reply.text
        shown = Decimal(match.group(1))
        ledger = ledger_total(gov, job_id)
        billed = sum(
            Decimal(fast_sim.control.billing(r.provider_id)["total_usd"])
            for r in instances_of(gov, job_id)
        )
        assert "U1" in reply.text
        assert abs(shown - ledger) <= Decimal("0.01")
        assert abs(ledger - billed) <= Decimal("0.01")
