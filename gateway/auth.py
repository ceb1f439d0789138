"""Who is calling: the admin key or a virtual key, resolved from a short-lived cache."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass

from starlette.requests import Request

from gateway.errors import GatewayError
from gateway.keys import KeyInfo, KeyRepo, hash_key


@dataclass(frozen=True, slots=True)
class Principal:
    is_admin: bool
    team: str | None
    key_id: int | None
    key_prefix: str | None
    allowed_models: tuple[str, ...] | None  # None: every member

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


class Authenticator:
    def __init__(self, repo: KeyRepo, admin_key: str, cache_ttl_s: float) -> None:
        self._repo = repo
        self._admin_hash = hash_key(admin_key).encode()
        self._ttl = cache_ttl_s
        # Cached by hash so revocation on another replica is seen within the TTL.
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}

    def forget(self, key_id: int | None = None) -> None:
        if key_id is None:
            self._cache.clear()
            return
        for h, (_, info) in list(self._cache.items()):
            if info is not None and info.id == key_id:
                del self._cache[h]

    async def _lookup(self, key_hash: str) -> KeyInfo | None:
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        info = await asyncio.to_thread(self._repo.find_by_hash, key_hash)
        if len(self._cache) > 100_000:  # bound memory against random-key floods
            self._cache.clear()
        self._cache[key_hash] = (now, info)
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
        return Principal(False, info.team, info.id, info.prefix, info.allowed_models)
