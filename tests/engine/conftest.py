"""Fakes-backed EngineDeps for these tests (see tests/fixtures/fake_deps.py), and the
simulator over HTTP for the tests that drive the real vast adapter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpubot.sim.server import SimServer
from tests.fixtures.fake_deps import OPS_CHANNEL, clock, deps, ops_channel, provider

SIM_API_KEY = "sk-gpubot-engine-tests"

__all__ = ["OPS_CHANNEL", "SIM_API_KEY", "clock", "deps", "ops_channel", "provider", "sim"]


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimServer]:
    """The simulator on a free port, real time, seed 3, answering ``SIM_API_KEY``."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = SimServer(home=tmp_path / "sim", port=0, seed=3, speed=1.0, api_key=SIM_API_KEY)
    server.start()
    try:
        yield server
    finally:
        server.stop()
