"""Members served through litellm: every provider that needs request translation
(Anthropic, Bedrock, Vertex, Gemini...). litellm is imported on first use, never at start-up."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from backends.base import Member, UpstreamError, UpstreamRequest, UpstreamResponse
from backends.pool_config import MemberConfig
from extras import require


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = require("litellm", "providers", "the litellm member")
    litellm.suppress_debug_info = True
    return litellm


def _as_upstream_error(e: Exception) -> UpstreamError:
    name = type(e).__name__
    status = getattr(e, "status_code", None)
    if "Timeout" in name:
        return UpstreamError(f"litellm: {e}", kind="timeout")
    if "APIConnectionError" in name and status in (None, 500):
        return UpstreamError(f"litellm: {e}", kind="connect")
    body = orjson.dumps({"error": {"message": str(e), "type": name, "param": None, "code": None}})
    return UpstreamError(f"litellm: {e}", kind="http", status=int(status or 502), body=body)


class LiteLLMMember(Member):
    def __init__(self, cfg: MemberConfig) -> None:
        self.name = cfg.name
        self.upstream_model = cfg.model
        self._cfg = cfg

    def _kwargs(self, req: UpstreamRequest) -> dict:
        cfg = self._cfg
        kw: dict[str, Any] = {k: v for k, v in req.wire_body().items() if k != "model"}
        kw["model"] = cfg.model
        kw["num_retries"] = 0  # greengate retries and falls back itself
        kw["timeout"] = cfg.timeouts.total_s
        if cfg.base_url:
            kw["api_base"] = cfg.base_url
        if cfg.api_key_env and (key := os.environ.get(cfg.api_key_env)):
            kw["api_key"] = key
        if cfg.extra_headers:
            kw["extra_headers"] = cfg.extra_headers
        return kw

    async def _call(self, req: UpstreamRequest) -> Any:
        litellm = _litellm()
        kw = self._kwargs(req)
        try:
            if req.endpoint == "chat/completions":
                return await litellm.acompletion(**kw)
            if req.endpoint == "completions":
                return await litellm.atext_completion(**kw)
            return await litellm.aembedding(**kw)
        except Exception as e:  # litellm maps every provider's errors to its own classes
            raise _as_upstream_error(e) from e

    async def complete(self, req: UpstreamRequest) -> UpstreamResponse:
        resp = await self._call(req)
        data = resp.model_dump(exclude_none=True)
        data.pop("_hidden_params", None)
        return UpstreamResponse(content=orjson.dumps(data), data=data)

    async def stream(self, req: UpstreamRequest) -> AsyncIterator[bytes]:
        chunks = await self._call(req)
        try:
            async for chunk in chunks:
                data = chunk.model_dump(exclude_none=True)
                data.pop("_hidden_params", None)
                yield orjson.dumps(data)
        except UpstreamError:
            raise
        except Exception as e:
            raise _as_upstream_error(e) from e
