"""instances: BIGINT traffic counters and pull_error; counters table

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.alter_column(
            "bytes_up_billed", existing_type=sa.Integer(), type_=sa.BigInteger(),
            existing_nullable=False,
        )
        batch_op.alter_column(
            "bytes_down_billed", existing_type=sa.Integer(), type_=sa.BigInteger(),
            existing_nullable=False,
        )
        batch_op.add_column(sa.Column("pull_error", sa.Text(), nullable=True))
    op.create_table(
        "counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("counters")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("pull_error")
        batch_op.alter_column(
            "bytes_down_billed", existing_type=sa.BigInteger(), type_=sa.Integer(),
            existing_nullable=False,
        )
        batch_op.alter_column(
            "bytes_up_billed", existing_type=sa.BigInteger(), type_=sa.Integer(),
            existing_nullable=False,
        )
