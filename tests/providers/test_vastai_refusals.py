"""Refused creates and rate limits over real HTTP (the simulator, and a rewriting proxy).

vast answers a bid below ``min_bid`` by creating a *stopped* instance and replying
``success: false`` with ``new_contract`` (as dstack's vastai backend handles it).
If that answer comes with an error status, the vastai SDK raises ``HTTPError`` instead of
returning it: the body must still be read and the instance destroyed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from gpubot.errors import NoCapacityError, RateLimitedError, TransientProviderError
from gpubot.models import LaunchSpec, Offer, Requirements
from gpubot.providers.vastai import VastAIProvider
from gpubot.providers.vastai.pace import LocalPace
from gpubot.sim.server import SimServer
from tests.fixtures.sim import running_sim

KEY = "sk-gpubot-refusals-test"


class StatusRewriter:
    """Forwards to ``upstream``; a create reply with ``success: false`` gets ``status``."""

    def __init__(self, upstream: str, status: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.status = status
        self.rewritten = 0
        self._session = requests.Session()
        self._session.trust_env = False
        self._http: BaseWSGIServer | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        reply = self._session.request(
            request.method,
            self.upstream + request.full_path.rstrip("?"),
            data=request.get_data(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            timeout=30,
        )
        status = reply.status_code
        if request.method == "PUT" and "/asks/" in request.path:
            body = reply.json()
            if body.get("success") is False:
                status = self.status
                self.rewritten += 1
        response = Response(reply.content, status=status)
        response.headers["Content-Type"] = "application/json"
        return response(environ, start_response)

    def start(self) -> str:
        self._http = make_server("127.0.0.1", 0, self, threaded=True)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._http.server_port}"

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimServer]:
    with running_sim(tmp_path, monkeypatch, seed=5, speed=1.0, api_key=KEY) as server:
        yield server


def _spec(bid: Decimal) -> LaunchSpec:
    return LaunchSpec(
        image="pytorch/pytorch:latest",
        disk_gb=20,
        label="gpubot:refused",
        ssh_public_key="",
        bid_per_hour_usd=bid,
    )


def _cheapest(provider: VastAIProvider) -> Offer:
    offers = provider.search_offers(Requirements(min_reliability=0.0), interruptible=True)
    assert offers
    return offers[0]


@pytest.mark.parametrize("status", [400, 409, 500])
def test_low_bid_with_error_status_destroys_the_stopped_instance(
    sim: SimServer, status: int
) -> None:
    proxy = StatusRewriter(sim.url, status)
    url = proxy.start()
    try:
        provider = VastAIProvider(api_key=KEY, server_url=url, retry_attempts=1)
        offer = _cheapest(provider)
        low = (offer.min_bid_per_hour_usd / 2).quantize(Decimal("0.001"))
        with pytest.raises(NoCapacityError) as info:
            provider.create_instance(offer, _spec(low))
        assert proxy.rewritten == 1, "vast's reply really came with an error status"
        created = info.value.created_instance_id
        assert created is not None and created.isdigit()
        assert int(created) in sim.control.state()["destroyed_instance_ids"]
        assert provider.list_instances() == []
        assert "created stopped instance" in str(info.value)
    finally:
        proxy.stop()


def test_429_is_rate_limited_with_vasts_threshold(sim: SimServer) -> None:
    provider = VastAIProvider(api_key=KEY, server_url=sim.url, retry_attempts=2)
    sim.control.inject("GET", r"/users/current", 429, count=5)
    with pytest.raises(RateLimitedError) as info:
        provider.account()
    assert isinstance(info.value, TransientProviderError)
    assert info.value.retry_after_seconds == 1.0  # "endpoint threshold=1.0"


def test_a_429_rests_the_endpoint_in_the_shared_pace(sim: SimServer) -> None:
    pace = LocalPace({"search": 0.0}, max_wait_seconds=0.5)
    provider = VastAIProvider(api_key=KEY, server_url=sim.url, retry_attempts=1, pace=pace)
    sim.control.inject("POST", r"/bundles", 429, count=1, retry_after=30)
    with pytest.raises(RateLimitedError) as first:
        provider.search_offers(Requirements(), interruptible=False)
    assert first.value.retry_after_seconds == 30.0
    assert sim.control.state()["injections"] == []
    with pytest.raises(RateLimitedError) as second:
        provider.search_offers(Requirements(), interruptible=False)  # refused locally
    assert second.value.__cause__ is None
    assert provider.account().credit_usd > 0  # other endpoints are not held


class QuotaExhausted(StatusRewriter):
    """Answers every search with vast's daily-quota 429 (the SDK never retries it)."""

    def __init__(self, upstream: str, reset_in_s: float) -> None:
        super().__init__(upstream, 400)
        self.reset_in_s = reset_in_s
        self.searches = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if Request(environ).path.startswith("/api/v0/bundles"):
            self.searches += 1
            body = json.dumps({"success": False, "error": "search_quota_exceeded"})
            response = Response(body, status=429)
            response.headers["Content-Type"] = "application/json"
            response.headers["X-RateLimit-Reset"] = str(int(time.time() + self.reset_in_s))
            return response(environ, start_response)
        return super().__call__(environ, start_response)


def test_search_quota_exceeded_is_rate_limited_until_the_reset(sim: SimServer) -> None:
    proxy = QuotaExhausted(sim.url, reset_in_s=3600)
    url = proxy.start()
    try:
        provider = VastAIProvider(api_key=KEY, server_url=url, retry_attempts=3)
        with pytest.raises(RateLimitedError) as info:
            provider.search_offers(Requirements(), interruptible=False)
        assert proxy.searches == 1, "the SDK does not retry the quota"
        assert 3500 <= (info.value.retry_after_seconds or 0) <= 3600
        assert "search_quota_exceeded" in str(info.value)
    finally:
        proxy.stop()


# ----------------------------------------------------------------------------- account SSH key

ACCOUNT_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bot"
)


def test_account_key_is_registered_once_and_lands_on_new_instances(sim: SimServer) -> None:
    provider = VastAIProvider(api_key=KEY, server_url=sim.url, retry_attempts=2)
    assert provider.ensure_account_ssh_key(ACCOUNT_KEY) is True
    again = ACCOUNT_KEY.rsplit(" ", 1)[0] + " other-comment"
    assert provider.ensure_account_ssh_key(again) is False  # same key, other comment
    assert [k["public_key"] for k in sim.engine.account_keys] == [ACCOUNT_KEY]
    offer = provider.search_offers(Requirements(min_reliability=0.0), interruptible=False)[0]
    spec = LaunchSpec(
        image="pytorch/pytorch:latest", disk_gb=20, label="gpubot:k", ssh_public_key=""
    )  # no per-instance attach
    instance_id = provider.create_instance(offer, spec)
    assert ACCOUNT_KEY in sim.engine.instances[int(instance_id)].keys
