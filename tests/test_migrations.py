"""Alembic migrations up and down, on SQLite and on the PostgreSQL server; models match them."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from migrations import runner as migrate
from store.schema import Base

TABLES = {"teams", "api_keys", "decisions", "policies", "feedback", "bandit_state",
          "budgets", "cache_entries", "fine_tuning_jobs", "fine_tuning_events",
          "fine_tuning_checkpoints", "fine_tuned_adapters", "fine_tuning_usage",
          "files", "file_chunks", "responses", "batches", "batch_items", "request_logs"}


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(url: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/m.db"
    return request.getfixturevalue("pg_url")


def test_up_down_up(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert _tables(db_url) == TABLES
    assert _diff(db_url) == []  # the ORM models and the migrations agree
    migrate.downgrade(db_url)
    assert _tables(db_url) == set()
    migrate.upgrade(db_url)
    assert _tables(db_url) == TABLES
    migrate.upgrade(db_url)  # idempotent at head


def test_decision_indexes_exist(db_url: str) -> None:
    migrate.upgrade(db_url)
    engine = sa.create_engine(db_url)
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("decisions")}
    engine.dispose()
    assert {"ix_decisions_created_at", "ix_decisions_team_created",
            "ix_decisions_member_created"} <= names
