"""Security finding 5: launch limits that hold after approval.

Approval judged a plan (an offer, its $/h, an estimate from ``hours=``) that nothing enforced
afterwards: ``hours=1m`` ran for hours, the renting step rented whatever the live market had
(an H100 for a job planned on an RTX 4090), sweeps ignored the live-job quota, a sweep needing
approval could never be approved, and a single run of a shardable template accepted any
``src=``. These tests drive the real command handler and engine against the simulator over
HTTP (real SSH), moto's S3 server and the real database.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gpubot.chat import quotas
from gpubot.chat.dispatch import Reply, handle_action, handle_command
from gpubot.commands.types import ResourceOverrides
from gpubot.config import load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import InstanceRow, JobGroupRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.engine import planning
from gpubot.engine.remote_job import BadRemoteRoot, check_remote_root
from gpubot.engine.steps import advance_job
from gpubot.engine.tick import reconcile_tick
from gpubot.groups.advance import advance_groups
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from tests.groups.conftest import drive_group
from tests.scenarios.conftest import TEST_TEMPLATES, drive, job_row, make_engine

USER = "ULIMITS01"
ADMIN = "UADMIN001"
CHANNEL_ID = "CLIMITS01"
FINISHED = {"succeeded", "failed", "cancelled"}

LIMITS_CONFIG = TEST_TEMPLATES + f"""
[roles]
admins = ["{ADMIN}"]
approval_above_price_per_hour_usd = 2.0
approval_above_estimate_usd = 25
per_user_max_live_jobs = 2
per_channel_max_live_jobs = 20

[templates.pricey]
description = "Planned on the cheapest RTX 4090; H100s match too."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "builtin:train"
run = "python3 train.py"

[templates.pricey.resources]
gpu_names = ["RTX 4090", "H100 SXM"]
min_reliability = 0.9
interruptible = "no"
checkpoints = false
expected_hours = 0.5
"""


@pytest.fixture
def deps(
    tmp_path: Path, sim: SimServer, s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EngineDeps]:
    config = load_config_text(LIMITS_CONFIG, name="limits-test.toml")
    yield make_engine(tmp_path / "home", sim, s3_store, config, monkeypatch)


def run(deps: EngineDeps, text: str, key: str, user: str = USER) -> Reply:
    return handle_command(deps, text, user=user, channel=CHANNEL_ID, request_key=key)


def tick(deps: EngineDeps) -> None:
    reconcile_tick(deps, dispatch=lambda job_id, token: advance_job(deps, job_id, token))
    advance_groups(deps, now=deps.clock())


def count(deps: EngineDeps, table: type) -> int:
    with session_scope(deps.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def instances_of(deps: EngineDeps, job_id: str) -> list[InstanceRow]:
    with session_scope(deps.sessions) as session:
        rows = list(session.scalars(select(InstanceRow).where(InstanceRow.job_id == job_id)))
        for row in rows:
            session.expunge(row)
        return rows


def thread_texts(deps: EngineDeps, key: str) -> str:
    with session_scope(deps.sessions) as session:
        rows = session.scalars(
            select(MessageRow).where(MessageRow.thread_key == key).order_by(MessageRow.id)
        )
        return "\n".join(m.text for m in rows)


class TestApprovedHours:
    def test_a_job_running_past_its_approved_hours_is_checkpointed_and_stopped(
        self, deps: EngineDeps, sim: SimServer
    ) -> None:
        # given a long job launched with hours=1m (an estimate far below any approval)
        reply = run(deps, "trainx hours=1m steps=100000 step_seconds=0.05", "k-hours")
        assert reply.ok and reply.job_id, reply.text
        job_id = reply.job_id
        assert job_row(deps, job_id).state == "queued"
        # and it runs and has backed up a checkpoint, well within 1 min + 10 min grace
        job = drive(deps, job_id, until=lambda j: j.state == "running" and bool(
            j.checkpoint_key), tick=lambda: tick(deps))
        assert job.state == "running"

        # when the instance has run 15 simulated minutes
        sim.control.advance(15 * 60)
        job = drive(deps, job_id, until=lambda j: j.state in FINISHED,
                    tick=lambda: tick(deps), timeout_s=60)

        # then it was stopped like a budget stop: failed with the reason, checkpoint kept,
        # every rental destroyed, the reason posted in its thread
        assert job.state == "failed", job.reason
        assert "past its approved 1 min" in job.reason and "10 min grace" in job.reason
        assert job.checkpoint_key
        assert list(deps.store.list(job.checkpoint_key))
        assert all(r.destroyed_at is not None for r in instances_of(deps, job_id))
        assert "Stopping: ran" in thread_texts(deps, job_id)


def raise_buttons(deps: EngineDeps, job_id: str) -> list[dict[str, object]]:
    """The Raise-the-price buttons posted in the job's thread, oldest first."""
    with session_scope(deps.sessions) as session:
        rows = session.scalars(
            select(MessageRow).where(MessageRow.thread_key == job_id).order_by(MessageRow.id)
        )
        found: list[dict[str, object]] = []
        for m in rows:
            for block in (m.blocks or {}).get("blocks", []):
                for element in block.get("elements", []):
                    if element.get("action_id") == "job.raise_ceiling":
                        found.append(element)
        return found


