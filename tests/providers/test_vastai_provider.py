"""VastAIProvider over real HTTP: the official vastai SDK against the simulator (gpubot.sim)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gpubot.errors import (
    ConfigError,
    GpubotError,
    NoCapacityError,
    ProviderAuthError,
    ProviderError,
    TransientProviderError,
)
from gpubot.models import LaunchSpec, Offer, ProviderStatus, Requirements
from gpubot.providers.base import Provider
from gpubot.providers.registry import make_provider
from gpubot.providers.vastai import VastAIProvider
from gpubot.settings import Settings
from tests.fixtures.sim import running_sim

SECRET = "sk-gpubot-test-SECRET-0123456789abcdef"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bot"


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with running_sim(tmp_path, monkeypatch, seed=7, speed=1.0, api_key=SECRET) as server:
        yield server


@pytest.fixture
def provider(sim: Any) -> VastAIProvider:
    return VastAIProvider(api_key=SECRET, server_url=sim.url + "/", retry_attempts=5)


def _spec(label: str = "gpubot:job-1", bid: Decimal | None = None, **kw: Any) -> LaunchSpec:
    return LaunchSpec(
        image="pytorch/pytorch:latest",
        disk_gb=20,
        label=label,
        ssh_public_key=SSH_KEY,
        bid_per_hour_usd=bid,
        env={"GPUBOT_JOB_ID": "job-1", "GPUBOT_WORKSPACE": "/workspace/job-1"},
        onstart="echo started",
        **kw,
    )


def _cheapest(provider: VastAIProvider, *, interruptible: bool = False) -> Offer:
    offers = provider.search_offers(Requirements(min_reliability=0.0), interruptible=interruptible)
    assert offers
    return offers[0]


def _assert_no_secret(error: BaseException) -> None:
    assert SECRET not in str(error)
    assert SECRET not in repr(error)
    if isinstance(error, GpubotError):
        assert SECRET not in error.user_message


def _row(sim: Any, instance_id: str) -> dict[str, Any]:
    for row in sim.control.state()["instances"]:
        if str(row["id"]) == instance_id:
            return dict(row)
    raise AssertionError(f"instance {instance_id} not in the simulator")


# ---------------------------------------------------------------------------- protocol, search


def test_is_a_provider(provider: VastAIProvider) -> None:
    p: Provider = provider
    assert p.name == "vastai"
    assert not provider.server_url.endswith("/")
    assert SECRET not in repr(provider)


def test_search_returns_parsed_offers_cheapest_first(provider: VastAIProvider) -> None:
    req = Requirements(gpu_names=("RTX 4090",), min_reliability=0.0, verified_only=False)
    offers = provider.search_offers(req, interruptible=False)
    assert offers, "the simulated market has RTX 4090 offers"
    assert {o.gpu_name for o in offers} == {"RTX 4090"}
    prices = [o.price_per_hour_usd for o in offers]
    assert prices == sorted(prices)
    assert all(isinstance(o.price_per_hour_usd, Decimal) for o in offers)
    assert all(o.disk_space_gb >= 20 for o in offers)


def test_interruptible_search_keeps_on_demand_prices(provider: VastAIProvider) -> None:
    """A bid search's dph_total is min_bid + storage, not on-demand: it is never used."""
    req = Requirements(min_reliability=0.0, verified_only=False)
    on_demand = {o.offer_id: o for o in provider.search_offers(req, interruptible=False)}
    bids = provider.search_offers(req, interruptible=True)
    common = [o for o in bids if o.offer_id in on_demand]
    assert common
    assert all(o.price_per_hour_usd == on_demand[o.offer_id].price_per_hour_usd for o in common)
    assert all(o.min_bid_per_hour_usd < o.price_per_hour_usd for o in common)


def test_price_cap_is_sent(provider: VastAIProvider) -> None:
    cheapest = _cheapest(provider)
    req = Requirements(min_reliability=0.0, max_price_per_hour_usd=cheapest.price_per_hour_usd)
    offers = provider.search_offers(req, interruptible=False)
    assert offers and all(o.price_per_hour_usd <= cheapest.price_per_hour_usd for o in offers)


