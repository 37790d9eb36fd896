"""search_body: Requirements -> VastAI.search_offers kwargs, and the wire body the SDK sends."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from vastai import VastAI

from gpubot.models import Requirements
from gpubot.providers.vastai.query import search_body, search_filters


def test_defaults_are_explicit_and_cheapest_first() -> None:
    body = search_body(Requirements(), interruptible=False)
    assert body["type"] == "on-demand"
    assert body["order"] == "dph+"
    assert body["limit"] == 200
    assert body["storage"] == 20.0
    assert body["no_default"] is True
    assert body["query"] == {
        "external": {"eq": False},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "verified": {"eq": True},
        "num_gpus": {"eq": 1},
        "reliability": {"gte": 0.95},
        "disk_space": {"gte": 20.0},
    }


def test_every_requirement_becomes_a_filter() -> None:
    req = Requirements(
        gpu_names=("RTX 4090", "A100 PCIE"),
        num_gpus=2,
        min_gpu_ram_gb=24,
        min_cuda=12.4,
        min_compute_cap=890,
        min_reliability=0.98,
        max_price_per_hour_usd=Decimal("1.25"),
        datacenter_only=True,
        disk_gb=80,
        verified_only=True,
        min_inet_down_mbps=500,
        blocked_host_ids=frozenset({"555", "12"}),
    )
    q = search_filters(req)
    assert q["gpu_name"] == {"in": ["RTX 4090", "A100 PCIE"]}  # spaces, not the `_` spelling
    assert q["num_gpus"] == {"eq": 2}
    assert q["gpu_ram"] == {"gte": 24000.0}  # GB -> MB, vast's x1000
    assert q["cuda_max_good"] == {"gte": 12.4}
    assert q["compute_cap"] == {"gte": 890}
    assert q["reliability"] == {"gte": 0.98}
    assert q["dph_total"] == {"lte": 1.25}
    assert q["datacenter"] == {"eq": True}
    assert q["verified"] == {"eq": True}
    assert q["disk_space"] == {"gte": 80.0}
    assert q["inet_down"] == {"gte": 500.0}
    assert q["host_id"] == {"notin": [12, 555]}
    json.dumps(q)  # everything is JSON-serialisable (no Decimal)


def test_optional_filters_are_left_out() -> None:
    q = search_filters(Requirements(verified_only=False))
    for key in (
        "verified",
        "gpu_name",
        "gpu_ram",
        "cuda_max_good",
        "compute_cap",
        "dph_total",
        "datacenter",
        "inet_down",
        "host_id",
    ):
        assert key not in q


def test_interruptible_searches_bid_prices() -> None:
    assert search_body(Requirements(), interruptible=True, limit=5)["type"] == "bid"
    assert search_body(Requirements(), interruptible=True, limit=5)["limit"] == 5
    with pytest.raises(ValueError):
        search_body(Requirements(), interruptible=True, limit=0)


# --- the wire body vastai 1.9.1 actually sends for these kwargs ------------------------------


class _Capture(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        length = int(self.headers.get("Content-Length") or 0)
        _Capture.bodies.append(json.loads(self.rfile.read(length)))
        payload = b'{"offers": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def capture_url() -> Iterator[str]:
    _Capture.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wire_body_has_no_sdk_defaults_we_did_not_ask_for(capture_url: str) -> None:
    sdk = VastAI(api_key="k", server_url=capture_url, retry=1)
    req = Requirements(
        gpu_names=("RTX 4090",),
        verified_only=False,
        disk_gb=50,
        max_price_per_hour_usd=Decimal("0.5"),
    )
    assert sdk.search_offers(**search_body(req, interruptible=True, limit=7)) == []
    (body,) = _Capture.bodies
    assert "verified" not in body  # the SDK's dict defaults would have forced it
    assert body["type"] == "bid"
    assert body["order"] == [["dph_total", "asc"]]
    assert body["limit"] == 7
    assert body["allocated_storage"] == 50.0
    assert body["gpu_name"] == {"in": ["RTX 4090"]}
    assert body["dph_total"] == {"lte": 0.5}
    assert body["rentable"] == {"eq": True}
    assert body["external"] == {"eq": False}
