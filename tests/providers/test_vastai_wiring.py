"""The composition root prepares the vast provider once per process: pace and account key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpubot.config import load_config_text
from gpubot.providers.vastai import VastAIProvider
from gpubot.providers.vastai.pace import LocalPace, RedisPace
from gpubot.settings import Settings
from gpubot.sim.server import SimServer
from gpubot.wiring import prepare_vast
from tests.fixtures.sim import running_sim
from tests.services_available import require_redis

KEY = "sk-gpubot-wiring-test"
PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bot"


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimServer]:
    with running_sim(tmp_path / "sim", monkeypatch, seed=1, api_key=KEY) as server:
        yield server


def test_embedded_broker_gets_a_local_pace_and_the_key_once(
    sim: SimServer, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home")
    config = load_config_text("[engine]\nvast_min_interval_seconds = { create = 4.5 }\n")
    for _ in range(2):  # two processes starting
        provider = VastAIProvider(api_key=KEY, server_url=sim.url)
        prepare_vast(provider, settings, config, PUBLIC)
        assert isinstance(provider.pace, LocalPace)
        assert provider.pace.intervals["create"] == 4.5
    assert [k["public_key"] for k in sim.engine.account_keys] == [PUBLIC]


def test_redis_broker_gets_a_shared_pace(sim: SimServer, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", broker_url=require_redis())
    provider = VastAIProvider(api_key=KEY, server_url=sim.url)
    prepare_vast(provider, settings, load_config_text(""), PUBLIC)
    assert isinstance(provider.pace, RedisPace)
    assert provider.pace.key_prefix.endswith(provider.pace_identity)
    assert KEY not in provider.pace.key_prefix
    other = VastAIProvider(api_key=KEY + "-other-account", server_url=sim.url)
    assert other.pace_identity != provider.pace_identity


def test_a_refused_registration_does_not_stop_startup(sim: SimServer, tmp_path: Path) -> None:
    sim.control.inject("POST", r"/ssh", 500, count=5)
    provider = VastAIProvider(api_key=KEY, server_url=sim.url, retry_attempts=1)
    prepare_vast(provider, Settings(home=tmp_path / "home"), load_config_text(""), PUBLIC)
    assert sim.engine.account_keys == []
