"""The gateway: the OpenAI-protocol app (/v1, /admin, /health, /metrics), auth and keys,
the request path (gateway.proxy) and the runtime that wires routing, backends, telemetry and
store together. The web UI and the command line sit above it (web/, greengate/).

Other packages import these names from `gateway`. They resolve on first use, so a command
that needs only the key store (`greengate keys ...`) does not import the whole app."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GatewayError": "gateway.errors",
    "error_response": "gateway.errors",
    "Principal": "gateway.auth",
    "KeyRepo": "gateway.keys",
    "hash_key": "gateway.keys",
    "SESSION_COOKIE": "gateway.sessions",
    "SessionStore": "gateway.sessions",
    "Settings": "gateway.settings",
    "create_app": "gateway.app",
    "EventBus": "gateway.shared_state",
    "RedisLink": "gateway.shared_state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
