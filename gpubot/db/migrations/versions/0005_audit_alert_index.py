"""audit_events: an index on (action, target, at) for budget enforcement's alert lookups

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 13:00:00

Every tick, enforcement reads the ``budget_alert`` events of the scopes it checks since the
earliest period start (gpubot/governance/enforce.py). With only the ``at`` index that read
walks every audit event of the period (launches, commands, stops ...), so the tick grew with
the audit trail; with this index it reads the alert events alone.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_events_action_target_at", "audit_events", ["action", "target", "at"]
    )


def downgrade() -> None:
    op.drop_index("ix_audit_events_action_target_at", table_name="audit_events")
