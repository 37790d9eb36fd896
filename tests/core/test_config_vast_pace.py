"""``[engine] vast_min_interval_seconds``: the per-endpoint pace of vast.ai calls."""

from __future__ import annotations

import pytest

from gpubot.config import load_config_text
from gpubot.errors import ConfigError


def test_default_is_empty_so_the_pace_defaults_apply() -> None:
    assert dict(load_config_text("").engine.vast_min_interval_seconds) == {}


def test_intervals_are_read() -> None:
    config = load_config_text("[engine]\nvast_min_interval_seconds = { create = 4.5, list = 2 }\n")
    assert dict(config.engine.vast_min_interval_seconds) == {"create": 4.5, "list": 2.0}


@pytest.mark.parametrize(
    "value", ["{ creat = 1.0 }", "{ create = -1 }", "{ create = 'fast' }", "3"]
)
def test_bad_intervals_name_the_key(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(f"[engine]\nvast_min_interval_seconds = {value}\n")
    assert "vast_min_interval_seconds" in str(info.value)
