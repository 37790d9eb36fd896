"""The Bolt app: built once per process from settings and the engine's dependencies.

``build_app`` makes no Web API call when SLACK_API_URL is not slack.com (tests, proxies): the
``auth.test`` Bolt needs is deferred to the first request. The app's WebClient retries 429s
(RateLimitErrorRetryHandler); it is used only for short interactive calls (views.publish,
file uploads after an ack). Outbox delivery uses its own client that never sleeps
(``bot.delivery``).

Every listener acks at once and the answer runs afterwards (``bot.listeners``): in a Celery
worker (``answers="queue"``, what ``gpubot serve`` uses: the ack enqueues the answer by task
name through ``send_task``), or in this process (``answers="inline"``, the default: a Bolt lazy
function). The app runs with ``process_before_response=True``: Bolt then runs the ack function
in the request's own thread and returns its response as soon as it returns (the 3 s deadline
never waits on the executor), and hands each lazy function to ``listener_executor``
(https://docs.slack.dev/tools/bolt-python/concepts/lazy-listeners/). That executor has
:data:`ANSWER_WORKERS` threads: answers that wait on a slow vast search queue there, acks do
not; in queue mode it also answers what the broker refused. The same setting is right for
Socket Mode (the envelope is acknowledged when the ack function returns).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.answers import SendTask
from bot.listeners import AnswerMode, register
from gpubot.deps import EngineDeps
from gpubot.errors import ConfigError
from gpubot.settings import Settings

logger = logging.getLogger(__name__)

ANSWER_WORKERS = 10
"""Threads answering acknowledged requests. Each holds at most one database connection at a
time, and vast searches run outside sessions: 10 matches the PostgreSQL pool (5 + 5 overflow)."""


def is_slack_com(api_url: str) -> bool:
    host = (urlparse(api_url).hostname or "").lower()
    return host == "slack.com" or host.endswith(".slack.com") or host.endswith(".slack-gov.com")


def make_web_client(settings: Settings) -> WebClient:
    """A WebClient on SLACK_BOT_TOKEN / SLACK_API_URL that retries 429s twice."""
    if settings.slack_bot_token is None:
        raise ConfigError("is not set: the Slack app needs its bot token", key="SLACK_BOT_TOKEN")
    client = WebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=15,
    )
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=2))
    return client


def build_app(
    deps: EngineDeps,
    *,
    settings: Settings,
    answers: AnswerMode = "inline",
    send_task: SendTask | None = None,
) -> App:
    """The Bolt App with the /gpu command, button actions, App Home and mentions registered.

    ``answers="queue"`` enqueues each command's and click's answer through ``send_task``
    (``bot.answers.SendTask``) for a worker; ``"inline"`` answers in this process.

    Raises:
        ValueError: ``answers="queue"`` without ``send_task``.
        ConfigError: SLACK_BOT_TOKEN is missing, or SLACK_SIGNING_SECRET is missing in HTTP
            mode (Socket Mode, i.e. SLACK_APP_TOKEN set, needs no signing secret).
    """
    client = make_web_client(settings)
    signing = settings.slack_signing_secret
    secret = signing.get_secret_value() if signing is not None else ""
    socket_mode = settings.slack_app_token is not None
    if not secret and not socket_mode:
        raise ConfigError(
            "is not set: HTTP mode verifies every request with it", key="SLACK_SIGNING_SECRET"
        )
    if answers == "queue" and send_task is None:
        raise ValueError("answers='queue' needs send_task")
    executor = ThreadPoolExecutor(max_workers=ANSWER_WORKERS, thread_name_prefix="gpubot-answer")
    app = App(
        client=client,
        signing_secret=secret or None,
        request_verification_enabled=bool(secret),
        token_verification_enabled=is_slack_com(settings.slack_api_url),
        process_before_response=True,
        listener_executor=executor,
        logger=logging.getLogger("bot.bolt"),
    )
    register(app, deps, answers=answers, send_task=send_task, fallback_executor=executor)
    return app
