"""Fixtures for the Slack surface: a fake Web API over HTTP, engine deps on SQLite in
tmp_path, a fixed-offer provider, an in-memory object store, and signed-request helpers."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from sqlalchemy import select
from werkzeug.test import Client

from gpubot.config import BotConfig, load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow
from gpubot.deps import EngineDeps
from gpubot.models import AccountInfo, InstanceObservation, LaunchSpec, Offer, Requirements
from gpubot.settings import Settings
from gpubot.storage.base import StoredObject
from tests.fixtures.sim import sim  # noqa: F401 - fixture re-export
from tests.fixtures.slack_fake import SlackFake

BOT_TOKEN = "xoxb-fake-bot-token-1234"
SIGNING_SECRET = "s3cr3t-signing-secret-for-tests"
ADMIN, ADMIN2, ALICE, MALLORY = "UADMIN1", "UADMIN2", "UALICE1", "UMALLORY"
CHANNEL = "CGPU0001"

CONFIG_TOML = f"""
[roles]
admins = ["{ADMIN}", "{ADMIN2}"]
allowed_users = ["{ALICE}"]
approval_above_price_per_hour_usd = 2.0
approval_above_estimate_usd = 25
per_user_max_live_jobs = 50
per_channel_max_live_jobs = 50
"""


def make_offer(offer_id: str, gpu: str, price: str, min_bid: str, ram: float = 24) -> Offer:
    return Offer(
        offer_id=offer_id,
        gpu_name=gpu,
        num_gpus=1,
        gpu_ram_gb=ram,
        price_per_hour_usd=Decimal(price),
        min_bid_per_hour_usd=Decimal(min_bid),
        storage_per_gb_month_usd=Decimal("0.1"),
        upload_per_gb_usd=Decimal("0.01"),
        download_per_gb_usd=Decimal("0.01"),
        reliability=0.99,
        cuda_max=12.4,
        compute_cap=890,
        dlperf=50.0,
        datacenter=True,
        verified=True,
        host_id="h" + offer_id,
        machine_id="m" + offer_id,
        disk_space_gb=200,
        geolocation="EU",
        inet_down_mbps=500,
    )


OFFERS = [
    make_offer("101", "RTX 4090", "0.40", "0.20"),
    make_offer("102", "RTX 3090", "0.30", "0.15"),
    make_offer("103", "H100 SXM", "3.50", "3.40", ram=80),
]


class FixedOffersProvider:
    """Provider port over a fixed market; counts searches; rents nothing."""

    name = "fixed"

    def __init__(self, offers: list[Offer]) -> None:
        self.offers = offers
        self.searches = 0

    def search_offers(self, requirements: Requirements, *, interruptible: bool) -> list[Offer]:
        self.searches += 1
        return list(self.offers)

    def create_instance(self, offer: Offer, spec: LaunchSpec) -> str:
        raise AssertionError("bot tests never rent")

    def observe(self, provider_id: str) -> InstanceObservation | None:
        return None

    def list_instances(self) -> list[InstanceObservation]:
        return []

    def destroy(self, provider_id: str) -> None:
        return None

    def stop(self, provider_id: str) -> None:
        return None

    def start(self, provider_id: str) -> None:
        return None

    def set_label(self, provider_id: str, label: str) -> None:
        return None

    def attach_ssh_key(self, provider_id: str, public_key: str) -> None:
        return None

    def account(self) -> AccountInfo:
        return AccountInfo(credit_usd=Decimal(100))

    def charges(self) -> list[dict[str, object]]:
        return []


class MemoryStore:
    """ObjectStore port in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def presign_put(
        self, key: str, *, expires_seconds: int = 3600, sha256: str | None = None
    ) -> str:
        return f"memory://{key}"

    def presign_get(self, key: str, *, expires_seconds: int = 3600) -> str:
        return f"memory://{key}"

    def list(self, prefix: str) -> list[StoredObject]:
        items = sorted(self.objects.items())
        return [StoredObject(k, len(v)) for k, v in items if k.startswith(prefix)]

    def put_bytes(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def get_bytes(self, key: str) -> bytes:
        return self.objects[key]

    def url_for_display(self, key: str) -> str:
        return f"memory://{key}"


class Kicks:
    def __init__(self) -> None:
        self.count = 0

    def kick(self) -> None:
        self.count += 1


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def slack() -> Iterator[SlackFake]:
    fake = SlackFake(token=BOT_TOKEN, post_interval_seconds=0.05).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def config() -> BotConfig:
    return load_config_text(CONFIG_TOML)


@pytest.fixture
def provider() -> FixedOffersProvider:
    return FixedOffersProvider(OFFERS)


def make_settings(home: Path, api_url: str = "http://127.0.0.1:9/api/") -> Settings:
    return Settings(
        GPUBOT_HOME=home,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=api_url,
        GPUBOT_DATABASE_URL=f"sqlite:///{home / 'gpubot.db'}",
    )


@pytest.fixture
def deps(
    tmp_path: Path, slack: SlackFake, config: BotConfig, provider: FixedOffersProvider
) -> EngineDeps:
    from gpubot.wiring import build_engine_deps

    settings = make_settings(tmp_path / "home", slack.url)
    return build_engine_deps(
        settings, config=config, provider=provider, store=MemoryStore(), enqueuer=Kicks()
    )


@pytest.fixture
def http(deps: EngineDeps) -> Client:
    from bot.app import build_app
    from bot.http import make_wsgi_app

    app = build_app(deps, settings=deps.settings)
    return Client(make_wsgi_app(app, deps))


# -- signed requests -----------------------------------------------------------------------


def sign(
    body: str, *, timestamp: int | None = None, secret: str = SIGNING_SECRET
) -> dict[str, str]:
    """The headers Slack sends: v0 HMAC-SHA256 over ``v0:{ts}:{raw body}``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def command_body(
    text: str, *, user: str = ALICE, channel: str = CHANNEL, trigger: str = "13345.7890.abcd",
    response_url: str = "http://127.0.0.1:9/webhook",
) -> str:
    return urlencode(
        {
            "token": "deprecated",
            "team_id": "T0FAKE",
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "gpu",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/gpu",
            "text": text,
            "api_app_id": "A0GPUBOT",
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger,
        }
    )


def action_body(
    action_id: str, value: str, *, user: str, channel: str = CHANNEL,
    response_url: str = "http://127.0.0.1:9/webhook", from_home: bool = False,
) -> str:
    """A block_actions payload as Slack sends it for a button in a message in ``channel``,
    or, ``from_home``, on the App Home: a view (no channel, no message, no response_url)."""
    payload: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": "T0FAKE", "domain": "fake"},
        "user": {"id": user, "team_id": "T0FAKE"},
        "api_app_id": "A0GPUBOT",
        "token": "deprecated",
        "trigger_id": "999.888.777",
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": f"approval:{value}",
                "value": value,
                "action_ts": "1700000002.000000",
            }
        ],
    }
    if from_home:
        payload["container"] = {"type": "view", "view_id": "V0HOME01"}
        payload["view"] = {"id": "V0HOME01", "type": "home", "blocks": []}
    else:
        payload["channel"] = {"id": channel, "name": "gpu"}
        payload["container"] = {
            "type": "message", "message_ts": "1700000001.000001", "channel_id": channel,
        }
        payload["message"] = {"ts": "1700000001.000001", "text": "x"}
        payload["response_url"] = response_url
    return "payload=" + quote(json.dumps(payload))


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# -- ack-first and channel-access helpers (additions) ----------------------------------------


class GatedOffersProvider(FixedOffersProvider):
    """Fixed market whose searches block until ``gate`` is set (at most ``timeout_s``): a vast
    search that is still running while the bot must already have acked."""

    def __init__(self, offers: list[Offer], timeout_s: float = 10.0) -> None:
        super().__init__(offers)
        self.gate = threading.Event()
        self.timeout_s = timeout_s

    def search_offers(self, requirements: Requirements, *, interruptible: bool) -> list[Offer]:
        self.gate.wait(self.timeout_s)
        return super().search_offers(requirements, interruptible=interruptible)


def wait_until(predicate: Callable[[], bool], *, what: str, timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def shown_to_user(ack_text: str, posts: list[dict[str, Any]]) -> list[str]:
    """The messages one slash command leaves in front of the user: the ack's message, then
    each response_url post applied in order (``replace_original`` replaces the last shown,
    ``delete_original`` removes it, anything else adds a message)."""
    shown = [ack_text] if ack_text else []
    for post in posts:
        if post.get("delete_original"):
            if shown:
                shown.pop()
        elif post.get("replace_original") and shown:
            shown[-1] = str(post.get("text", ""))
        else:
            shown.append(str(post.get("text", "")))
    return shown


def all_jobs(deps: EngineDeps) -> list[JobRow]:
    """Every job row, detached."""
    with session_scope(deps.sessions) as session:
        return list(session.scalars(select(JobRow)))


def post_signed(http: Client, body: str, extra: dict[str, str] | None = None) -> tuple[int, str]:
    """POST a form body to /slack/events signed as Slack would; (status, response text)."""
    headers = {**FORM, **sign(body), **(extra or {})}
    response = http.post("/slack/events", data=body, headers=headers)
    return response.status_code, response.get_data(as_text=True)


def webhook_posts(slack: SlackFake, path: str) -> list[dict[str, object]]:
    """What the bot posted to the fake's response_url ``path``, in order."""
    return [p.params for p in list(slack.webhook_log) if p.path == path]
