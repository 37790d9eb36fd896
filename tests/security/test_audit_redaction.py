"""A launch's parameters reach the audit trail redacted, like every other audit entry.

The launch goes through the dispatcher (as a Slack command would) with a secret-looking value
in a free-text parameter; no audit row may keep it as typed.
"""

from __future__ import annotations

import json
import secrets

import pytest
from sqlalchemy import select

from gpubot import redact
from gpubot.chat.dispatch import handle_command
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow
from gpubot.deps import EngineDeps
from tests.bot.conftest import ALICE, CHANNEL


def _audit_text(deps: EngineDeps) -> str:
    """Every audit row (actor, action, target, reason, detail) as one JSON text."""
    with session_scope(deps.sessions) as session:
        return json.dumps(
            [
                [e.actor, e.action, e.target, e.reason, e.detail]
                for e in session.scalars(select(AuditEventRow).order_by(AuditEventRow.id))
            ]
        )


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("xoxb-" + secrets.token_hex(12), id="slack-bot-token"),
        pytest.param(
            "aws_secret_access_key=" + secrets.token_urlsafe(30), id="aws-secret-assignment"
        ),
        pytest.param("AWS" + secrets.token_urlsafe(30), id="registered-aws-secret"),
    ],
)
def test_a_token_looking_parameter_is_not_kept_raw_in_the_audit_trail(
    deps: EngineDeps, secret: str
) -> None:
    if secret.startswith("AWS"):
        # What start-up does with the bot's own AWS secret (AWS_SECRET_ACCESS_KEY).
        redact.register_secret(secret)
    reply = handle_command(
        deps,
        f'/gpu notes note="{secret}"',
        user=ALICE,
        channel=CHANNEL,
        request_key=f"audit-redaction-{secret[:8]}",
    )
    assert reply.ok and reply.job_id, reply.text
    stored = _audit_text(deps)
    assert '"launch"' in stored and reply.job_id in stored
    assert secret not in stored
    secret_part = secret.rpartition("=")[2] if "=" in secret else secret
    assert secret_part not in stored
