"""Semantic cache entries.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_entries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("team", sa.String(128), nullable=False),
        sa.Column("context_hash", sa.String(64), nullable=False),
        sa.Column("task", sa.String(64)),
        sa.Column("embedding", sa.LargeBinary),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("member", sa.String(256)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer, nullable=False),
    )
    op.create_index("ix_cache_team_expires", "cache_entries", ["team", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_cache_team_expires", table_name="cache_entries")
    op.drop_table("cache_entries")