# ------------------------------------------------------------------------------ create, observe


def test_create_on_demand_then_observe_to_running(provider: VastAIProvider, sim: Any) -> None:
    offer = _cheapest(provider)
    instance_id = provider.create_instance(offer, _spec())
    assert instance_id.isdigit()
    obs = provider.observe(instance_id)
    assert obs is not None
    assert obs.status is ProviderStatus.PROVISIONING
    assert obs.is_bid is False
    assert obs.label == "gpubot:job-1"
    assert not obs.ssh_ready

    row = _row(sim, instance_id)
    assert dict(row["extra_env"]) == {
        "GPUBOT_JOB_ID": "job-1",
        "GPUBOT_WORKSPACE": "/workspace/job-1",
    }
    assert row["onstart"] == "echo started"
    assert row["image_uuid"] == "pytorch/pytorch:latest"
    assert row["disk_space"] == 20
    assert "ssh_direc" in row["image_runtype"]

    sim.control.advance(10)
    obs = provider.observe(instance_id)
    assert obs is not None and obs.status is ProviderStatus.RUNNING
    assert obs.ssh_ready and obs.ssh_host and obs.ssh_port
    assert obs.started_at is not None
    assert obs.price_per_hour_usd > 0
    assert obs.disk_gb == 20


def test_create_interruptible_at_min_bid(provider: VastAIProvider) -> None:
    offer = _cheapest(provider, interruptible=True)
    instance_id = provider.create_instance(offer, _spec(bid=offer.min_bid_per_hour_usd))
    obs = provider.observe(instance_id)
    assert obs is not None and obs.is_bid is True
    assert obs.status is ProviderStatus.PROVISIONING


def test_low_bid_stopped_instance_is_destroyed(provider: VastAIProvider, sim: Any) -> None:
    offer = _cheapest(provider, interruptible=True)
    low = (offer.min_bid_per_hour_usd / 2).quantize(Decimal("0.0001"))
    with pytest.raises(NoCapacityError) as info:
        provider.create_instance(offer, _spec(bid=low))
    created = info.value.created_instance_id
    assert created is not None and created.isdigit()
    assert provider.observe(created) is None
    assert int(created) in sim.control.state()["destroyed_instance_ids"]
    assert provider.list_instances() == []
    _assert_no_secret(info.value)


def test_offer_gone_is_no_capacity(provider: VastAIProvider, sim: Any) -> None:
    offer = _cheapest(provider)
    provider.create_instance(offer, _spec())
    with pytest.raises(NoCapacityError) as info:  # the same offer is rented now: 404
        provider.create_instance(offer, _spec(label="gpubot:job-2"))
    assert info.value.created_instance_id is None
    sim.control.fail_next_creates(1)
    with pytest.raises(NoCapacityError):
        provider.create_instance(_cheapest(provider), _spec(label="gpubot:job-3"))


def test_create_server_error_is_transient(provider: VastAIProvider, sim: Any) -> None:
    sim.control.fail_next_creates(1, status=500)
    with pytest.raises(TransientProviderError) as info:
        provider.create_instance(_cheapest(provider), _spec())
    _assert_no_secret(info.value)
    assert provider.list_instances() == []


def test_create_with_bad_ssh_key_still_returns_the_id(provider: VastAIProvider) -> None:
    spec = LaunchSpec(image="img", disk_gb=10, label="gpubot:k", ssh_public_key="not-a-key")
    instance_id = provider.create_instance(_cheapest(provider), spec)
    assert provider.observe(instance_id) is not None


