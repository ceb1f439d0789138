"""The pages' only data path: the JSON API, called in-process with the visitor's session, so a
page can show nothing the same person could not fetch from /admin or /v1/reports."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import httpx
from starlette.types import ASGIApp

from gateway import SESSION_COOKIE


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminClient:
    def __init__(self, app: ASGIApp, session_id: str) -> None:
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://greengate.internal",
            headers={"cookie": f"{SESSION_COOKIE}={session_id}"}, timeout=30)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None
                        ) -> None:
        await self._client.aclose()

    async def get(self, path: str, **params: Any) -> Any:
        if any(seg in (".", "..") for seg in path.split("/")):
            # URL normalisation would send these to another endpoint than the page meant.
            raise ApiError(404, "Not found.")
        clean = {k: v for k, v in params.items() if v not in (None, "")}
        r = await self._client.get(path, params=clean)
        if r.is_redirect:
            raise ApiError(404, "Not found.")
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:300]
            raise ApiError(r.status_code, message)
        return r.json()

    async def get_or_none(self, path: str, **params: Any) -> Any:
        """Like get, but a 404 is an answer (None), not an error."""
        try:
            return await self.get(path, **params)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def many(self, *calls: tuple[str, dict[str, Any]]) -> list[Any]:
        return list(await asyncio.gather(*(self.get(p, **q) for p, q in calls)))
