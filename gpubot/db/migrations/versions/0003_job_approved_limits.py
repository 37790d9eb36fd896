"""jobs: the limits approved at submit (price ceiling in $/h, approved hours)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00

Jobs submitted before this revision keep NULL in both columns: the renting step applies no
ceiling and the running step no duration stop to them (they were approved without one).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "price_ceiling_per_hour_usd", sa.Numeric(precision=18, scale=8), nullable=True
            )
        )
        batch_op.add_column(sa.Column("approved_hours", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("approved_hours")
        batch_op.drop_column("price_ceiling_per_hour_usd")
