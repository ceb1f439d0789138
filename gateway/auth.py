"""Who is calling: the admin key or a virtual key, resolved from memory.

Every key (revoked ones too) is held in memory and refreshed in the background after
`cache_ttl_s`, so no request waits on the database and traffic goes on while it is away (the
last known good keys). A key this replica has not seen yet is looked up once; a revocation
made here is seen at once, one made on another replica within the TTL. With the database away
and `database_outage: fail_closed`, requests get 503 with Retry-After instead."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request

from gateway.errors import GatewayError
from gateway.keys import KeyInfo, KeyRepo, hash_key
from store import is_connection_error

log = logging.getLogger("greengate.auth")
MISSES_KEPT = 100_000  # unknown hashes remembered, against random-key floods
RETRY_AFTER_S = 5


@dataclass(frozen=True, slots=True)
class Principal:
    is_admin: bool
    team: str | None
    key_id: int | None
    key_prefix: str | None
    allowed_models: tuple[str, ...] | None  # None: every member
    rpm_limit: int | None = None  # the key's own rate limits (None: none)
    tpm_limit: int | None = None

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


def bearer(request: Request) -> str | None:
    value = request.headers.get("authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return request.headers.get("x-api-key") or request.headers.get("api-key")


def database_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "The database is unavailable; retry shortly.",
        code="database_unavailable",
        headers={"retry-after": str(RETRY_AFTER_S)},
    )


class Authenticator:
    def __init__(
        self, repo: KeyRepo, admin_key: str, cache_ttl_s: float, fail_closed: bool = False
    ) -> None:
        self._repo = repo
        self._admin_hash = hash_key(admin_key).encode()
        self._ttl = cache_ttl_s
        self._fail_closed = fail_closed
        self._keys: dict[str, KeyInfo] | None = None
        self._loaded_at = 0.0
        self._misses: dict[str, float] = {}
        self._refresh: asyncio.Task | None = None
        self.database_ok = True

    async def load(self) -> None:
        """Read every key; keep the last good set when the database does not answer."""
        try:
            keys = await asyncio.to_thread(self._repo.all_by_hash)
        except Exception as e:
            if not is_connection_error(e):
                log.exception("reading the keys failed")
            elif self.database_ok:
                log.warning(
                    "keys: the database does not answer; serving the %d in memory",
                    len(self._keys or {}),
                )
            self.database_ok = False
            self._loaded_at = time.monotonic()  # next try after the TTL, not per request
            return
        self._keys, self._misses = keys, {}
        self._loaded_at = time.monotonic()
        self.database_ok = True

    def _maybe_refresh(self) -> None:
        due = time.monotonic() - self._loaded_at >= (
            self._ttl if self.database_ok else min(self._ttl, 1.0)
        )
        if due and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.get_running_loop().create_task(self.load())

    def forget(self, key_id: int | None = None) -> None:
        """This replica changed a key: drop it from memory so the next use reads it again."""
        if key_id is None or self._keys is None:
            self._loaded_at = 0.0
            if self._keys is not None:
                self._keys = {}
            return
        self._keys = {h: k for h, k in self._keys.items() if k.id != key_id}

    async def _lookup(self, key_hash: str) -> KeyInfo | None:
        if self._keys is None:
            await self.load()
            if self._keys is None:
                raise database_unavailable()
        else:
            self._maybe_refresh()
        if not self.database_ok and self._fail_closed:
            raise database_unavailable()
        info = self._keys.get(key_hash)
        if info is not None:
            return info
        missed = self._misses.get(key_hash)
        if missed is not None and time.monotonic() - missed < self._ttl:
            return None
        try:  # created since the last refresh (here or on another replica)?
            info = await asyncio.to_thread(self._repo.find_by_hash, key_hash)
        except Exception as e:
            if is_connection_error(e):
                self.database_ok = False
                raise database_unavailable() from None  # it may be a valid key: not a 401
            raise
        if info is None:
            if len(self._misses) > MISSES_KEPT:
                self._misses.clear()
            self._misses[key_hash] = time.monotonic()
        else:
            self._keys[key_hash] = info
        return info

    async def authenticate(self, request: Request) -> Principal:
        secret = bearer(request)
        if not secret:
            raise GatewayError(
                401,
                "Missing API key: send 'Authorization: Bearer <greengate key>'.",
                code="missing_api_key",
            )
        return await self.authenticate_hash(hash_key(secret))

    async def authenticate_hash(self, h: str) -> Principal:
        """The principal of the key whose SHA-256 is `h` (web sessions keep only the hash)."""
        if hmac.compare_digest(h.encode(), self._admin_hash):
            return Principal(True, None, None, "admin", None)
        info = await self._lookup(h)
        # Virtual keys are found by their SHA-256: a lookup on a hash leaks nothing usable about
        # the secret through timing, unlike a byte-by-byte compare of the secret itself.
        if info is None:
            raise GatewayError(401, "Invalid API key.", code="invalid_api_key")
        if info.revoked_at is not None:
            raise GatewayError(401, "This API key has been revoked.", code="revoked_api_key")
        now = datetime.now(UTC)
        if info.expires_at is not None and info.expires_at <= now:
            raise GatewayError(401, f"This API key expired at {info.expires_at.isoformat()}.",
                               code="expired_api_key")
        if info.grace_until is not None and info.grace_until <= now:
            raise GatewayError(401, "This API key was rotated; the old secret stopped working "
                               f"at {info.grace_until.isoformat()}. Use the new one.",
                               code="rotated_api_key")
        return Principal(False, info.team, info.id, info.prefix, info.allowed_models,
                         info.rpm_limit, info.tpm_limit)
