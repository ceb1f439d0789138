"""Fine-tuning jobs (/v1/fine_tuning/jobs): jobs, their events and checkpoints, the adapters
they produced, and the training usage charged to teams.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "fine_tuning_jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("team", sa.String(128), nullable=False),
        sa.Column("key_id", sa.Integer),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("training_file", sa.String(40), nullable=False),
        sa.Column("validation_file", sa.String(40)),
        sa.Column("suffix", sa.String(64)),
        sa.Column("fine_tuned_model", sa.String(256), nullable=False),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("lora", sa.JSON, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("metadata", sa.JSON),
        _when("created_at", nullable=False),
        _when("started_at"),
        _when("finished_at"),
        sa.Column("error", sa.JSON),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("total_steps", sa.Integer),
        sa.Column("train_loss", sa.Float),
        sa.Column("valid_loss", sa.Float),
        sa.Column("base_valid_loss", sa.Float),
        sa.Column("trained_tokens", sa.BigInteger, nullable=False),
        sa.Column("energy_j", sa.Float),
        sa.Column("energy_source", sa.String(64)),
        sa.Column("examples", sa.Integer, nullable=False),
        sa.Column("checkpoint_dir", sa.String(1024), nullable=False),
    )
    op.create_index("ix_fine_tuning_jobs_team_created", "fine_tuning_jobs", ["team", "created_at"])
    job_fk = sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE")
    op.create_table(
        "fine_tuning_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(40), job_fk, nullable=False),
        _when("created_at", nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.JSON),
    )
    op.create_index("ix_fine_tuning_events_job", "fine_tuning_events", ["job_id", "id"])
    op.create_table(
        "fine_tuning_checkpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("fine_tuning_jobs.id",
                                                         ondelete="CASCADE"), nullable=False),
        _when("created_at", nullable=False),
        sa.Column("step_number", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
    )
    op.create_index("ix_fine_tuning_checkpoints_job", "fine_tuning_checkpoints",
                    ["job_id", "step_number"])
    op.create_table(
        "fine_tuned_adapters",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("team", sa.String(128), nullable=False),
        sa.Column("base_member", sa.String(256), nullable=False),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("fine_tuning_jobs.id"), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        _when("created_at", nullable=False),
        sa.Column("valid_loss", sa.Float),
        sa.Column("base_valid_loss", sa.Float),
    )
    op.create_index("ix_fine_tuned_adapters_team", "fine_tuned_adapters", ["team"])
    op.create_table(
        "fine_tuning_usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("fine_tuning_jobs.id",
                                                         ondelete="CASCADE"), nullable=False),
        sa.Column("team", sa.String(128), nullable=False),
        sa.Column("key_id", sa.Integer),
        _when("created_at", nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("energy_j", sa.Float),
        sa.Column("energy_source", sa.String(64)),
        sa.Column("cost_usd", sa.Float),
    )
    op.create_index("ix_fine_tuning_usage_team_created", "fine_tuning_usage",
                    ["team", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_fine_tuning_usage_team_created", table_name="fine_tuning_usage")
    op.drop_table("fine_tuning_usage")
    op.drop_index("ix_fine_tuned_adapters_team", table_name="fine_tuned_adapters")
    op.drop_table("fine_tuned_adapters")
    op.drop_index("ix_fine_tuning_checkpoints_job", table_name="fine_tuning_checkpoints")
    op.drop_table("fine_tuning_checkpoints")
    op.drop_index("ix_fine_tuning_events_job", table_name="fine_tuning_events")
    op.drop_table("fine_tuning_events")
    op.drop_index("ix_fine_tuning_jobs_team_created", table_name="fine_tuning_jobs")
    op.drop_table("fine_tuning_jobs")
