"""Carbon and counterfactual columns on decisions; budgets.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as t:
        t.add_column(sa.Column("gco2e", sa.Float))
        t.add_column(sa.Column("counterfactual_member", sa.String(256)))
        t.add_column(sa.Column("counterfactual_cost_usd", sa.Float))
        t.add_column(sa.Column("counterfactual_energy_j", sa.Float))
    op.create_index("ix_decisions_key_created", "decisions", ["key_id", "created_at"])
    op.create_table(
        "budgets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(8), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("limit", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ux_budgets_rule", "budgets", ["scope", "subject", "metric", "period"],
                    unique=True)


def downgrade() -> None:
    op.drop_index("ux_budgets_rule", table_name="budgets")
    op.drop_table("budgets")
    op.drop_index("ix_decisions_key_created", table_name="decisions")
    with op.batch_alter_table("decisions") as t:
        t.drop_column("counterfactual_energy_j")
        t.drop_column("counterfactual_cost_usd")
        t.drop_column("counterfactual_member")
        t.drop_column("gco2e")
