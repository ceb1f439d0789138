"""Team policies, feedback and bandit state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("team", sa.String(128), primary_key=True),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(32), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("team", sa.String(128)),
        sa.Column("key_id", sa.Integer),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("reward", sa.Float),
        sa.Column("member", sa.String(256)),
        sa.Column("applied", sa.Boolean, nullable=False),
        sa.Column("comment", sa.Text),
    )
    op.create_table(
        "bandit_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("algorithm", sa.String(32), nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("updates", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bandit_state")
    op.drop_table("feedback")
    op.drop_table("policies")
