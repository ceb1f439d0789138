"""The application as served: the gateway (/v1, /admin, /health, /metrics) with the web UI
mounted on it. The gateway does not import the UI; this module, the composition root, joins
them, so `web -> gateway` is the only edge between the two."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

import web
from backends import PoolConfig
from gateway import Settings
from gateway import create_app as create_gateway


def create_app(
    settings: Settings, pool_config: PoolConfig, admin_key: str, extractor: Any | None = None
) -> FastAPI:
    """The gateway app with the UI at /ui (what `greengate serve` and the tests run)."""
    app = create_gateway(settings, pool_config, admin_key, extractor)
    web.mount(app, web.WebDeps(sessions=app.state.sessions))
    return app
