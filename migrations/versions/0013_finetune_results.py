"""Fine-tuning jobs: the ids of their result files (the per-step metrics CSV, OpenAI's
result_files).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as b:
        b.add_column(sa.Column("result_files", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as b:
        b.drop_column("result_files")
