"""Engine creation (SQLite tuned for one writer and many readers; PostgreSQL with timeouts).

Migrations are run by migrations.runner, which sits above this package."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event, text

CONNECT_TIMEOUT_S = 5


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

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
                         pool_timeout=CONNECT_TIMEOUT_S, connect_args=connect_args)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