class TestPriceCeiling:
    def _priced_out(self, deps: EngineDeps, sim: SimServer, key: str
                    ) -> tuple[str, Decimal, dict[str, Decimal]]:
        """A job planned on the cheapest matching offer, then every offer at or below its
        ceiling taken by someone else: its id, ceiling and the blockers' prices."""
        reply = run(deps, "pricey", key)
        assert reply.ok and reply.job_id, reply.text
        job_id = reply.job_id
        job = job_row(deps, job_id)
        planned = Decimal(job.plan["price_per_hour_usd"])
        # its ceiling: plan + 20 %, and no higher than the $2/h approval threshold
        ceiling = min(planned * Decimal("1.2"), Decimal("2.0"))
        assert abs(Decimal(job.price_ceiling_per_hour_usd) - ceiling) < Decimal("0.000001")
        assert job.approved_hours == 0.5
        req = planning.requirements_for(deps.config, "pricey", ResourceOverrides())
        blockers: dict[str, Decimal] = {}
        for _ in range(20):
            market = deps.provider.search_offers(req, interruptible=False)
            cheap = [o for o in market if o.price_per_hour_usd <= ceiling]
            if not cheap:
                break
            for offer in cheap:
                pid = sim.control.create_instance("someone-else", offer_id=int(offer.offer_id))
                blockers[pid] = offer.price_per_hour_usd
        market = deps.provider.search_offers(req, interruptible=False)
        assert market and all(o.price_per_hour_usd > ceiling for o in market)
        return job_id, Decimal(job.price_ceiling_per_hour_usd), blockers

    def _until_prompted(self, deps: EngineDeps, job_id: str) -> None:
        drive(deps, job_id, until=lambda j: (j.phase_detail or "").startswith(
            "waiting for a price approval"), tick=lambda: tick(deps), timeout_s=60)

    def test_only_offers_under_the_ceiling_are_rented_even_when_only_pricier_remain(
        self, deps: EngineDeps, sim: SimServer
    ) -> None:
        # given a job whose every offer at or below its ceiling is taken by someone else
        job_id, ceiling, blockers = self._priced_out(deps, sim, "k-price")

        # when the engine tries to rent for a while
        for _ in range(6):
            tick(deps)
            sim.control.advance(30)

        # then nothing was rented, and the card says why
        job = job_row(deps, job_id)
        assert job.state == "renting", (job.state, job.phase_detail)
        assert [r for r in instances_of(deps, job_id) if r.provider_id] == []
        assert job.phase_detail.startswith("waiting for a price approval"), job.phase_detail
        assert "approved" in job.phase_detail
        # and the thread asked once (not once per tick) to raise it to the cheapest price
        buttons = raise_buttons(deps, job_id)
        assert len(buttons) == 1, buttons
        value = str(buttons[0]["value"])
        assert value.startswith(f"{job_id}:") and Decimal(value.split(":")[1]) > ceiling

        # and once a cheap offer is back, that is what gets rented
        cheapest = min(blockers, key=lambda pid: blockers[pid])
        deps.provider.destroy(cheapest)
        job = drive(deps, job_id, until=lambda j: j.state not in {"queued", "renting"},
                    tick=lambda: tick(deps), timeout_s=60)
        rented = [r for r in instances_of(deps, job_id) if r.provider_id]
        assert rented and all(r.price_per_hour_usd <= ceiling for r in rented), [
            (r.gpu_name, r.price_per_hour_usd) for r in rented
        ]

    def test_the_requesters_click_raises_the_price_and_the_job_rents_at_it(
        self, deps: EngineDeps, sim: SimServer
    ) -> None:
        # given a priced-out job whose thread asks to raise the price
        job_id, ceiling, _ = self._priced_out(deps, sim, "k-raise")
        self._until_prompted(deps, job_id)
        [button] = raise_buttons(deps, job_id)
        offered = Decimal(str(button["value"]).split(":")[1])
        assert offered > ceiling

        # when someone else clicks it, nothing changes
        stranger = handle_action(deps, "job.raise_ceiling", str(button["value"]),
                                 user="USTRANGER", channel=CHANNEL_ID, request_key="c-0")
        assert not stranger.ok
        assert Decimal(job_row(deps, job_id).price_ceiling_per_hour_usd) == ceiling

        # when the requester clicks it
        reply = handle_action(deps, "job.raise_ceiling", str(button["value"]), user=USER,
                              channel=CHANNEL_ID, request_key="c-1")
        assert reply.ok, reply.text
        assert Decimal(job_row(deps, job_id).price_ceiling_per_hour_usd) == offered

        # then it rents, at no more than the price clicked
        drive(deps, job_id, until=lambda j: j.state not in {"queued", "renting"},
              tick=lambda: tick(deps), timeout_s=60)
        rented = [r for r in instances_of(deps, job_id) if r.provider_id]
        assert rented and all(ceiling < r.price_per_hour_usd <= offered for r in rented), [
            (r.gpu_name, r.price_per_hour_usd) for r in rented
        ]

    def test_a_job_that_never_ran_fails_after_the_price_wait_and_rents_nothing(
        self, deps: EngineDeps, sim: SimServer
    ) -> None:
        # given a priced-out job nobody answers
        job_id, _, _ = self._priced_out(deps, sim, "k-wait")
        self._until_prompted(deps, job_id)
        assert job_row(deps, job_id).state == "renting"
        assert len(raise_buttons(deps, job_id)) == 1
        # when more than the wait (1 h for a job that never ran) has passed
        sim.control.advance(61 * 60)
        job = drive(deps, job_id, until=lambda j: j.state in FINISHED,
                    tick=lambda: tick(deps), timeout_s=60)
        # then it failed saying why, and nothing was ever rented for it
        assert job.state == "failed" and "approved ceiling" in (job.reason or ""), job.reason
        assert [r for r in instances_of(deps, job_id) if r.provider_id] == []