def test_key_attached_on_create_opens_ssh(
    provider: VastAIProvider, sim: Any, tmp_path: Path
) -> None:
    """create_instance attaches spec.ssh_public_key; the observed endpoint accepts it."""
    paramiko = pytest.importorskip("paramiko")
    from tests.fixtures.sim import make_ssh_key, ssh_run

    key = make_ssh_key(tmp_path / "key")
    spec = LaunchSpec(image="img", disk_gb=10, label="gpubot:ssh", ssh_public_key=key.public)
    instance_id = provider.create_instance(_cheapest(provider), spec)
    sim.control.advance(10)
    obs = provider.observe(instance_id)
    assert obs is not None and obs.ssh_ready
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        obs.ssh_host,
        port=obs.ssh_port,
        username="root",
        pkey=key.pkey,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        status, out, _ = ssh_run(client, "echo ok")
    finally:
        client.close()
    assert (status, out.strip()) == (0, "ok")


def test_observe_unknown_is_none(provider: VastAIProvider) -> None:
    assert provider.observe("999999999") is None
    assert provider.observe("not-a-vast-id") is None


# ------------------------------------------------------------------------------------ listing


def test_list_instances_reads_every_page(provider: VastAIProvider, sim: Any) -> None:
    ids = {sim.control.create_instance(label=f"gpubot:page-{i}") for i in range(27)}
    listed = provider.list_instances()
    assert len(listed) == 27  # 25 + 2: a second page was followed
    assert {o.provider_id for o in listed} == ids
    found = provider.find_by_label("gpubot:page-26")
    assert len(found) == 1 and found[0].label == "gpubot:page-26"
    assert provider.find_by_label("gpubot:nobody") == []


def test_list_failure_raises_never_empty(provider: VastAIProvider, sim: Any) -> None:
    sim.control.create_instance(label="gpubot:x")
    sim.control.inject("GET", r"/api/v1/instances", 500)
    with pytest.raises(TransientProviderError) as info:
        provider.list_instances()
    _assert_no_secret(info.value)
    assert len(provider.list_instances()) == 1


def test_list_refused_is_transient_too(provider: VastAIProvider, sim: Any) -> None:
    """Even a non-retryable refusal (400, e.g. a stale after_token) is "try again later"."""
    sim.control.create_instance(label="gpubot:p")
    sim.control.inject("GET", r"/api/v1/instances", 400, count=1)
    provider_one_try = VastAIProvider(api_key=SECRET, server_url=sim.url, retry_attempts=1)
    with pytest.raises(TransientProviderError):
        provider_one_try.list_instances()


# ------------------------------------------------------------------------------ status changes


def test_outbid_is_observed(provider: VastAIProvider, sim: Any) -> None:
    offer = _cheapest(provider, interruptible=True)
    instance_id = provider.create_instance(offer, _spec(bid=offer.min_bid_per_hour_usd))
    sim.control.advance(10)
    sim.control.outbid(instance_id)
    obs = provider.observe(instance_id)
    assert obs is not None and obs.status is ProviderStatus.OUTBID
    assert obs.min_bid_per_hour_usd is not None
    assert obs.min_bid_per_hour_usd > offer.min_bid_per_hour_usd
    provider.start(instance_id)  # "Scheduling": intended running, GPU not reacquired
    obs = provider.observe(instance_id)
    assert obs is not None and obs.status is ProviderStatus.OUTBID
    assert obs.raw_status["intended_status"] == "running"


@pytest.mark.parametrize(
    ("host_status", "expected"),
    [
        ("offline", ProviderStatus.OFFLINE),
        ("unknown", ProviderStatus.OFFLINE),
        ("exited", ProviderStatus.EXITED),
    ],
)
def test_host_failures_are_observed(
    provider: VastAIProvider, sim: Any, host_status: str, expected: ProviderStatus
) -> None:
    instance_id = provider.create_instance(_cheapest(provider), _spec())
    sim.control.advance(10)
    sim.control.set_offline(instance_id, host_status)
    (obs,) = provider.list_instances()
    assert obs.provider_id == instance_id
    assert obs.status is expected
    assert not obs.ssh_ready


