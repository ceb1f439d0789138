"""Alembic environment: the URL comes from the config migrations.runner builds; the tables
from store.schema (the bottom package, which imports nothing of ours)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from store import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(
            connection=conn, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            if conn.dialect.name == "postgresql":
                # Replicas started together on a fresh database would otherwise each find it
                # empty and race to create the same tables; the second waits here, then finds
                # the version table at head. Keyed by schema, so unrelated schemas don't queue.
                conn.execute(text("SELECT pg_advisory_xact_lock("
                                  "hashtext('greengate-migrations:' || current_schema()))"))
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
