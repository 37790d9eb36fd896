"""The audit verb: ``/gpu audit [n]``, the newest audit events (admins only, redacted)."""

from __future__ import annotations

from gpubot.chat import permissions
from gpubot.chat.reply import Reply
from gpubot.commands import AuditCommand
from gpubot.db.engine import session_scope
from gpubot.deps import EngineDeps
from gpubot.notify import audit
from gpubot.redact import redact
from gpubot.render import chat as texts
from gpubot.render import slack as slack_render


def audit_list(deps: EngineDeps, command: AuditCommand, user: str) -> Reply:
    """The ``command.limit`` newest events, newest first.

    Raises:
        PermissionDenied: ``user`` is not an admin.
    """
    permissions.check_admin(deps.config, user, "read the audit trail")
    with session_scope(deps.sessions) as session:
        events = [
            texts.AuditLine(at=r.at, actor=r.actor, action=r.action, target=r.target,
                            reason=r.reason)
            for r in audit.recent(session, command.limit)
        ]
    text = redact(texts.audit_text(events))
    return Reply(text=text, blocks=slack_render.text_blocks(text))
