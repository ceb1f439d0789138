"""Mounting the UI on a gateway app: its routes, and the sign-in store it shares with /admin."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from gateway import SessionStore
from web.routes import router


@dataclass(frozen=True)
class WebDeps:
    """What the UI takes from the app it is mounted on. `sessions`: the sign-ins the UI
    creates; the gateway's /admin accepts them too, so both read the same store."""

    sessions: SessionStore


def mount(app: FastAPI, deps: WebDeps) -> None:
    """Add /ui to `app`. The runtime (auth, the admin API) is reached per request through
    `request.app.state.rt`, which exists only once the app has started."""
    app.state.sessions = deps.sessions
    app.include_router(router)
