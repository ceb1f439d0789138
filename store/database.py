"""Engine creation (SQLite tuned for one writer and many readers; PostgreSQL with timeouts).

Migrations are run by migrations.runner, which sits above this package."""

from __future__ import annotations

import json
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event, text

CONNECT_TIMEOUT_S = 5
_ORJSON_OPTS = orjson.OPT_NON_STR_KEYS


def json_dumps(value: Any) -> str:
    """JSON columns' serializer: orjson, with the standard library where orjson refuses.

    Why: the decision writer's batch INSERT spent about 40% of its CPU in `json.dumps` for the
    JSON columns (11 of 27 ms per 500 rows), on a thread holding the interpreter lock, and the
    event loop waited for it: the periodic flush was the concurrency-1 latency tail. orjson
    writes the same JSON in a tenth of the time; it refuses integers past 64 bits and some
    types the standard library also refuses or writes (NaN becomes null)."""
    try:
        return orjson.dumps(value, option=_ORJSON_OPTS).decode()
    except TypeError:
        return json.dumps(value)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               json_serializer=json_dumps)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets the decision writer insert while admin reads run.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # A database that stops answering (no refusal, just silence) must not hold a request,
    # the writer or shutdown for the operating system's TCP timeout.
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") and (
        "connect_timeout" not in url) else {}
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                         pool_timeout=CONNECT_TIMEOUT_S, connect_args=connect_args,
                         json_serializer=json_dumps)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
