"""Fakes-backed EngineDeps for these tests (see tests/fixtures/fake_deps.py), and the
simulator over HTTP for the tests that drive the real vast adapter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpubot.sim.server import SimServer
from tests.fixtures.fake_deps import OPS_CHANNEL, clock, deps, ops_channel, provider
from tests.fixtures.sim import running_sim

SIM_API_KEY = "sk-gpubot-engine-tests"

__all__ = ["OPS_CHANNEL", "SIM_API_KEY", "clock", "deps", "ops_channel", "provider", "sim"]


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimServer]:
    """The simulator on a free port, real time, seed 3, answering ``SIM_API_KEY``."""
    with running_sim(
        tmp_path / "sim", monkeypatch, seed=3, speed=1.0, api_key=SIM_API_KEY
    ) as server:
        yield server
