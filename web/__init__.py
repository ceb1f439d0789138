"""The admin web UI at /ui: server-rendered pages over the same JSON API scripts use."""

from web.routes import router

__all__ = ["router"]
