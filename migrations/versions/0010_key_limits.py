"""Keys as organizations use them: expiry, metadata, rate limits, rotation with a grace period;
team rate limits and the team's opt-in request log (its retention in days; null: off).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("key_metadata", sa.JSON))
        batch.add_column(sa.Column("rpm_limit", sa.Integer))
        batch.add_column(sa.Column("tpm_limit", sa.Integer))
        batch.add_column(sa.Column("previous_hash", sa.String(64)))
        batch.add_column(sa.Column("previous_valid_until", sa.DateTime(timezone=True)))
        batch.create_index("ix_api_keys_previous_hash", ["previous_hash"])
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("rpm_limit", sa.Integer))
        batch.add_column(sa.Column("tpm_limit", sa.Integer))
        batch.add_column(sa.Column("request_log_days", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("request_log_days")
        batch.drop_column("tpm_limit")
        batch.drop_column("rpm_limit")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_previous_hash")
        batch.drop_column("previous_valid_until")
        batch.drop_column("previous_hash")
        batch.drop_column("tpm_limit")
        batch.drop_column("rpm_limit")
        batch.drop_column("key_metadata")
        batch.drop_column("expires_at")
