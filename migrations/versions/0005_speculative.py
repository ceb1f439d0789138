"""Speculative decoding figures per decision (bundled-engine members that speculate).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("speculative", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("speculative")
