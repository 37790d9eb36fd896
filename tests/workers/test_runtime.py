"""``workers.runtime.deliverer()`` in one process: it wires the process on first use.

A process whose first task is a delivery must build its EngineDeps (the same lazy path as
``deps()``) instead of caching "no Slack"; a failure to build is raised and not remembered;
``install()`` (the demo's and tests' injection) still decides which deps are used.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import select

from app.worker import slack_deliverer
from bot.delivery import SlackDeliverer
from gpubot.db.engine import session_scope
from gpubot.db.tables import MessageRow
from gpubot.errors import ConfigError
from gpubot.notify import outbox
from gpubot.sim.server import SimServer
from tests.fixtures.slack_fake import SlackFake
from tests.workers.conftest import BOT_TOKEN
from workers import runtime


@pytest.fixture
def fresh_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: SimServer, slack: SlackFake
) -> None:
    """This process as a worker child that has built nothing yet, configured by environment
    (SQLite in tmp_path, the simulator, the Slack fake), with the Slack deliverer factory the
    composition root installs (``app.worker``); restored afterwards."""
    for name in ("_deps", "_deliverer", "_deliverer_deps"):
        monkeypatch.setattr(runtime, name, None, raising=False)
    monkeypatch.setattr(runtime, "_deliverer_factory", slack_deliverer)
    monkeypatch.chdir(tmp_path)
    for name in ("GPUBOT_CONFIG", "GPUBOT_BROKER_URL", "GPUBOT_SSH_KEY", "SLACK_APP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GPUBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GPUBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'gpubot.db'}")
    monkeypatch.setenv("GPUBOT_S3_BUCKET", "gpubot-runtime-test")
    monkeypatch.setenv("VAST_URL", sim.url)
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_API_URL", slack.url)


@pytest.mark.usefixtures("fresh_process")
def test_first_delivery_builds_the_deps_and_a_failure_is_not_cached(
    monkeypatch: pytest.MonkeyPatch, sim: SimServer, slack: SlackFake
) -> None:
    # given no VAST_API_KEY: building fails, and that failure is raised, not cached
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    with pytest.raises(ConfigError):
        runtime.deliverer()
    assert runtime._deps is None

    # when the configuration is fixed, the next delivery wires the process itself
    monkeypatch.setenv("VAST_API_KEY", sim.api_key)
    sender = runtime.deliverer()

    # then it is a Slack deliverer on the deps deps() returns, kept for later calls
    assert isinstance(sender, SlackDeliverer)
    assert sender.deps is runtime.deps()
    assert runtime.deliverer() is sender
    with session_scope(sender.deps.sessions) as session:
        outbox.post_parent(session, channel="CRUNTIME1", text="hello")
    assert sender.deliver_once() == 1
    assert [m.text for m in slack.top_level("CRUNTIME1")] == ["hello"]
    with session_scope(sender.deps.sessions) as session:
        assert [r.dirty for r in session.scalars(select(MessageRow))] == [False]


@pytest.mark.usefixtures("fresh_process")
def test_install_decides_the_deps_and_slack_off_means_none(sim: SimServer) -> None:
    # given deps built on first use
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VAST_API_KEY", sim.api_key)
        built = runtime.deps()
    first = runtime.deliverer()
    assert first is not None and first.deps is built

    # when other deps are installed, the deliverer follows them
    injected = dataclasses.replace(built)
    runtime.install(injected)
    second = runtime.deliverer()
    assert second is not None and second is not first and second.deps is injected

    # and with no SLACK_BOT_TOKEN in the installed settings there is no deliverer
    no_slack = dataclasses.replace(
        built, settings=built.settings.model_copy(update={"slack_bot_token": None})
    )
    runtime.install(no_slack)
    assert runtime.deliverer() is None