class TestGroupQuotas:
    def test_a_sweep_larger_than_the_quota_is_refused_and_nothing_launches(
        self, deps: EngineDeps
    ) -> None:
        rates = ",".join(f"0.{i:02d}" for i in range(1, 13))
        reply = run(deps, f"sweep trainx lr={rates}", "k-12")
        assert not reply.ok, reply.text
        text = html.unescape(reply.text)
        assert "12 jobs" in text and "limit is 2" in text, text
        assert count(deps, JobRow) == 0 and count(deps, JobGroupRow) == 0
        assert deps.provider.list_instances() == []

    def test_a_sweep_needing_approval_is_approved_by_an_admin_and_runs(
        self, deps: EngineDeps
    ) -> None:
        # given every launch needs approval
        deps.config = replace(deps.config, roles=replace(
            deps.config.roles, approval_above_estimate_usd=Decimal("0.000001")))
        reply = run(deps, "sweep trainx lr=0.1,0.2 steps=40 step_seconds=0.01", "k-appr")
        assert reply.ok and reply.job_id, reply.text
        group_id = reply.job_id
        assert group_id.startswith("g-")
        with session_scope(deps.sessions) as session:
            kids = list(session.scalars(select(JobRow).where(JobRow.group_id == group_id)))
            assert {j.state for j in kids} == {"awaiting_approval"}
            # waiting children do not count against the quota until approved
            assert quotas.live_jobs_count(session, user=USER) == 0
            # the parent thread has Approve / Reject for the group
            request = [m for m in session.scalars(
                select(MessageRow).where(MessageRow.thread_key == group_id)
            ) if "job.approve" in str(m.blocks)]
            assert request and group_id in str(request[0].blocks)

        # when the requester tries, nothing happens; an admin's click approves the group
        assert not handle_action(deps, "job.approve", group_id, user=USER,
                                 channel=CHANNEL_ID).ok
        approved = handle_action(deps, "job.approve", group_id, user=ADMIN,
                                 channel=CHANNEL_ID)
        assert approved.ok, approved.text
        with session_scope(deps.sessions) as session:
            assert quotas.live_jobs_count(session, user=USER) == 2

        # then the whole sweep runs to the end
        group = drive_group(deps, group_id)
        assert group.state == "succeeded"


class TestSingleRunInput:
    @pytest.mark.parametrize("text", ["ocr src=/etc", "ocr src=/etc shards=1",
                                      "ocr src=../.. shards=1"])
    def test_src_of_a_single_run_must_be_a_declared_input(
        self, deps: EngineDeps, text: str
    ) -> None:
        reply = run(deps, text, f"k-{text}")
        assert not reply.ok, reply.text
        body = html.unescape(reply.text)
        assert "not a declared input" in body and "src= takes the name of an input" in body
        assert count(deps, JobRow) == 0 and count(deps, JobGroupRow) == 0
        assert deps.provider.list_instances() == []


class TestRemoteRoot:
    @pytest.mark.parametrize(
        ("root", "why"),
        [("/" + "a" * 600, "characters long"), ("workspace", "not an absolute path"),
         ("/data\nspace", "control characters"), ("/data/../etc", "'..' part")],
    )
    def test_an_unusable_remote_root_is_refused(self, root: str, why: str) -> None:
        with pytest.raises(BadRemoteRoot, match=why):
            check_remote_root(root)

    def test_a_normal_root_is_kept(self) -> None:
        assert check_remote_root("/workspace") == "/workspace"
        assert check_remote_root("/" + "a" * 511) == "/" + "a" * 511
