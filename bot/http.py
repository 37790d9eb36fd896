"""The HTTP front (WSGI, werkzeug): ``POST /slack/events``, ``GET /healthz``, ``GET /metrics``.

``/slack/events`` hands the raw body and headers to Bolt, which verifies the signature
(401 on a bad or stale one) before any listener runs. The one exception is Slack's
certificate check: a form POST with ``ssl_check=1`` and no command or payload, sent unsigned
when a command's Request URL is saved, is answered 200 with an empty body as Slack's docs
require (https://docs.slack.dev/interactivity/implementing-slash-commands/, "ssl_check");
it carries nothing to act on, so nothing runs. ``/metrics`` is Prometheus text:
jobs by state, live instances, the ledger total, the outbox backlog and the provider rows
rejected by validation (a counter in the database, so every worker's ticks add to it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from slack_bolt import App, BoltRequest
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import func, select, text
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from bot.ack_gate import GATE
from gpubot.db.engine import session_scope
from gpubot.db.spend import TEAM_ID, from_e8
from gpubot.db.tables import CounterRow, InstanceRow, JobRow, MessageRow, SpendSummaryRow
from gpubot.deps import EngineDeps
from gpubot.models import JobState

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000


def metrics_text(deps: EngineDeps) -> str:
    """Prometheus exposition text of the bot's state (reads the database only)."""
    with session_scope(deps.sessions) as session:
        by_state = dict(
            session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all()
        )
        live_instances = session.scalar(
            select(func.count()).select_from(InstanceRow).where(InstanceRow.destroyed_at.is_(None))
        )
        # The team's per-day spend summaries hold every ledger entry (kept in the ledger's
        # own transaction): a few rows per day, not a scan of the ledger per scrape.
        ledger = from_e8(session.scalar(
            select(func.sum(SpendSummaryRow.amount_usd_e8)).where(
                SpendSummaryRow.scope == "team", SpendSummaryRow.scope_id == TEAM_ID
            )
        ))
        backlog = session.scalar(
            select(func.count()).select_from(MessageRow).where(MessageRow.dirty.is_(True))
        )
        rows_rejected = session.scalar(
            select(CounterRow.value).where(CounterRow.name == "provider_rows_rejected")
        )
    lines = [
        "# HELP gpubot_jobs Jobs by state.",
        "# TYPE gpubot_jobs gauge",
    ]
    for state in JobState:
        lines.append(f'gpubot_jobs{{state="{state.value}"}} {int(by_state.get(state.value, 0))}')
    lines += [
        "# HELP gpubot_live_instances Rentals not yet verified destroyed.",
        "# TYPE gpubot_live_instances gauge",
        f"gpubot_live_instances {int(live_instances or 0)}",
        "# HELP gpubot_ledger_total_usd Money recorded in the cost ledger.",
        "# TYPE gpubot_ledger_total_usd gauge",
        f"gpubot_ledger_total_usd {float(ledger or 0):.6f}",
        "# HELP gpubot_outbox_backlog Chat messages not yet delivered.",
        "# TYPE gpubot_outbox_backlog gauge",
        f"gpubot_outbox_backlog {int(backlog or 0)}",
        "# HELP gpubot_provider_rows_rejected_total Listed instance rows skipped because a field"
        " failed validation.",
        "# TYPE gpubot_provider_rows_rejected_total counter",
        f"gpubot_provider_rows_rejected_total {int(rows_rejected or 0)}",
    ]
    return "\n".join(lines) + "\n"


def _refuse(status: int, error: str) -> Response:
    return Response(json.dumps({"error": error}), status=status, mimetype="application/json")


def _payload_shape_ok(body: str) -> bool:
    """An interactivity payload Bolt can route: a JSON object with a string ``type``; ``user``,
    ``team`` and ``channel`` objects or null; ``block_actions`` with a non-empty list of
    actions that have a string ``action_id``. Slash commands (no ``payload``) pass."""
    form = parse_qs(body, keep_blank_values=True)
    if "payload" not in form:
        return True
    try:
        payload = json.loads(form["payload"][0])
    except (ValueError, IndexError):
        return False
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        return False
    for key in ("user", "team", "channel", "enterprise"):
        value = payload.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or not isinstance(value.get("id", ""), str):
            return False
    for key in _STRING_FIELDS:
        if payload.get(key) is not None and not isinstance(payload.get(key), str):
            return False
    for key in ("view", "container", "message", "state"):
        if payload.get(key) is not None and not isinstance(payload.get(key), dict):
            return False
    actions = payload.get("actions")
    if payload["type"] == "block_actions" or actions is not None:
        if not isinstance(actions, list) or not actions:
            return False
        if not all(isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions):
            return False
    return True


_STRING_FIELDS = (
    "trigger_id",
    "callback_id",
    "response_url",
    "action_ts",
    "api_app_id",
    "token",
    "message_ts",
)


