"""spend_summaries: ledger totals per scope and UTC day, built from the existing ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 11:00:00

Budgets read these rows instead of summing a period of ledger (gpubot/db/spend.py). The
ledger stays the source of truth: upgrading fills the table from every existing entry
(``rebuild_spend_summaries``, one streamed pass over ``ledger_entries``); from then on every
ledger write upserts them in its own transaction.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "spend_summaries",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("amount_usd_e8", sa.BigInteger(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("last_entry_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "scope_id", "day"),
    )
    with op.batch_alter_table("spend_summaries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_spend_summaries_last_entry_at", ["last_entry_at"], unique=False
        )
    from gpubot.db.spend import rebuild_spend_summaries

    rebuild_spend_summaries(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("spend_summaries", schema=None) as batch_op:
        batch_op.drop_index("ix_spend_summaries_last_entry_at")
    op.drop_table("spend_summaries")
