"""Fixtures for the worker runtime tests: the simulator and the Slack Web API fake."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.sim import sim  # noqa: F401 - fixture re-export
from tests.fixtures.slack_fake import SlackFake

BOT_TOKEN = "xoxb-worker-test-token-5678"


@pytest.fixture
def slack() -> Iterator[SlackFake]:
    """The Slack Web API fake on 127.0.0.1 (OS-chosen port), accepting ``BOT_TOKEN``."""
    fake = SlackFake(token=BOT_TOKEN).start()
    try:
        yield fake
    finally:
        fake.stop()
