"""Sweeps end to end: simulator over HTTP with real SSH, moto's S3 server."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from gpubot import groups
from gpubot.chat.launch import plan_launch
from gpubot.commands.grammar import parse_command
from gpubot.commands.types import LaunchCommand, SweepCommand
from gpubot.db.engine import session_scope
from gpubot.db.tables import InstanceRow, JobGroupRow, JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.errors import BudgetError, PermissionDenied
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from tests.groups.conftest import drive_group


def children(deps: EngineDeps, group_id: str) -> list[JobRow]:
    with session_scope(deps.sessions) as session:
        rows = list(session.scalars(
            select(JobRow).where(JobRow.group_id == group_id).order_by(JobRow.created_at)
        ))
        for row in rows:
            session.expunge(row)
        return rows


def instances(deps: EngineDeps, job_ids: list[str]) -> list[InstanceRow]:
    with session_scope(deps.sessions) as session:
        rows = list(session.scalars(select(InstanceRow).where(InstanceRow.job_id.in_(job_ids))))
        for row in rows:
            session.expunge(row)
        return rows


def group_card(deps: EngineDeps, group_id: str) -> str:
    with session_scope(deps.sessions) as session:
        card = session.scalars(
            select(MessageRow).where(MessageRow.job_id == group_id, MessageRow.kind == "card")
        ).one()
        return card.text


def group_messages(deps: EngineDeps, group_id: str) -> list[MessageRow]:
    with session_scope(deps.sessions) as session:
        rows = list(session.scalars(
            select(MessageRow).where(MessageRow.group_id == group_id, MessageRow.job_id.is_(None))
            .order_by(MessageRow.id)
        ))
        for row in rows:
            session.expunge(row)
        return rows


def sweep(deps: EngineDeps, text: str, key: str) -> groups.GroupSubmission:
    command = parse_command(text, deps.config)
    assert isinstance(command, SweepCommand)
    return groups.submit_sweep(deps, command, requester="U1", channel="C1", request_key=key)


def final_eval_loss(deps: EngineDeps, store: S3Store, job: JobRow) -> float:
    metrics = (job.progress or {}).get("metrics") or {}
    if "eval_loss" in metrics:
        return float(metrics["eval_loss"])
    return float(json.loads(store.get_bytes(f"jobs/{job.id}/results/metrics.json"))["eval_loss"])


class TestSweep:
    def test_three_learning_rates_run_at_most_two_at_once_and_the_best_is_marked(
        self, gengine: EngineDeps, s3_store: S3Store
    ) -> None:
        # given a sweep of 3 learning rates (max_concurrent_children = 2)
        sub = sweep(gengine, "sweep trainx lr=0.5,0.05,0.0001 steps=40 step_seconds=0.01",
                    "k-sweep")
        assert len(sub.job_ids) == 3
        assert "3 runs, at most 2 at once" in sub.text
        first = children(gengine, sub.group_id)
        assert sum(1 for j in first if j.phase_detail.startswith("waiting")) == 1
        # the plan's estimate is the sum of the children's
        each = {Decimal(j.plan["estimate_usd"]) for j in first}
        assert len(each) == 1 and sub.estimate_usd == 3 * each.pop()
        # a redelivered request launches nothing new
        again = sweep(gengine, "sweep trainx lr=0.5,0.05,0.0001 steps=40 step_seconds=0.01",
                      "k-sweep")
        assert not again.created and again.group_id == sub.group_id
        assert len(children(gengine, sub.group_id)) == 3

        max_active: list[int] = [0]

        def watch() -> None:
            live = {"renting", "booting", "connecting", "deploying", "restoring",
                    "setting_up", "running", "collecting", "interrupted", "re_renting"}
            active = sum(1 for j in children(gengine, sub.group_id) if j.state in live)
            max_active[0] = max(max_active[0], active)

        # when it runs
        group = drive_group(gengine, sub.group_id, on_poll=watch)

        # then 3 succeeded children, never more than 2 at once, 3 destroyed instances
        kids = children(gengine, sub.group_id)
        assert group.state == "succeeded"
        assert [j.state for j in kids] == ["succeeded"] * 3, [j.reason for j in kids]
        assert 1 <= max_active[0] <= 2
        rows = instances(gengine, [j.id for j in kids])
        assert len(rows) == 3 and all(r.destroyed_at is not None for r in rows)
        assert len({r.job_id for r in rows}) == 3
        # the best run is the one with the lowest final eval_loss
        losses = {j.id: final_eval_loss(gengine, s3_store, j) for j in kids}
        best = min(losses, key=lambda k: losses[k])
        assert group.spec["result"]["best"] == best
        ranking = [r["job_id"] for r in group.spec["result"]["ranking"]]
        assert ranking == sorted(losses, key=lambda k: losses[k])
        card = group_card(gengine, sub.group_id)
        best_line = next(line for line in card.splitlines() if ":trophy:" in line)
        assert best in best_line and f"eval_loss={losses[best]:.4g}" in best_line
        assert card.count(":trophy:") == 1
        texts = "\n".join(m.text for m in group_messages(gengine, sub.group_id))
        assert f"{sub.group_id} succeeded" in texts and "Results by eval_loss (min)" in texts

    def test_group_budget_reached_stops_every_child(
        self, gengine: EngineDeps, sim: SimServer
    ) -> None:
        # given a sweep of long runs with a group budget, two of them running
        sub = sweep(gengine, "sweep trainx lr=0.1,0.2,0.3 steps=100000 step_seconds=0.05 "
                    "budget=0.05", "k-budget")
        with session_scope(gengine.sessions) as session:
            group = session.get(JobGroupRow, sub.group_id)
            assert group is not None and group.budget_usd == Decimal("0.05")
        drive_group(gengine, sub.group_id, until=lambda g: sum(
            j.state == "running" for j in children(gengine, sub.group_id)) == 2)
        running = [j.id for j in children(gengine, sub.group_id) if j.state == "running"]
        prices = [r.price_per_hour_usd for r in instances(gengine, running)]
        assert len(prices) == 2 and max(prices) / sum(prices) < Decimal("0.7")

        # when simulated time passes so that together they exceed it, neither alone
        seconds = float(Decimal("0.06") / sum(prices) * 3600)
        sim.control.advance(seconds)
        group = drive_group(gengine, sub.group_id, timeout_s=120)

        # then every child stopped for the group budget and nothing is left running
        kids = children(gengine, sub.group_id)
        assert group.state == "failed"
        assert all(j.state == "failed" for j in kids), [(j.id, j.state) for j in kids]
        reasons = [j.stop_requested_reason or j.reason for j in kids]
        assert all("group budget of $0.05" in r for r in reasons), reasons
        rows = instances(gengine, [j.id for j in kids])
        assert rows and all(r.destroyed_at is not None for r in rows)
        texts = "\n".join(m.text for m in group_messages(gengine, sub.group_id))
        assert "Stopping every run" in texts

    def test_cancel_group_cancels_every_child(self, gengine: EngineDeps) -> None:
        sub = sweep(gengine, "sweep trainx lr=0.1,0.2,0.3 steps=100000 step_seconds=0.05",
                    "k-cancel")
        drive_group(gengine, sub.group_id, until=lambda g: any(
            j.state == "running" for j in children(gengine, sub.group_id)))
        assert groups.cancel_group(gengine, sub.group_id, "U1") == 3
        group = drive_group(gengine, sub.group_id)
        assert group.state == "cancelled"
        assert all(j.state == "cancelled" for j in children(gengine, sub.group_id))


class TestGroupGates:
    def test_approval_rules_and_budgets_apply_to_the_group_total(
        self, gengine: EngineDeps
    ) -> None:
        # given an approval threshold above one run's estimate but below three runs'
        one = plan_launch(gengine, LaunchCommand("trainx", {"lr": 0.1}))
        config = gengine.config
        gengine.config = replace(config, roles=replace(
            config.roles, admins=("UADMIN",), approval_above_estimate_usd=one.estimate_usd * 2
        ))

        # when a sweep of three is submitted
        sub = sweep(gengine, "sweep trainx lr=0.1,0.2,0.3", "k-approve")

        # then the whole group waits for an admin, and approval keeps the concurrency limit
        assert sub.approval_reason and "above" in sub.approval_reason
        assert {j.state for j in children(gengine, sub.group_id)} == {"awaiting_approval"}
        with pytest.raises(PermissionDenied):
            groups.approve_group(gengine, sub.group_id, "U1")
        assert len(groups.approve_group(gengine, sub.group_id, "UADMIN")) == 3
        now = gengine.clock()
        kids = children(gengine, sub.group_id)
        assert {j.state for j in kids} == {"queued"}
        assert sum(1 for j in kids if j.due_at > now + timedelta(days=1)) == 1

        # and a group whose total (not one run) would exceed a budget is refused, unwritten
        gengine.config = replace(gengine.config, budgets=replace(
            config.budgets, user_monthly_usd=one.estimate_usd * 2
        ))
        with pytest.raises(BudgetError, match="would be exceeded"):
            sweep(gengine, "sweep trainx lr=0.1,0.2,0.3", "k-refuse")
        with session_scope(gengine.sessions) as session:
            assert len(session.scalars(select(JobGroupRow)).all()) == 1