def test_stop_start_label_attach(provider: VastAIProvider, sim: Any) -> None:
    instance_id = provider.create_instance(_cheapest(provider), _spec())
    sim.control.advance(10)
    provider.stop(instance_id)
    obs = provider.observe(instance_id)
    assert obs is not None and obs.status is ProviderStatus.STOPPED
    provider.start(instance_id)
    sim.control.advance(10)
    obs = provider.observe(instance_id)
    assert obs is not None and obs.status is ProviderStatus.RUNNING
    provider.set_label(instance_id, "gpubot:renamed")
    assert [o.provider_id for o in provider.find_by_label("gpubot:renamed")] == [instance_id]
    provider.attach_ssh_key(instance_id, SSH_KEY + "\n")
    with pytest.raises(ProviderError):
        provider.attach_ssh_key(instance_id, "not-a-key")


def test_calls_on_unknown_instance_are_provider_errors(provider: VastAIProvider) -> None:
    for call in (provider.stop, provider.start):
        with pytest.raises(ProviderError) as info:
            call("999999999")
        assert not isinstance(info.value, TransientProviderError)
        _assert_no_secret(info.value)
    with pytest.raises(ProviderError):
        provider.stop("abc")


def test_destroy_is_idempotent(provider: VastAIProvider, sim: Any) -> None:
    instance_id = provider.create_instance(_cheapest(provider), _spec())
    provider.destroy(instance_id)
    provider.destroy(instance_id)  # 404 no_such_instance: already gone is success
    provider.destroy("999999999")
    assert provider.observe(instance_id) is None
    assert provider.list_instances() == []


def test_destroy_rate_limited_is_transient(provider: VastAIProvider, sim: Any) -> None:
    instance_id = provider.create_instance(_cheapest(provider), _spec())
    quick = VastAIProvider(api_key=SECRET, server_url=sim.url, retry_attempts=1)
    sim.control.inject("DELETE", rf"/instances/{instance_id}/", 429)
    with pytest.raises(TransientProviderError):
        quick.destroy(instance_id)
    assert provider.observe(instance_id) is not None


# -------------------------------------------------------------------------------------- money


def test_account_credit_is_decimal(provider: VastAIProvider) -> None:
    info = provider.account()
    assert isinstance(info.credit_usd, Decimal)
    assert Decimal(0) < info.credit_usd <= Decimal(100)
    assert info.email == "bot@example.com"


def test_charges_rows(provider: VastAIProvider, sim: Any) -> None:
    instance_id = provider.create_instance(_cheapest(provider), _spec())
    now = datetime.fromtimestamp(sim.control.advance(3600), tz=UTC)
    rows = provider.charges(start=now - timedelta(days=1), end=now + timedelta(hours=1))
    sources = {row["source"] for row in rows}
    assert f"instance-{instance_id}" in sources
    (row,) = [r for r in rows if r["source"] == f"instance-{instance_id}"]
    assert isinstance(row["amount"], float) and row["amount"] > 0
    assert {item["type"] for item in row["items"]} == {"gpu", "disk", "bwd", "bwu"}  # type: ignore[union-attr]


# ------------------------------------------------------------------------- retries and errors


def test_plain_text_429_without_retry_after_is_retried(provider: VastAIProvider, sim: Any) -> None:
    sim.control.inject("POST", r"/bundles", 429, count=2, json_body=False)
    assert provider.search_offers(Requirements(min_reliability=0.0), interruptible=False)
    assert sim.control.state()["injections"] == []  # both were served, then success


def test_json_429_with_retry_after_is_retried(provider: VastAIProvider, sim: Any) -> None:
    sim.control.inject("GET", r"/users/current", 429, count=2, retry_after=0.05)
    assert provider.account().credit_usd > 0
    assert sim.control.state()["injections"] == []


def test_persistent_429_is_transient(sim: Any) -> None:
    provider = VastAIProvider(api_key=SECRET, server_url=sim.url, retry_attempts=3)
    sim.control.inject("POST", r"/bundles", 429, count=10)
    with pytest.raises(TransientProviderError) as info:
        provider.search_offers(Requirements(), interruptible=False)
    assert "429" in str(info.value)
    _assert_no_secret(info.value)
    (left,) = sim.control.state()["injections"]
    assert left["count"] == 7  # retry_attempts is the total number of attempts


