"""Steps chained into the step that entered their state (``steps.CHAINED_STATES``).

- An outbid instance: the running step that sees it destroys it and rents the replacement in
  the same ``advance_job`` (one tick), not one tick later.
- An exited job: the running step that sees exit 0 collects and asks for the destroy in the
  same ``advance_job``, without a kill first (the process has recorded its exit code).
- Each step's result is stored before the next one acts: a chained step that fails leaves the
  job in the state the previous step stored, retried on a later tick.

Real parts: the engine's steps and SQLite database; the provider is the in-memory fake and the
remote session a fake returning a fixed status.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from gpubot.db.engine import session_scope
from gpubot.db.queries import claim_due_jobs
from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.engine import remote_job, steps
from gpubot.engine.remote_job import JobStatus
from gpubot.models import JobState, Offer, ProviderStatus
from gpubot.render.limits import PRICE_WAIT_PREFIX
from gpubot.testing.fakes import FakeClock, FakeProvider, observation, seed_instance, seed_job


def _offer(offer_id: str) -> Offer:
    return Offer(
        offer_id=offer_id, gpu_name="RTX 4090", num_gpus=1, gpu_ram_gb=24,
        price_per_hour_usd=Decimal("0.40"), min_bid_per_hour_usd=Decimal("0.20"),
        storage_per_gb_month_usd=Decimal("0.1"), upload_per_gb_usd=Decimal("0.01"),
        download_per_gb_usd=Decimal("0.01"), reliability=0.99, cuda_max=12.4,
        compute_cap=890, dlperf=50.0, datacenter=True, verified=True, host_id="h" + offer_id,
        machine_id="m" + offer_id, disk_space_gb=200, geolocation="EU", inet_down_mbps=500,
    )


class _FakeRemote:
    """A remote session whose job has exited 0; records what was asked of it."""

    def __init__(self, asked: list[str]) -> None:
        self.asked = asked

    def status(self, job: JobRow) -> JobStatus:
        self.asked.append("status")
        return JobStatus(running=False, exit_code=0, vanished=False, progress=None,
                         trainer_metrics=None, diagnosis=None)

    def backup_checkpoints(self, job: JobRow, *, final: bool = False) -> str | None:
        self.asked.append("backup")
        return None

    def collect_results(self, job: JobRow) -> list[dict[str, Any]]:
        self.asked.append("collect")
        return []

    def kill(self, job: JobRow) -> None:
        self.asked.append("kill")


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    @contextmanager
    def fake_connect(*_: Any, **__: Any) -> Iterator[_FakeRemote]:
        yield _FakeRemote(calls)

    monkeypatch.setattr(remote_job, "connect", fake_connect)
    return calls


def _seed_running(deps: EngineDeps, provider: FakeProvider, clock: FakeClock,
                  status: ProviderStatus) -> None:
    provider.add(observation("101", label="gpubot:j-1:1", status=status))
    with session_scope(deps.sessions) as s:
        job = seed_job(s, "j-1", state=JobState.RUNNING, created_at=clock())
        job.attempts = 1
        job.remote_root = "/workspace"
        instance = seed_instance(s, "j-1", "101", created_at=clock(),
                                 provider_status=status.value)
        instance.ssh_host, instance.ssh_port = "127.0.0.1", 22


def _advance_once(deps: EngineDeps, clock: FakeClock) -> None:
    with session_scope(deps.sessions) as s:
        (claim,) = claim_due_jobs(s, now=clock())
    steps.advance_job(deps, *claim)


def _state(deps: EngineDeps) -> tuple[JobRow, list[InstanceRow]]:
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-1")
        assert job is not None
        rows = list(s.query(InstanceRow).filter_by(job_id="j-1").order_by(InstanceRow.id))
        s.expunge_all()
        return job, rows


def test_an_outbid_instance_is_replaced_in_the_step_that_sees_it(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock, asked: list[str]
) -> None:
    # given a running job whose interruptible instance the listing shows outbid
    provider.offers = [_offer("201")]
    _seed_running(deps, provider, clock, ProviderStatus.OUTBID)
    # when one step runs
    _advance_once(deps, clock)
    # then the lost instance's destroy was requested and the replacement rented, both now
    job, rows = _state(deps)
    assert provider.destroyed == ["101"]
    assert [spec.label for _, spec in provider.created] == ["gpubot:j-1:2"]
    assert job.state == JobState.BOOTING.value, (job.state, job.reason, job.phase_detail)
    assert job.attempts == 2
    assert "outbid" in (job.reason or "")
    assert rows[0].destroy_requested_at == clock()
    assert rows[1].provider_id == provider.created[0][0] and rows[1].created_at == clock()
    assert "status" not in asked  # the loss is read from the listing, no SSH needed


def test_a_chained_rent_that_fails_leaves_the_job_re_renting_for_the_next_tick(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock, asked: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider.offers = [_offer("201")]
    _seed_running(deps, provider, clock, ProviderStatus.OUTBID)

    def search_fails(*_: Any, **__: Any) -> list[Offer]:
        from gpubot.errors import TransientProviderError

        raise TransientProviderError("search: HTTP 503")

    monkeypatch.setattr(provider, "search_offers", search_fails)
    _advance_once(deps, clock)
    # then the destroy of the lost instance is stored, and the failed rent is retried on a
    # later tick like any failed step (counted once)
    job, rows = _state(deps)
    assert provider.destroyed == ["101"] and provider.created == []
    assert job.state == JobState.RE_RENTING.value
    assert rows[0].destroy_requested_at == clock()
    assert int((job.progress or {}).get("error_count", 0)) == 1
    assert job.lock_token is None


def test_an_exited_job_is_collected_and_destroyed_in_the_step_that_sees_the_exit(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock, asked: list[str]
) -> None:
    # given a running job whose process has exited 0
    _seed_running(deps, provider, clock, ProviderStatus.RUNNING)
    # when one step runs
    _advance_once(deps, clock)
    # then it is collected and its instance's destroy requested at once, with no kill
    job, rows = _state(deps)
    assert asked[0] == "status" and "collect" in asked
    assert "kill" not in asked
    assert job.state == JobState.TEARING_DOWN.value and job.outcome == "succeeded"
    assert job.exit_code == 0
    assert provider.destroyed == ["101"]
    assert rows[0].destroy_requested_at == clock()


def test_a_new_rental_starts_its_idle_clock_afresh(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock, asked: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a job re-rented after an outbid that came while its GPU idled (idle_since kept)
    _seed_running(deps, provider, clock, ProviderStatus.RUNNING)
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-1")
        assert job is not None
        job.state = JobState.SETTING_UP.value
        job.idle_since = clock() - timedelta(minutes=30)
    monkeypatch.setattr(_FakeRemote, "start",
                        lambda self, job, template: remote_job.StartResult("run"), raising=False)
    # when its process starts on the new instance
    _advance_once(deps, clock)
    # then it runs with no idle clock: its first idle poll starts one
    job, _ = _state(deps)
    assert job.state == JobState.RUNNING.value
    assert job.idle_since is None and job.idle_warned_at is None


def test_an_instance_outbid_before_its_results_were_collected_is_replaced_not_failed(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock, asked: list[str]
) -> None:
    # given a job whose process exited 0 (collecting) on an instance the listing now shows
    # outbid: SSH to it fails, so collecting it would retry until the job failed
    provider.offers = [_offer("201")]
    _seed_running(deps, provider, clock, ProviderStatus.OUTBID)
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-1")
        assert job is not None
        job.state, job.exit_code = JobState.COLLECTING.value, 0
    # when one step runs
    _advance_once(deps, clock)
    # then the lost instance is destroyed and another rented: the job runs again
    job, rows = _state(deps)
    assert job.state == JobState.BOOTING.value, (job.state, job.reason, job.phase_detail)
    assert job.attempts == 2 and job.exit_code is None and job.outcome is None
    assert "outbid" in (job.reason or "") and "collected" in (job.reason or "")
    assert provider.destroyed == ["101"]
    assert [spec.label for _, spec in provider.created] == ["gpubot:j-1:2"]
    assert rows[0].destroy_requested_at == clock()
    assert asked == []  # read from the listing, no SSH to the stopped instance


def _price_prompts(deps: EngineDeps) -> list[str]:
    """The values of the Raise-the-price buttons in j-1's thread, oldest first."""
    from sqlalchemy import select

    from gpubot.db.tables import MessageRow

    with session_scope(deps.sessions) as s:
        rows = s.scalars(select(MessageRow).where(MessageRow.thread_key == "j-1")
                         .order_by(MessageRow.id))
        return [e["value"] for m in rows for b in (m.blocks or {}).get("blocks", [])
                for e in b.get("elements", []) if e.get("action_id") == "job.raise_ceiling"]


