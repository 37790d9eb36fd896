"""Fault controls: injected 429/5xx as the SDK sees them, failing creates, auth errors."""

from __future__ import annotations

import time

import pytest
import requests
from vastai import VastAI

from gpubot.sim.server import SimServer


def test_429_plain_text_without_retry_after_is_retried(sim: SimServer, vast: VastAI) -> None:
    sim.control.inject("POST", r"/bundles/?$", 429, count=2, json_body=False)
    started = time.monotonic()
    assert vast.search_offers("num_gpus=1", limit=3)  # 3 attempts: 429, 429, 200
    assert time.monotonic() - started < 2.0  # backoff 0.15 s + 0.225 s, no Retry-After


def test_429_json_with_retry_after_is_honoured(sim: SimServer, vast: VastAI) -> None:
    sim.control.inject("GET", r"^/api/v1/instances", 429, count=1, retry_after=1)
    started = time.monotonic()
    vast.show_instances()
    assert time.monotonic() - started >= 0.95


def test_injected_reply_shapes(sim: SimServer) -> None:
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    sim.control.inject("GET", r"/users/current", 429, count=1, json_body=False)
    r = requests.get(f"{sim.url}/api/v0/users/current", headers=headers, timeout=10)
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert r.headers["Content-Type"] == "text/plain"
    assert r.text.startswith("API requests too frequent")
    sim.control.inject("GET", r"/users/current", 429, count=1, retry_after=2)
    r = requests.get(f"{sim.url}/api/v0/users/current", headers=headers, timeout=10)
    assert r.headers["Retry-After"] == "2" and r.json()["error"] == "rate_limit_exceeded"
    assert r.headers["Content-Type"] == "application/json"
    r = requests.get(f"{sim.url}/api/v0/users/current", headers=headers, timeout=10)
    assert r.status_code == 200  # count exhausted


def test_persistent_5xx_surfaces_as_http_error(sim: SimServer, vast: VastAI) -> None:
    sim.control.inject("*", r"/instances/\d+/?$", 503, count=3)
    with pytest.raises(requests.HTTPError) as err:
        vast.show_instance(1)
    assert err.value.response.status_code == 503
    sim.control.inject("GET", r"/instances/\d+/?$", 500, count=1)
    with pytest.raises(requests.HTTPError):  # 500 is not retried by the SDK
        vast.show_instance(1)
    assert vast.show_instance(1) is None


def test_fail_next_creates(sim: SimServer, vast: VastAI) -> None:
    offer = vast.search_offers("num_gpus=1", order="dph+", limit=1)[0]
    sim.control.fail_next_creates(2)
    for _ in range(2):
        with pytest.raises(requests.HTTPError) as err:
            vast.create_instance(offer["id"], image="img", disk=10)
        assert err.value.response.json()["error"] == "no_such_ask"
    reply = vast.create_instance(offer["id"], image="img", disk=10)
    assert reply["success"] is True
    vast.destroy_instance(reply["new_contract"])


def test_auth_errors(sim: SimServer) -> None:
    bad = VastAI(api_key="wrong", server_url=sim.url)
    with pytest.raises(requests.HTTPError) as err:
        bad.show_instances()
    assert err.value.response.status_code == 401
    assert err.value.response.json() == {"success": False, "error": "auth_error",
                                         "msg": "Invalid user key"}
    r = requests.get(f"{sim.url}/api/v0/users/current", timeout=10)
    assert r.status_code == 403
    r = requests.get(f"{sim.url}/_sim/state", timeout=10)
    assert r.status_code == 403


def test_state_and_orphans(sim: SimServer, vast: VastAI) -> None:
    iid = sim.control.create_instance("gpubot:orphan-123")
    state = sim.control.state()
    assert any(str(i["id"]) == iid and i["label"] == "gpubot:orphan-123"
               for i in state["instances"])
    assert state["offers_available"] < state["offers_total"]
    vast.destroy_instance(int(iid))
