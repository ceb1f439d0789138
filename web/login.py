"""Sign-in and sign-out. The key is posted once and exchanged for a session; the browser never
keeps it. The form itself is CSRF-protected by a double-submit cookie, and failed attempts
are throttled per client address."""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway import GatewayError, hash_key, sessions
from web.page import html, secure_headers, signed_in

LOGIN_COOKIE = "gg_login"


def _next(request: Request, value: str | None) -> str:
    # Only back into the UI: an open redirect would turn sign-in into a phishing aid.
    if value and value.startswith("/ui") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui"


def _cookie_flags(request: Request) -> dict:
    return {"httponly": True, "samesite": "strict", "secure": request.url.scheme == "https"}


def _form(request: Request, error: str | None = None, status: int = 200,
          next_url: str | None = None) -> Response:
    token = secrets.token_urlsafe(32)
    r = html(request, "login.html", {"login_csrf": token, "error": error,
                                     "next": _next(request, next_url)}, status=status)
    r.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/ui/login", **_cookie_flags(request))
    return r


async def login_form(request: Request) -> Response:
    if await signed_in(request) is not None:
        return RedirectResponse(_next(request, request.query_params.get("next")), 303)
    return _form(request, next_url=request.query_params.get("next"))


async def login(request: Request) -> Response:
    form = await request.form()
    next_url = str(form.get("next") or "")
    sent, expected = str(form.get("csrf") or ""), request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not sessions.same_origin(request) or not hmac.compare_digest(
            sent.encode(), expected.encode()):
        return _form(request, "The sign-in form expired; please try again.", 400, next_url)
    store = sessions.store(request)
    client = request.client.host if request.client else "unknown"
    wait = store.throttle.retry_after(client)
    if wait > 0:
        r = _form(request, f"Too many failed sign-ins; try again in {wait:.0f} s.", 429,
                  next_url)
        r.headers["retry-after"] = str(int(wait) + 1)
        return r
    key = str(form.get("key") or "").strip()
    try:
        if not key:
            raise GatewayError(401, "Enter a key.")
        key_hash = hash_key(key)
        await request.app.state.rt.auth.authenticate_hash(key_hash)
    except GatewayError as e:
        store.throttle.failed(client)
        return _form(request, f"Sign-in failed: {e.message}", 401, next_url)
    # A success does not clear the address's failures: signing in with one's own team key
    # must not buy more guesses at the admin key.
    store.delete(request.cookies.get(sessions.SESSION_COOKIE))  # never reuse an old id
    session = store.create(key_hash)
    r = secure_headers(RedirectResponse(_next(request, next_url), 303))
    r.set_cookie(sessions.SESSION_COOKIE, session.id, path="/", **_cookie_flags(request))
    r.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return r


async def logout(request: Request) -> Response:
    s = sessions.current_session(request)
    form = await request.form()
    if s is not None:
        if not hmac.compare_digest(str(form.get("csrf") or "").encode(), s.csrf.encode()):
            raise GatewayError(403, "Missing or wrong CSRF token.", code="csrf_failed")
        sessions.store(request).delete(s.id)
    r = secure_headers(RedirectResponse("/ui/login", 303))
    r.delete_cookie(sessions.SESSION_COOKIE, path="/")
    return r
