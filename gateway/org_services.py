"""What organizations expect of a gateway, built once at start-up next to the proxy: the file
store, stored responses, batches with their carbon-aware runner, per-team settings, the rate
limiter, the opt-in request logs and OpenTelemetry export. Kept together so the runtime gains
one start and one stop step, not seven."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine

from backends import PoolConfig
from gateway.auth import Principal
from gateway.batches import BatchService, ItemResult
from gateway.files import FileStore
from gateway.ratelimit import MemoryWindows, RateLimiter, RedisWindows
from gateway.request_logs import RequestLogs
from gateway.response_store import ResponseStore
from gateway.settings import Settings
from gateway.team_settings import TeamSettingsCache
from gateway.tracing import Tracing
from telemetry import make_feed

log = logging.getLogger("greengate.org")
PURGE_EVERY_S = 3600.0


@dataclass
class OrgServices:
    files: FileStore
    responses: ResponseStore
    batches: BatchService
    team_settings: TeamSettingsCache
    limiter: RateLimiter
    request_logs: RequestLogs
    tracing: Tracing | None
    _purge: asyncio.Task | None = None

    @classmethod
    async def start(cls, settings: Settings, pool_config: PoolConfig, engine: Engine,
                    proxy: Any) -> OrgServices:
        files = FileStore(engine, settings.files_max_bytes)
        teams = TeamSettingsCache(engine, settings.key_cache_ttl_s)
        await asyncio.to_thread(teams.load)
        windows = (RedisWindows(settings.redis_url, settings.ratelimit_prefix)
                   if settings.redis_url else MemoryWindows())
        tracing = (Tracing(settings.otlp_endpoint, settings.otlp_headers,
                           schedule_delay_ms=settings.otlp_delay_ms)
                   if settings.otlp_endpoint else None)
        org = cls(files=files, responses=ResponseStore(engine, settings.responses_ttl_s),
                  batches=BatchService(engine, files, make_feed(pool_config.carbon),
                                       _executor(proxy),
                                       concurrency=settings.batch_concurrency),
                  team_settings=teams, limiter=RateLimiter(windows),
                  request_logs=RequestLogs(engine, teams), tracing=tracing)
        proxy.org = org
        org.batches.start(settings.batch_tick_s)
        org._purge = asyncio.get_running_loop().create_task(org._purge_loop())
        return org

    async def _purge_loop(self) -> None:
        """Expired files, stored responses and request logs go once an hour."""
        while True:
            await asyncio.sleep(PURGE_EVERY_S)
            for name, step in (("files", self.files.purge_expired),
                               ("responses", self.responses.purge_expired),
                               ("request logs", self.request_logs.purge_expired)):
                try:
                    n = await asyncio.to_thread(step)
                    if n:
                        log.info("purged %d expired %s", n, name)
                except Exception:
                    log.exception("purging expired %s failed", name)

    async def stop(self) -> None:
        await self.batches.stop()
        if self._purge is not None:
            self._purge.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._purge
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)


def _executor(proxy: Any):  # type: ignore[no-untyped-def]
    """A batch line through the proxy's own path (routing, cache, safety, budgets, limits,
    one decision row)."""

    async def execute(principal: Principal, endpoint: str, body: dict[str, Any]) -> ItemResult:
        t0 = time.perf_counter()
        resp, row = await proxy.serve_body(principal, endpoint.removeprefix("/v1/"), body)
        try:
            data = orjson.loads(resp.body)
        except (orjson.JSONDecodeError, AttributeError):
            data = {"error": {"message": "no JSON answer", "type": "api_error"}}
        rid = (row or {}).get("id") or uuid.uuid4().hex
        log.debug("batch request %s: %d in %.0f ms", rid, resp.status_code,
                  (time.perf_counter() - t0) * 1000)
        return ItemResult(resp.status_code, data, rid, (row or {}).get("energy_j"),
                          (row or {}).get("energy_source"))

    return execute
