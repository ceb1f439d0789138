"""Opt-in request logs: a team's prompts and answers, PII-redacted before storage, expiring.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_logs",
        sa.Column("id", sa.String(32), primary_key=True),  # the decision row's id
        sa.Column("team", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("answer", sa.Text),
        sa.Column("redactions", sa.JSON),
    )
    op.create_index("ix_request_logs_team_created", "request_logs", ["team", "created_at"])
    op.create_index("ix_request_logs_expires", "request_logs", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_request_logs_expires", table_name="request_logs")
    op.drop_index("ix_request_logs_team_created", table_name="request_logs")
    op.drop_table("request_logs")