def is_ssl_check(body: str) -> bool:
    """True for Slack's certificate check: form field ``ssl_check=1`` and neither a
    ``command`` nor a ``payload`` (so there is nothing a listener could do)."""
    if "ssl_check" not in body:
        return False
    form = parse_qs(body, keep_blank_values=True)
    return form.get("ssl_check") == ["1"] and "command" not in form and "payload" not in form


def _bolt_response(app: App, request: Request, signing_secret: str | None) -> Response:
    """Verify, sanity-check, then hand to Bolt. Never a 5xx for what a client sent."""
    try:
        raw = request.get_data()
    except HTTPException as exc:  # e.g. 413 for a body over MAX_BODY_BYTES
        return exc.get_response()
    body = raw.decode("utf-8", errors="replace")
    if is_ssl_check(body):
        return Response("", status=200)
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    if not (timestamp.isascii() and timestamp.isdigit()):
        return _refuse(401, "invalid request")
    if signing_secret is not None:
        verifier = SignatureVerifier(signing_secret)
        if not verifier.is_valid(
            body=body,
            timestamp=timestamp,
            signature=request.headers.get("X-Slack-Signature", ""),
        ):
            return _refuse(401, "invalid request")
        if not _payload_shape_ok(body):
            return _refuse(400, "malformed payload")
    headers: dict[str, str | list[str]] = {k.lower(): v for k, v in request.headers.items()}
    bolt_request = BoltRequest(
        body=body, query=request.query_string.decode("latin-1"), headers=headers
    )
    try:
        result = app.dispatch(bolt_request)
    except Exception:  # noqa: BLE001 - a malformed request must not become a 5xx
        logger.exception("could not dispatch a Slack request")
        return _refuse(400, "malformed request")
    if result.status >= 500 and "payload=" in body:
        # Bolt answers 500 when a payload it could not route crashed its matchers. Slack
        # never retries interactivity, and a 5xx would read as an outage: say it was ours
        # to refuse.
        logger.warning("interactivity payload refused after a Bolt error (%s)", result.status)
        return _refuse(400, "malformed payload")
    response = Response(result.body, status=result.status)
    for name, values in result.headers.items():
        for value in values if isinstance(values, list | tuple) else [values]:
            if name.lower() != "content-length":
                response.headers.add(name, value)
    return response


def make_wsgi_app(app: App, deps: EngineDeps) -> Any:
    """A WSGI callable serving the three fixed routes (``POST /slack/events``, ``GET /healthz``,
    ``GET /metrics``); anything else is 404."""
    secret = deps.settings.slack_signing_secret
    signing_secret = secret.get_secret_value() if secret is not None else None

    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = MAX_BODY_BYTES
        path, method = request.path, request.method
        if path == "/slack/events":
            if method != "POST":
                response = Response("method not allowed", status=405)
            else:
                # Answers (bot.listeners) wait while requests are being acked: acks first.
                GATE.enter()
                try:
                    response = _bolt_response(app, request, signing_secret)
                finally:
                    GATE.leave()
        else:
            response = health_response(deps, path, method)
        return response(environ, start_response)

    return wsgi


def health_response(deps: EngineDeps, path: str, method: str) -> Response:
    """``GET /healthz`` (200 ``ok`` when the database answers, else 503) and ``GET /metrics``
    (Prometheus text); anything else is 404. Shared by the HTTP front and the Socket Mode
    health server."""
    if path == "/healthz" and method == "GET":
        try:
            with session_scope(deps.sessions) as session:
                session.execute(text("SELECT 1"))
            return Response("ok\n", mimetype="text/plain")
        except Exception:  # noqa: BLE001 - health must answer, not raise
            return Response("database unavailable\n", status=503, mimetype="text/plain")
    if path == "/metrics" and method == "GET":
        return Response(
            metrics_text(deps), content_type="text/plain; version=0.0.4; charset=utf-8"
        )
    return Response("not found\n", status=404, mimetype="text/plain")


def make_health_wsgi_app(deps: EngineDeps) -> Any:
    """A WSGI callable serving only ``GET /healthz`` and ``GET /metrics`` (Socket Mode: Slack's
    requests arrive over the socket, so ``/slack/events`` is 404 here)."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        response = health_response(deps, request.path, request.method)
        return response(environ, start_response)

    return wsgi


def make_http_server(app: App, deps: EngineDeps, *, host: str, port: int) -> BaseWSGIServer:
    """A threaded werkzeug server for the WSGI app (port 0 lets the OS choose)."""
    return make_server(host, port, make_wsgi_app(app, deps), threaded=True)


def make_health_server(deps: EngineDeps, *, host: str, port: int) -> BaseWSGIServer:
    """A threaded werkzeug server for :func:`make_health_wsgi_app` (port 0: the OS chooses)."""
    return make_server(host, port, make_health_wsgi_app(deps), threaded=True)
