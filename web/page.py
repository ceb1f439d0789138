"""What every UI page shares: who is signed in, the in-process API client, rendering with
security headers, and turning API errors into pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway import GatewayError, Principal, sessions
from web import static_files
from web.client import AdminClient, ApiError
from web.templating import render

# Scripts come only from this origin (no inline script); plotly injects its own <style>.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'self'")


def secure_headers(response: Response) -> Response:
    response.headers["content-security-policy"] = CSP
    response.headers["x-frame-options"] = "DENY"
    response.headers["x-content-type-options"] = "nosniff"
    response.headers["referrer-policy"] = "same-origin"
    response.headers["cache-control"] = "no-store"
    return response


@dataclass(frozen=True, slots=True)
class Visitor:
    session: sessions.UiSession
    principal: Principal

    @property
    def read_only(self) -> bool:
        return not self.principal.is_admin


async def signed_in(request: Request) -> Visitor | None:
    s = sessions.current_session(request)
    if s is None:
        return None
    try:
        p = await request.app.state.rt.auth.authenticate_hash(s.key_hash)
    except GatewayError:  # revoked since sign-in
        sessions.store(request).delete(s.id)
        return None
    return Visitor(s, p)


def html(request: Request, template: str, context: dict[str, Any], status: int = 200,
         visitor: Visitor | None = None) -> HTMLResponse:
    base = {"request": request, "me": visitor.principal if visitor else None,
            "csrf": visitor.session.csrf if visitor else None,
            "read_only": visitor.read_only if visitor else True,
            "static": static_files.url, "plotly_url": static_files.plotly_url()}
    return secure_headers(HTMLResponse(render(template, {**base, **context}), status))


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)


Handler = Callable[[Request, Visitor, AdminClient], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A signed-in page: redirects strangers to the sign-in form and shows API errors."""

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        visitor = await signed_in(request)
        if visitor is None:
            return to_login(request)
        async with AdminClient(request.app, visitor.session.id) as api:
            try:
                return await handler(request, visitor, api)
            except ApiError as e:
                if e.status == 401:
                    return to_login(request)
                return html(request, "error.html", {"status": e.status, "message": e.message},
                            status=e.status, visitor=visitor)

    return endpoint
