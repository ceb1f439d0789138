"""Replica placement per decision: the replicas a request ran on and any migration between
them (members with several endpoints, backends/replicas.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("replicas", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("replicas")
