"""Browser sessions for the admin UI, and the one place that says who is calling /admin.

A session is an opaque random id in an HttpOnly, SameSite=Strict cookie; the server keeps what
it stands for (the SHA-256 of the key signed in with, never the key) and a CSRF token. Scripts
keep sending the bearer key and never see any of this. Sessions live in this process's memory:
a restart signs everyone out, and replicas behind a load balancer need sticky sessions."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from gateway.auth import Principal
from gateway.errors import GatewayError

SESSION_COOKIE = "gg_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDLE_S = 30 * 60.0
ABSOLUTE_S = 12 * 3600.0
MAX_SESSIONS = 10_000
MAX_PER_KEY = 20
MAX_THROTTLED_CLIENTS = 100_000


@dataclass(slots=True)
class UiSession:
    id: str
    key_hash: str
    csrf: str
    created: float
    last_seen: float


class SessionStore:
    def __init__(self, idle_s: float = IDLE_S, absolute_s: float = ABSOLUTE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self._clock = clock
        self._sessions: dict[str, UiSession] = {}
        self.throttle = LoginThrottle(clock=clock)

    def create(self, key_hash: str) -> UiSession:
        """A new session for this key. One key holds at most MAX_PER_KEY (its oldest goes), and
        a store full of live sessions refuses new ones rather than evicting other people's:
        otherwise any key holder could sign every administrator out by signing in en masse."""
        now = self._clock()
        own = [s for s in self._sessions.values() if s.key_hash == key_hash]
        if len(own) >= MAX_PER_KEY:
            del self._sessions[min(own, key=lambda s: s.created).id]
        if len(self._sessions) >= MAX_SESSIONS:
            self._purge(now)
            if len(self._sessions) >= MAX_SESSIONS:
                raise GatewayError(503, "Too many signed-in sessions; try again later.",
                                   code="sessions_full", headers={"retry-after": "60"})
        s = UiSession(secrets.token_urlsafe(32), key_hash, secrets.token_urlsafe(32), now, now)
        self._sessions[s.id] = s
        return s

    def get(self, sid: str | None) -> UiSession | None:
        """The live session with this id (its idle timer restarts), else None."""
        if not sid:
            return None
        s = self._sessions.get(sid)
        if s is None:
            return None
        now = self._clock()
        if self._expired(s, now):
            del self._sessions[sid]
            return None
        s.last_seen = now
        return s

    def delete(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, s: UiSession, now: float) -> bool:
        return now - s.last_seen > self.idle_s or now - s.created > self.absolute_s

    def _purge(self, now: float) -> None:
        for sid in [sid for sid, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[sid]


def store(request: Request) -> SessionStore:
    return request.app.state.sessions


def current_session(request: Request) -> UiSession | None:
    return store(request).get(request.cookies.get(SESSION_COOKIE))


def _sends_key(request: Request) -> bool:
    h = request.headers
    return bool(h.get("authorization") or h.get("x-api-key") or h.get("api-key"))


async def caller(request: Request) -> Principal:
    """The bearer key when one is sent (scripts, unchanged); else the UI session, whose unsafe
    methods must echo the session's CSRF token in X-CSRF-Token."""
    auth = request.app.state.rt.auth
    if _sends_key(request) or SESSION_COOKIE not in request.cookies:
        return await auth.authenticate(request)
    s = current_session(request)
    if s is None:
        raise GatewayError(401, "The web session has expired; sign in again.",
                           code="session_expired")
    if request.method not in SAFE_METHODS and not (same_origin(request) and hmac.compare_digest(
            request.headers.get(CSRF_HEADER, "").encode(), s.csrf.encode())):
        raise GatewayError(403, "Missing or wrong X-CSRF-Token for this session.",
                           code="csrf_failed")
    try:
        return await auth.authenticate_hash(s.key_hash)
    except GatewayError:
        store(request).delete(s.id)  # the key was revoked: its sessions end with it
        raise


def same_origin(request: Request) -> bool:
    """No Origin header (older clients) or one naming this host. A second line behind the CSRF
    token: a sibling subdomain that can plant cookies still cannot make the browser lie here."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def via_session(request: Request) -> bool:
    """Whether caller() answers from the web session rather than from a key."""
    return not _sends_key(request) and SESSION_COOKIE in request.cookies


class LoginThrottle:
    """A few failed sign-ins per client are fine; a stream of them is someone guessing."""

    def __init__(self, max_failures: int = 10, window_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may now. While the table is full
        (an address flood) unknown clients wait too: failing closed beats forgetting counts."""
        now = self._clock()
        if client not in self._failures and len(self._failures) >= MAX_THROTTLED_CLIENTS:
            self._purge(now)
            if len(self._failures) >= MAX_THROTTLED_CLIENTS:
                return self.window_s
        recent = [t for t in self._failures.get(client, ()) if now - t < self.window_s]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return self.window_s - (now - recent[0]) if len(recent) >= self.max_failures else 0.0

    def failed(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= MAX_THROTTLED_CLIENTS:
            return  # retry_after already refuses unknown clients while the table is full
        self._failures.setdefault(client, []).append(self._clock())

    def _purge(self, now: float) -> None:
        for client in [c for c, ts in self._failures.items() if now - ts[-1] >= self.window_s]:
            del self._failures[client]