def test_500_is_transient(provider: VastAIProvider, sim: Any) -> None:
    sim.control.inject("GET", r"/instances/", 500)
    with pytest.raises(TransientProviderError) as info:
        provider.observe("30000001")
    _assert_no_secret(info.value)


def test_wrong_key_is_auth_error(sim: Any) -> None:
    wrong = "sk-wrong-key-THAT-MUST-NOT-LEAK-42"
    provider = VastAIProvider(api_key=wrong, server_url=sim.url)
    calls = [
        lambda: provider.search_offers(Requirements(), interruptible=False),
        provider.list_instances,
        provider.account,
        lambda: provider.destroy("123"),
    ]
    for call in calls:
        with pytest.raises(ProviderAuthError) as info:
            call()
        assert wrong not in str(info.value) and wrong not in repr(info.value)
        assert "401" in str(info.value)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = VastAIProvider(
        api_key=SECRET, server_url=f"http://127.0.0.1:{port}", retry_attempts=1
    )
    for call in (provider.list_instances, provider.account):
        with pytest.raises(TransientProviderError) as info:
            call()
        _assert_no_secret(info.value)
        assert isinstance(info.value.__cause__, Exception)


def test_no_secret_in_any_error(provider: VastAIProvider, sim: Any) -> None:
    errors: list[BaseException] = []
    sim.control.inject("*", r"/api/", 503, count=50, json_body=False)
    quick = VastAIProvider(api_key=SECRET, server_url=sim.url, retry_attempts=1)
    for call in (
        lambda: quick.search_offers(Requirements(), interruptible=True),
        quick.list_instances,
        lambda: quick.observe("1"),
        lambda: quick.stop("1"),
        lambda: quick.set_label("1", "x"),
        quick.account,
        quick.charges,
    ):
        with pytest.raises(TransientProviderError) as info:
            call()
        errors.append(info.value)
    for error in errors:
        _assert_no_secret(error)


def test_constructor_validation() -> None:
    with pytest.raises(ConfigError):
        VastAIProvider(api_key="", server_url="http://127.0.0.1:1")
    with pytest.raises(ConfigError):
        VastAIProvider(api_key="k", server_url="http://127.0.0.1:1", retry_attempts=0)


def test_sdk_factory_receives_stripped_url_and_retry_and_creates_are_never_retried() -> None:
    seen: list[dict[str, Any]] = []

    def factory(**kwargs: Any) -> object:
        seen.append(kwargs)
        return object()

    VastAIProvider(api_key="k", server_url="http://h:1//", retry_attempts=4, sdk_factory=factory)
    assert seen == [
        {"api_key": "k", "server_url": "http://h:1", "retry": 4, "quiet": True},
        {"api_key": "k", "server_url": "http://h:1", "retry": 1, "quiet": True},
    ]


def test_request_timeout_is_short(sim: Any) -> None:
    provider = VastAIProvider(
        api_key=sim.api_key, server_url=sim.url, request_timeout_seconds=7.5
    )
    assert provider._sdk.client.timeout == 7.5
    assert provider._create_sdk.client.timeout == 7.5


# ------------------------------------------------------------------------------------ registry


def test_registry_builds_provider_from_settings(sim: Any, tmp_path: Path) -> None:
    settings = Settings(VAST_API_KEY=SECRET, VAST_URL=sim.url + "/", GPUBOT_HOME=tmp_path)
    provider = make_provider(settings)
    assert isinstance(provider, VastAIProvider)
    assert provider.server_url == sim.url
    assert provider.account().credit_usd > 0


def test_registry_missing_key_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        make_provider(Settings(_env_file=None))  # type: ignore[call-arg]
    assert "VAST_API_KEY" in str(info.value)
    assert info.value.key == "VAST_API_KEY"
