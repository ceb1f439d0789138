"""Alembic migrations up and down, on SQLite and on the PostgreSQL server; models match them."""

from __future__ import annotations

import subprocess
import sys
import time
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


def test_replicas_starting_together_upgrade_once(pg_url: str) -> None:
    """Several processes upgrading one fresh schema at once (replicas started together) all
    succeed: each waits on the schema's migration lock, so none races another's CREATE TABLE.
    The test holds that lock first, so the waiting is observed rather than left to timing."""
    schema = pg_url.rsplit("%3D", 1)[1]
    code = "import sys; from migrations import runner; runner.upgrade(sys.argv[1])"
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                         {"k": f"greengate-migrations:{schema}"})
            procs = [subprocess.Popen([sys.executable, "-c", code, pg_url],
                                      cwd=Path(__file__).parent.parent,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                     for _ in range(3)]
            time.sleep(4.0)  # ample for an unlocked upgrade to have created its tables
            assert all(p.poll() is None for p in procs), "an upgrade ran without the lock"
            assert _tables(pg_url) == set()
        outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    finally:
        engine.dispose()
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert _tables(pg_url) == TABLES
