"""May the bot post in a channel? Checked before a launch rents anything.

A job's thread (plan, status card, results) is posted in the channel the command came from.
Slack answers ``chat.postMessage`` with ``not_in_channel`` when the bot is not a member, unless
the app holds ``chat:write.public`` and the channel is public (Slack's ``chat.postMessage``
method page, "chat:write.public" scope page). A launch there would rent a GPU whose progress
nobody sees, so launch verbs are refused unless :meth:`ChannelAccess.check` says yes.

How the answer is found:

* ``conversations.info`` (scopes ``channels:read`` for public, ``groups:read`` for private
  channels; https://docs.slack.dev/reference/methods/conversations.info) gives ``is_member``
  and ``is_private``. Slack answers ``channel_not_found`` for a private channel the bot is not
  in, so that reads as "not a member".
* The granted scopes come from the ``x-oauth-scopes`` header Slack puts on Web API responses
  (read from one ``auth.test``, https://docs.slack.dev/reference/methods/auth.test); when the
  header is absent, the bot scopes declared in ``deploy/slack-manifest.yml`` are assumed.

Answers are cached per channel: a yes for :data:`ALLOWED_TTL_SECONDS`, a no for
:data:`REFUSED_TTL_SECONDS` (short, so an invite takes effect at once on the next try).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

logger = logging.getLogger(__name__)

ALLOWED_TTL_SECONDS = 300.0
REFUSED_TTL_SECONDS = 10.0
SCOPES_TTL_SECONDS = 3600.0
MANIFEST_PATH = Path(__file__).resolve().parent.parent / "deploy" / "slack-manifest.yml"
DEFAULT_BOT_NAME = "gpubot"
PUBLIC_WRITE_SCOPE = "chat:write.public"


@dataclass(frozen=True)
class Access:
    """The verdict for one channel: ``ok``, or ``message`` telling the user what to do."""

    ok: bool
    message: str = ""


def manifest_bot_scopes(path: Path = MANIFEST_PATH) -> frozenset[str]:
    """The ``oauth_config.scopes.bot`` list of the app manifest (empty if unreadable).

    A small line reader (PyYAML is not a runtime dependency): the ``- scope`` items under the
    ``bot:`` key of ``scopes:``; trailing ``# comments`` are ignored.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return frozenset()
    scopes: set[str] = set()
    in_bot, bot_indent = False, 0
    for line in lines:
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped.strip():
            continue
        indent = len(stripped) - len(stripped.lstrip())
        if stripped.strip() == "bot:":
            in_bot, bot_indent = True, indent
            continue
        if in_bot:
            item = re.fullmatch(r"\s*-\s*([A-Za-z0-9:._-]+)\s*", stripped)
            if indent >= bot_indent and item:
                scopes.add(item.group(1))
            elif indent <= bot_indent:
                in_bot = False
    return frozenset(scopes)


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return ",".join(value) if isinstance(value, list | tuple) else str(value)
    return None


class ChannelAccess:
    """Per-process cache of "may the bot post here" answers; thread-safe.

    ``clock`` (monotonic seconds) is injectable for tests of the cache expiry.
    """

    def __init__(
        self,
        *,
        manifest_scopes: frozenset[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._manifest_scopes = manifest_scopes
        self._clock = clock
        self._lock = threading.Lock()
        self._verdicts: dict[str, tuple[float, Access]] = {}
        self._identity: tuple[float, frozenset[str], str] | None = None

    def _scopes_and_name(self, client: WebClient) -> tuple[frozenset[str], str]:
        """Granted bot scopes and the bot's user name, from one cached ``auth.test``."""
        now = self._clock()
        with self._lock:
            if self._identity is not None and now - self._identity[0] < SCOPES_TTL_SECONDS:
                return self._identity[1], self._identity[2]
        name = DEFAULT_BOT_NAME
        header: str | None = None
        try:
            response = client.auth_test()
            name = str(response.get("user") or DEFAULT_BOT_NAME)
            header = _header(response.headers, "x-oauth-scopes")
        except SlackApiError as e:
            logger.warning("auth.test failed: %s", e.response.get("error"))
        if header is not None:
            scopes = frozenset(s.strip() for s in header.split(",") if s.strip())
        else:
            scopes = (
                self._manifest_scopes
                if self._manifest_scopes is not None
                else manifest_bot_scopes()
            )
        with self._lock:
            self._identity = (now, scopes, name)
        return scopes, name

    def check(self, client: WebClient, channel: str) -> Access:
        """Whether the bot can post its thread in ``channel``; never raises.

        Yes when ``conversations.info`` says the bot is a member, or the channel is public and
        ``chat:write.public`` is granted. No (with an "invite me" message) when it is not a
        member or Slack hides the channel (``channel_not_found``). A Slack error that says
        nothing about membership (rate limit, outage, missing scope) is also a no, with a
        "try again" message, and is not cached.
        """
        now = self._clock()
        with self._lock:
            hit = self._verdicts.get(channel)
            if hit is not None and now < hit[0]:
                return hit[1]
        scopes, name = self._scopes_and_name(client)
        invite = Access(
            ok=False,
            message=(
                "I can't post in this channel, so nothing was launched: the job's progress "
                f"would have nowhere to go. Invite me with `/invite @{name}` and try again."
            ),
        )
        try:
            info = client.conversations_info(channel=channel)
        except SlackApiError as e:
            error = str(e.response.get("error") or "")
            if error == "channel_not_found":
                return self._remember(channel, invite, now)
            logger.warning("conversations.info failed for a launch: %s", error)
            hint = (
                " (the app lacks a scope to read channels; an admin should reinstall it "
                "from deploy/slack-manifest.yml)"
                if error == "missing_scope"
                else ""
            )
            return Access(
                ok=False,
                message=f"Nothing was launched: I could not check this channel{hint}. "
                "Try again in a minute.",
            )
        data = info.get("channel") or {}
        member = bool(data.get("is_member"))
        im = bool(data.get("is_im"))
        public = bool(data.get("is_channel")) and not bool(data.get("is_private"))
        allowed = member or im or (public and PUBLIC_WRITE_SCOPE in scopes)
        if allowed:
            return self._remember(channel, Access(ok=True), now)
        return self._remember(channel, invite, now)

    def _remember(self, channel: str, access: Access, now: float) -> Access:
        ttl = ALLOWED_TTL_SECONDS if access.ok else REFUSED_TTL_SECONDS
        with self._lock:
            if len(self._verdicts) > 10_000:
                self._verdicts.clear()
            self._verdicts[channel] = (now + ttl, access)
        return access
