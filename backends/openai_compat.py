"""Members that speak the OpenAI protocol (OpenAI, vLLM, SGLang, Ollama...): plain httpx, one
shared connection pool, bytes passed through. litellm would add milliseconds per call here."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import orjson

from backends.base import Member, UpstreamError, UpstreamRequest, UpstreamResponse
from backends.pool_config import MemberConfig
from backends.sse import iter_sse_data


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
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


class OpenAICompatMember(Member):
    def __init__(self, cfg: MemberConfig, client: httpx.AsyncClient) -> None:
        self.name = cfg.name
        self.upstream_model = cfg.model
        self._client = client
        self._base = (cfg.base_url or "").rstrip("/")
        self._timeout = httpx.Timeout(
            connect=cfg.timeouts.connect_s,
            read=cfg.timeouts.first_byte_s,
            write=cfg.timeouts.connect_s,
            pool=cfg.timeouts.connect_s,
        )
        headers = {"content-type": "application/json", **cfg.extra_headers}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._headers = headers

    def _request(self, req: UpstreamRequest) -> httpx.Request:
        return self._client.build_request(
            "POST",
            f"{self._base}/{req.endpoint}",
            content=orjson.dumps(req.wire_body()),
            headers=self._headers,
            timeout=self._timeout,
        )

    async def _send(self, req: UpstreamRequest, stream: bool) -> httpx.Response:
        try:
            return await self._client.send(self._request(req), stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            raise UpstreamError(f"cannot connect to {self._base}: {e!r}", kind="connect") from e
        except httpx.TimeoutException as e:
            raise UpstreamError(f"no answer from {self._base} in time", kind="timeout") from e
        except httpx.HTTPError as e:
            raise UpstreamError(f"upstream transport error: {e!r}", kind="protocol") from e

    @staticmethod
    def _http_error(resp: httpx.Response, body: bytes) -> UpstreamError:
        return UpstreamError(
            f"upstream answered {resp.status_code}: {_short(body)}",
            kind="http",
            status=resp.status_code,
            body=body,
            retry_after=_retry_after(resp),
        )

    async def complete(self, req: UpstreamRequest) -> UpstreamResponse:
        resp = await self._send(req, stream=False)
        body = resp.content
        if resp.status_code >= 400:
            raise self._http_error(resp, body)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise UpstreamError("upstream sent invalid JSON", kind="protocol") from e
        if not isinstance(data, dict):
            raise UpstreamError("upstream sent a non-object JSON body", kind="protocol")
        return UpstreamResponse(content=body, data=data)

    async def stream(self, req: UpstreamRequest) -> AsyncIterator[bytes]:
        resp = await self._send(req, stream=True)
        try:
            if resp.status_code >= 400:
                raise self._http_error(resp, await resp.aread())
            try:
                async for payload in iter_sse_data(resp.aiter_raw()):
                    yield payload
            except httpx.TimeoutException as e:
                raise UpstreamError("upstream stream stalled", kind="timeout") from e
            except httpx.HTTPError as e:
                raise UpstreamError(f"upstream stream broke: {e!r}", kind="protocol") from e
        finally:
            await resp.aclose()
