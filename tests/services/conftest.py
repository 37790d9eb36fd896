"""Shared fixtures for service tests: EngineDeps on a temporary SQLite DB (Alembic head),
an in-memory provider, a steppable clock and an ops channel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpubot.services import ops
from gpubot.services.deps import EngineDeps
from gpubot.testing.fakes import FakeClock, FakeProvider, sqlite_deps

OPS_CHANNEL = "C-OPS"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def ops_channel() -> Iterator[str]:
    ops.configure(OPS_CHANNEL)
    try:
        yield OPS_CHANNEL
    finally:
        ops.configure(None)


@pytest.fixture
def deps(tmp_path: Path, provider: FakeProvider, clock: FakeClock, ops_channel: str) -> EngineDeps:
    return sqlite_deps(tmp_path / "home", provider=provider, clock=clock)
