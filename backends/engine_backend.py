"""The bundled engine as a pool member: the same two calls as a remote provider, answered from a
local checkpoint, with exact usage and, where a meter exists, measured energy per request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from backends import engine_openai as fmt
from backends.base import Member, UpstreamError, UpstreamRequest, UpstreamResponse
from backends.engine.checkpoint import write_tiny_checkpoint
from backends.engine.engine import (
    Engine,
    EngineClosed,
    EngineConfig,
    QueueFull,
    RequestStream,
    TokenEvent,
)
from backends.engine.finetune.coserve import CoServeConfig
from backends.engine.spec import SpeculativeConfig
from backends.pool_config import (
    BUILTIN_ENGINE_MODEL,
    RANDOM_WEIGHTS_TAG,
    EngineOptions,
    MemberConfig,
)
from telemetry import EnergyMeter

log = logging.getLogger("greengate.engine")


def resolve_checkpoint(model: str, state_dir: Path) -> Path:
    """A checkpoint folder, or the built-in random one, written on first use (no download)."""
    if model == BUILTIN_ENGINE_MODEL:
        path = Path(state_dir) / "models" / BUILTIN_ENGINE_MODEL
        if not (path / "config.json").exists():
            log.info("writing the built-in %s (random weights) to %s", BUILTIN_ENGINE_MODEL,
                     path)
            write_tiny_checkpoint(path, family="llama", size="small")
        return path
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
    return path


def engine_config(opts: EngineOptions) -> EngineConfig:
    spec = None
    if opts.speculative is not None:
        s = opts.speculative
        spec = SpeculativeConfig(method=s.method, max_k=s.max_k, adaptive=s.adaptive,
                                 ngram_min=s.ngram_min, ngram_max=s.ngram_max,
                                 draft_model=s.draft_model, exit_layer=s.exit_layer)
    return EngineConfig(
        device=opts.device, dtype=opts.dtype, block_size=opts.block_size,
        max_num_seqs=opts.max_num_seqs, token_budget=opts.token_budget,
        max_waiting=opts.max_waiting, cpu_kv_bytes=int(opts.kv_cache_gb * 2**30),
        gpu_memory_fraction=opts.gpu_memory_fraction, prefix_caching=opts.prefix_caching,
        speculative=spec, max_loras=opts.max_loras,
        coserve=CoServeConfig(itl_slo_s=None if opts.train_itl_slo_ms is None
                              else opts.train_itl_slo_ms / 1000))


class EngineMember(Member):
    def __init__(self, cfg: MemberConfig, state_dir: Path, meter: EnergyMeter | None) -> None:
        self.name = cfg.name
        self.opts = cfg.engine or EngineOptions()
        self.checkpoint = resolve_checkpoint(cfg.model, state_dir)
        # A stored model name, not a path: rows and /v1/models should not leak local folders.
        self.upstream_model = self.checkpoint.name
        self.random_weights = cfg.model == BUILTIN_ENGINE_MODEL or RANDOM_WEIGHTS_TAG in cfg.tags
        self.engine = Engine.from_checkpoint(self.checkpoint, engine_config(self.opts),
                                             meter=meter)
        # One sequence can hold at most the whole KV cache: a smaller cache than the model's
        # context makes that the window, so longer requests get a clear 400 up front.
        kv_tokens = self.engine.num_blocks * self.engine.blocks.block_size
        self.context_window = min(cfg.context_window or self.engine.max_model_len, kv_tokens)
        log.info("engine member %s: %s on %s, %.1fM parameters, %s attention, KV %d blocks%s",
                 self.name, self.checkpoint, self.engine.device, self.engine.num_params / 1e6,
                 self.engine.attention_name, self.engine.num_blocks,
                 " (RANDOM weights: output is noise)" if self.random_weights else "")

    @property
    def num_params(self) -> int:
        return self.engine.num_params

    def _parse(self, req: UpstreamRequest) -> fmt.EngineRequest:
        return fmt.parse(req.endpoint, req.body, self.engine.tokenizer,
                         context_window=self.context_window,
                         default_max_tokens=self.opts.default_max_tokens)

    def _events(self, er: fmt.EngineRequest, adapter: str | None = None) -> RequestStream:
        # Only passed when set: the base path stays the call it always was.
        extra = {"adapter": adapter} if adapter is not None else {}
        try:
            return self.engine.generate(er.prompt_ids, er.params, priority=er.priority,
                                        speculative=er.speculative, **extra)
        except QueueFull as e:
            # Retryable: the gateway tries again, then falls back to another member.
            raise UpstreamError(f"engine queue is full: {e}", kind="http", status=503,
                                retry_after=1.0) from None
        except EngineClosed as e:
            raise UpstreamError(f"engine is shutting down: {e}", kind="http",
                                status=503) from None
        except ValueError as e:  # a request that could never fit this engine's KV cache
            if adapter is not None and adapter not in self.engine.adapter_names():
                # The member exists but its weights are not in this engine (unloaded): the
                # gateway's retry or fallback handles it, not the client.
                raise UpstreamError(f"adapter {adapter!r} is not loaded: {e}", kind="http",
                                    status=503) from None
            raise fmt.bad_request(str(e), "messages", "context_length_exceeded") from None

    def _logprob_entry(self, ev: TokenEvent) -> dict[str, Any] | None:
        if ev.logprobs is None or ev.token_id is None:
            return None
        return fmt.logprob_entry(self.engine.tokenizer, ev.token_id, ev.logprobs)

    def _model_name(self, req: UpstreamRequest) -> str:
        return str(req.body.get("model") or self.upstream_model)

    async def complete(self, req: UpstreamRequest,
                       adapter: str | None = None) -> UpstreamResponse:
        er = self._parse(req)
        parts: list[str] = [er.echo_prompt] if er.echo_prompt else []
        entries: list[dict[str, Any]] | None = [] if er.logprobs else None
        last: TokenEvent | None = None
        events = self._events(er, adapter)
        try:
            async for ev in _failing_cleanly(events):
                parts.append(ev.text)
                entry = self._logprob_entry(ev) if entries is not None else None
                if entry is not None:
                    entries.append(entry)
                last = ev
        finally:
            await events.aclose()
        assert last is not None  # the engine always ends with a finished event
        use = fmt.usage(last.prompt_tokens, last.completion_tokens, last.joules,
                        last.energy_source, last.speculative)
        data = fmt.completion(er.kind, fmt.new_id(er.kind), self._model_name(req), "".join(parts),
                              last.finish_reason, use, entries)
        return UpstreamResponse(content=orjson.dumps(data), data=data)

    async def stream(self, req: UpstreamRequest,
                     adapter: str | None = None) -> AsyncIterator[bytes]:
        er = self._parse(req)
        rid, model, created = fmt.new_id(er.kind), self._model_name(req), int(time.time())
        events = self._events(er, adapter)
        try:
            if er.kind == "chat":
                yield fmt.chunk("chat", rid, model, created, role=True, text="")
            elif er.echo_prompt:
                yield fmt.chunk("text", rid, model, created, text=er.echo_prompt)
            async for ev in _failing_cleanly(events):
                entry = self._logprob_entry(ev) if er.logprobs else None
                lp = [entry] if entry is not None else None
                if ev.text or lp:
                    yield fmt.chunk(er.kind, rid, model, created, text=ev.text,
                                    logprob_entries=lp)
                if ev.finish_reason is not None:
                    yield fmt.chunk(er.kind, rid, model, created, finish_reason=ev.finish_reason,
                                    text=None if er.kind == "chat" else "")
                    if er.include_usage:
                        yield fmt.usage_chunk(er.kind, rid, model, created, fmt.usage(
                            ev.prompt_tokens, ev.completion_tokens, ev.joules,
                            ev.energy_source, ev.speculative))
        finally:
            # A client that leaves mid-stream closes us: closing the engine's iterator aborts the
            # request and frees its KV blocks at once.
            await events.aclose()

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    async def aclose(self) -> None:
        # Joins the step thread (after its step in flight): not on the event loop.
        await asyncio.to_thread(self.engine.shutdown)


class AdapterMember(Member):
    """A fine-tuned LoRA adapter as a pool member of its own: its requests run on the base
    member's engine, in the same batches as the base's (the engine gathers each request's
    adapter weights), so serving an adapter costs no second copy of the model."""

    def __init__(self, base: EngineMember, name: str) -> None:
        self.base = base
        self.name = name
        self.upstream_model = name  # the engine's adapter name, and the model in responses
        self.context_window = base.context_window
        self.random_weights = base.random_weights

    async def complete(self, req: UpstreamRequest) -> UpstreamResponse:
        return await self.base.complete(req, adapter=self.name)

    def stream(self, req: UpstreamRequest) -> AsyncIterator[bytes]:
        return self.base.stream(req, adapter=self.name)

    def stats(self) -> dict[str, Any]:
        return self.base.stats()

    async def aclose(self) -> None:
        """The base member owns the engine; closing it unloads everything."""


async def _failing_cleanly(events: RequestStream) -> AsyncIterator[TokenEvent]:
    """The events, with engine failures mid-request turned into upstream errors: the gateway
    then falls back (before the first byte) or ends the stream with an error event."""
    try:
        async for ev in events:
            yield ev
    except EngineClosed as e:
        raise UpstreamError(f"engine shut down mid-request: {e}", kind="http",
                            status=503) from None
    except UpstreamError:
        raise
    except Exception as e:
        log.exception("engine request failed")
        raise UpstreamError(f"engine failed: {e!r}", kind="http", status=502) from None
