"""The admin web UI at /ui: server-rendered pages over the same JSON API scripts use.

`mount(app, deps)` is called by the composition root (greengate.app); the gateway never
imports this package, so the UI depends on the gateway and not the other way round."""

from web.mount import WebDeps, mount

__all__ = ["WebDeps", "mount"]
