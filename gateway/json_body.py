"""JSON bodies on the API routes whatever Content-Type the client forgot to set.

`curl -d '{...}'` labels its body `application/x-www-form-urlencoded`, and FastAPI then hands
the handler raw bytes, which failed as "request: Input should be a valid dictionary". Every
body route under /v1 and /admin takes JSON (file uploads are multipart and keep their type),
so a body sent with no Content-Type or with curl's default one is read as JSON: this ASGI
middleware relabels the request before routing. A body that is not JSON then fails as JSON,
with a message that names the header (`not_json_message`). Only the headers are touched, never
the body, so the hot path pays one header scan.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]

JSON_PREFIXES = ("/v1/", "/admin/")
_RELABEL = (b"", b"application/x-www-form-urlencoded")
_BODY_METHODS = ("POST", "PUT", "PATCH")


def not_json_message(detail: str) -> str:
    """The 4xx message for a body that does not parse as JSON."""
    return (f"The request body is not valid JSON ({detail}). Send a JSON body with the header "
            "`Content-Type: application/json`.")


class JsonBodyByDefault:
    """Relabels /v1 and /admin request bodies with no Content-Type, or curl's form default,
    as `application/json`."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...] = JSON_PREFIXES) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["method"] in _BODY_METHODS
                and scope["path"].startswith(self.prefixes)):
            headers = scope["headers"]
            ctype = b""
            for name, value in headers:
                if name == b"content-type":
                    ctype = value.split(b";", 1)[0].strip().lower()
                    break
            if ctype in _RELABEL:
                scope = dict(scope)
                scope["headers"] = [(n, v) for n, v in headers if n != b"content-type"]
                scope["headers"].append((b"content-type", b"application/json"))
        await self.app(scope, receive, send)
