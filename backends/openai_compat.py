"""Members that speak the OpenAI protocol (OpenAI, vLLM, SGLang, Ollama...): one aiohttp
keep-alive pool per member, bytes passed through. litellm would add milliseconds per call here.

Why aiohttp and not httpx: httpcore's AsyncConnectionPool rescans every connection (polling each
idle socket) for every queued request on each request and each release, so its cost grows with
connections x waiting requests; at 64 concurrent requests that scan took a fifth of the event
loop and throughput fell below that at 16. aiohttp's connector hands out connections from a
deque and wakes one waiter per release: constant work per request however many wait. Both were
measured side by side (bench/upstream_clients.py); the figures are in the README."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import orjson

from backends.base import Member, UpstreamError, UpstreamRequest, UpstreamResponse
from backends.pool_config import MemberConfig
from backends.sse import iter_sse_batches

DRAIN_S = 0.5


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The keep-alive pool to one member (Settings.upstream_*)."""

    max_connections: int = 100
    keepalive_s: float = 30.0


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _short(body: bytes) -> str:
    try:
        err = orjson.loads(body).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return body[:300].decode(errors="replace")


async def _drain(resp: aiohttp.ClientResponse) -> bool:
    """After [DONE], read what is left (the chunked terminator) so the connection can be
    reused; False when the upstream keeps sending."""
    if resp.content.at_eof():
        return True
    try:
        async with asyncio.timeout(DRAIN_S):
            while await resp.content.readany():
                pass
    except TimeoutError:
        return False
    return True


class OpenAICompatMember(Member):
    def __init__(self, cfg: MemberConfig, limits: HttpLimits | None = None) -> None:
        self.name = cfg.name
        self.upstream_model = cfg.model
        self._limits = limits or HttpLimits()
        self._base = (cfg.base_url or "").rstrip("/")
        # sock_read bounds each wait for bytes (the first byte, then every later chunk), as
        # httpx's read timeout did; the whole call is bounded by the proxy's deadline. The
        # wait for a free pooled connection is inside `connect`.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=cfg.timeouts.connect_s, sock_read=cfg.timeouts.first_byte_s
        )
        headers = {"content-type": "application/json", **cfg.extra_headers}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        """Made on first use: aiohttp binds a session to the running event loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections,
                limit_per_host=0,
                keepalive_timeout=self._limits.keepalive_s,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                timeout=self._timeout,
                auto_decompress=True,
                trust_env=False,
                skip_auto_headers=("user-agent",),
            )
        return self._session

    @property
    def pool_connector(self) -> aiohttp.BaseConnector | None:
        """The member's connection pool (for /metrics and the regression test)."""
        return self._session.connector if self._session is not None else None

    async def _send(self, req: UpstreamRequest) -> aiohttp.ClientResponse:
        try:
            return await self._client().post(
                f"{self._base}/{req.endpoint}", data=orjson.dumps(req.wire_body())
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            raise UpstreamError(f"cannot connect to {self._base}: {e!r}", kind="connect") from e
        except (TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise UpstreamError(f"no answer from {self._base} in time", kind="timeout") from e
        except aiohttp.ClientError as e:
            raise UpstreamError(f"upstream transport error: {e!r}", kind="protocol") from e

    @staticmethod
    def _http_error(resp: aiohttp.ClientResponse, body: bytes) -> UpstreamError:
        return UpstreamError(
            f"upstream answered {resp.status}: {_short(body)}",
            kind="http",
            status=resp.status,
            body=body,
            retry_after=_retry_after(resp.headers),
        )

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        try:
            return await resp.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise UpstreamError(
                f"no complete answer from {self._base} in time", kind="timeout"
            ) from e
        except aiohttp.ClientError as e:
            raise UpstreamError(f"upstream transport error: {e!r}", kind="protocol") from e

    async def complete(self, req: UpstreamRequest) -> UpstreamResponse:
        resp = await self._send(req)
        try:
            body = await self._read(resp)
        finally:
            resp.release()
        if resp.status >= 400:
            raise self._http_error(resp, body)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise UpstreamError("upstream sent invalid JSON", kind="protocol") from e
        if not isinstance(data, dict):
            raise UpstreamError("upstream sent a non-object JSON body", kind="protocol")
        return UpstreamResponse(content=body, data=data)

    async def stream(self, req: UpstreamRequest) -> AsyncIterator[bytes]:
        async for batch in self.stream_batches(req):
            for payload in batch:
                yield payload

    async def stream_batches(self, req: UpstreamRequest) -> AsyncIterator[list[bytes]]:
        resp = await self._send(req)
        done = False
        try:
            if resp.status >= 400:
                raise self._http_error(resp, await self._read(resp))
            try:
                async for batch in iter_sse_batches(resp.content.iter_any()):
                    yield batch
                done = await _drain(resp)
            except (TimeoutError, aiohttp.ServerTimeoutError) as e:
                raise UpstreamError("upstream stream stalled", kind="timeout") from e
            except aiohttp.ClientError as e:
                raise UpstreamError(f"upstream stream broke: {e!r}", kind="protocol") from e
        finally:
            if done or resp.status >= 400:
                resp.release()  # read to the end: the connection goes back to the pool
            else:
                resp.close()  # cut mid-stream: the connection cannot be reused

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)  # let the transports finish closing