def _seed_priced_out(deps: EngineDeps, provider: FakeProvider, clock: FakeClock) -> None:
    """j-1 running on an instance the listing shows outbid, the only matching offer ($0.40/h
    on demand, $0.20 bid) above its approved $0.10/h."""
    provider.offers = [_offer("201")]
    _seed_running(deps, provider, clock, ProviderStatus.OUTBID)
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-1")
        assert job is not None
        job.price_ceiling_per_hour_usd = Decimal("0.10")


def test_an_outbid_job_priced_out_waits_hours_for_an_offer_and_asks_once_to_pay_more(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock, asked: list[str]
) -> None:
    # given a running job outbid when the only matching offer costs more than it may pay
    _seed_priced_out(deps, provider, clock)
    # when the step that sees the outbid runs
    _advance_once(deps, clock)
    # then nothing is rented; it waits for a price approval, and its thread asks once
    job, _ = _state(deps)
    assert provider.created == []
    assert job.state == JobState.RE_RENTING.value, (job.state, job.reason)
    assert (job.phase_detail or "").startswith(PRICE_WAIT_PREFIX), job.phase_detail
    [value] = _price_prompts(deps)
    job_id, _, price = value.partition(":")
    assert job_id == "j-1" and Decimal(price) > Decimal("0.10")
    assert job.due_at == clock() + timedelta(seconds=deps.settings.tick_seconds)
    # and an hour later (four times the wait of a job that never ran) it still waits,
    # without asking again, searching every 5 minutes now
    clock.advance(hours=1)
    _advance_once(deps, clock)
    job, _ = _state(deps)
    assert job.state == JobState.RE_RENTING.value and provider.created == []
    assert len(_price_prompts(deps)) == 1
    assert job.due_at == clock() + timedelta(minutes=5)
    # and past the resume wait it fails, having rented nothing
    clock.advance(hours=6)
    _advance_once(deps, clock)
    job, _ = _state(deps)
    assert job.outcome == "failed" or job.state == JobState.FAILED.value, job.state
    assert "no offer" in (job.reason or "") and provider.created == []


def test_a_raised_price_lets_the_waiting_job_rent_on_its_next_step(
    deps: EngineDeps, provider: FakeProvider, clock: FakeClock, asked: list[str]
) -> None:
    # given an outbid job waiting for a price approval
    _seed_priced_out(deps, provider, clock)
    _advance_once(deps, clock)
    [value] = _price_prompts(deps)
    # when the price is raised to the one quoted (what the button's handler stores)
    with session_scope(deps.sessions) as s:
        job = s.get(JobRow, "j-1")
        assert job is not None
        job.price_ceiling_per_hour_usd = Decimal(value.partition(":")[2])
        job.phase_detail = ""
    clock.advance(seconds=10)
    _advance_once(deps, clock)
    # then it rents, at no more than the quoted price
    job, rows = _state(deps)
    assert job.state == JobState.BOOTING.value, (job.state, job.phase_detail)
    assert len(provider.created) == 1
    assert rows[-1].price_per_hour_usd <= Decimal(value.partition(":")[2])
