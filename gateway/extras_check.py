"""Before anything starts: is every optional part this configuration uses installed?

A pool with a `kind: engine` member needs [engine], a `kind: litellm` member [providers], a
PostgreSQL URL [postgres], a Redis URL [redis]. Asked once at start-up, so a missing extra is
one line ("the litellm member 'x' needs `pip install greengate[providers]` ...") and not a
traceback from the first request that reaches it."""

from __future__ import annotations

from backends import PoolConfig
from extras import require
from gateway.settings import Settings


def check(settings: Settings, pool_config: PoolConfig) -> None:
    """Raise extras.MissingExtra for the first optional part that is used and missing."""
    for cfg in pool_config.pool:
        if cfg.kind == "engine":
            require("backends.engine_backend", "engine", f"the engine member {cfg.name!r}")
        elif cfg.kind == "litellm":
            require("litellm", "providers", f"the litellm member {cfg.name!r}")
    if settings.database_url.startswith("postgresql"):
        require("psycopg", "postgres", "a PostgreSQL database (GREENGATE_DATABASE_URL)")
    if settings.redis_url:
        require("redis", "redis", "shared state through Redis (GREENGATE_REDIS_URL)")
    if settings.otlp_endpoint:
        require("opentelemetry.exporter.otlp.proto.http", "otel",
                "OpenTelemetry export (GREENGATE_OTLP_ENDPOINT)")
