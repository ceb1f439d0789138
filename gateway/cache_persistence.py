"""SQL persistence of the semantic cache (`cache_entries`), so a restarted gateway starts
warm: here, next to the gateway's other stores, so routing/ never imports a table. The cache
talks to it through `routing.cache.Persistence` (`SqlPersister`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import Engine

from routing.cache import QUERY_FIELD, Entry, SemanticCache
from store import CacheEntry

log = logging.getLogger("greengate.cache")



def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _ts(dt: datetime) -> float:
    # SQLite hands back naive datetimes; they were written as UTC.
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def save_entry(engine: Engine, entry: Entry) -> None:
    """Insert or replace the entry's row (blocking: call it off the response path)."""

    row = {
        "id": entry.id,
        "team": entry.team,
        "context_hash": entry.context_hash,
        "task": entry.task,
        "embedding": (
            np.ascontiguousarray(entry.embedding, dtype="<f4").tobytes()
            if entry.embedding is not None
            else None
        ),
        "response": (
            {**entry.response, QUERY_FIELD: entry.query}
            if entry.query is not None
            else entry.response
        ),
        "member": entry.member,
        "created_at": _dt(entry.created_at),
        "expires_at": _dt(entry.expires_at),
        "hits": entry.hits,
    }
    table = CacheEntry.__table__
    name = engine.dialect.name
    with engine.begin() as conn:
        if name in ("postgresql", "sqlite"):
            if name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            stmt = insert(table).values(**row)
            update = {k: stmt.excluded[k] for k in row if k != "id"}
            conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=update))
        else:
            conn.execute(table.delete().where(table.c.id == entry.id))
            conn.execute(table.insert().values(**row))


def delete_team(engine: Engine, team: str) -> int:
    """Delete a team's rows; returns how many."""

    table = CacheEntry.__table__
    with engine.begin() as conn:
        return conn.execute(table.delete().where(table.c.team == team)).rowcount or 0


def purge_expired(engine: Engine, now: float | None = None) -> int:
    """Delete rows past their expiry; returns how many."""

    table = CacheEntry.__table__
    cutoff = _dt(time.time() if now is None else now)
    with engine.begin() as conn:
        return conn.execute(table.delete().where(table.c.expires_at <= cutoff)).rowcount or 0


def load_from_sql(
    engine: Engine, cache: SemanticCache, now: float | None = None, *, purge: bool = True
) -> int:
    """Fill `cache` with the rows that have not expired (oldest first, so when a team has more
    than the cache's bound the newest are kept); returns how many were restored. With
    `purge`, expired rows are deleted first. With a RedisStore, call it only when Redis has
    lost the cache (`store.count() == 0`): Redis outlives gateway restarts by itself, and
    every replica reloading would only reset the LRU order."""

    now = time.time() if now is None else now
    if purge:
        purge_expired(engine, now)
    table = CacheEntry.__table__
    query = sa.select(table).where(table.c.expires_at > _dt(now)).order_by(table.c.created_at)
    n = 0
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=500).execute(query):
            emb = (
                np.frombuffer(row.embedding, dtype="<f4").astype(np.float32)
                if row.embedding
                else None
            )
            response = dict(row.response)
            query = response.pop(QUERY_FIELD, None)
            entry = Entry(
                id=row.id,
                team=row.team,
                context_hash=row.context_hash,
                task=row.task,
                embedding=emb,
                response=response,
                member=row.member,
                created_at=_ts(row.created_at),
                expires_at=_ts(row.expires_at),
                hits=row.hits or 0,
                query=query if isinstance(query, str) else None,
            )
            n += cache.restore(entry, now)
    return n


class SqlPersister:
    """`routing.cache.Persistence` over SQL: saves entries on one background thread so the response
    path never waits for the database. When more than `max_pending` saves are queued (the
    database is slow or down), new ones are dropped: the cache itself still has them."""

    def __init__(self, engine: Engine, *, max_pending: int = 1000) -> None:
        self.engine = engine
        self.max_pending = max_pending
        self.dropped = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="greengate-cache-sql")

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(self.engine, *args)
        except Exception:
            log.warning("cache persistence (%s) failed", fn.__name__, exc_info=True)
        finally:
            with self._lock:
                self._pending -= 1

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._pending >= self.max_pending:
                self.dropped += 1
                return
            self._pending += 1
        self._pool.submit(self._run, fn, *args)

    def save(self, entry: Entry) -> None:
        self._submit(save_entry, entry)

    def delete_team(self, team: str) -> None:
        self._submit(delete_team, team)

    def flush(self) -> None:
        """Wait for the queued work (tests, shutdown)."""
        self._pool.submit(lambda: None).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
