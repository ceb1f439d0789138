"""The bundled engine alone, as an OpenAI-compatible HTTP server (`greengate engine serve`).

Gateways run on cheap CPU hosts, engines where the GPUs are: this is the GPU host's side. It
serves chat, completions (streamed or not), `/v1/models`, `/health` and `/metrics` (queue depth,
running requests, KV blocks used/free, tokens/s), and reports each request's energy where it is
measured: the engine reads its meter (NVML on a GPU, RAPL on a CPU where readable) around every
step and shares the step's joules among its sequences by tokens; without a meter the figure is
an estimate from the parameter count, labelled `estimated:*`. The figure travels in a
`greengate` extension field of the response (and in `usage`, as the in-process engine does), and
on streams as a trailing chunk with no choices, so a gateway's decision row carries the figure
measured on the GPU host.

The OpenAI request parsing and response shapes are the in-process member's
(`backends.engine_openai`, `backends.engine_backend.EngineMember`): one copy of the schema.

Extensions a gateway in front may ask for in the request's `greengate` object (a plain client
asks for none of them and sees plain OpenAI output):
- `return_token_ids: true`: each streamed chunk carries the ids of the tokens its text covers,
  with the request's energy so far, so a migration can resume token-exactly;
- `resume_token_ids: [...]`: continue a request another replica started: the ids are appended
  to the prompt (after the chat template), usage counts them as completion tokens;
- `migrate_on_preempt: true`: when this engine preempts the request (its KV went to others),
  end the stream with `greengate.preempted` instead of waiting to recompute it here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from backends import engine_openai as fmt
from backends.base import EXTENSION_FIELD, Endpoint, UpstreamError
from backends.engine.engine import RequestStream, TokenEvent
from backends.engine_backend import EngineMember, _failing_cleanly
from backends.pool_config import EngineOptions, MemberConfig
from telemetry import detect_meter, estimate_from_params

log = logging.getLogger("greengate.engine.server")

SERVER_NAME = "greengate-engine"
RATE_WINDOW_S = 10.0  # tokens/s over this sliding window
PREEMPT_POLL_S = 0.05  # how often a stalled stream checks whether it was preempted
RESUME_CONTEXT_IDS = 8  # resumed ids decoded before the first new token, for its exact text


@dataclass(frozen=True)
class ServerConfig:
    model: str  # a checkpoint folder or "tiny-random-llama"
    host: str = "127.0.0.1"
    port: int = 8100
    device: str = "auto"
    dtype: str = "auto"
    state_dir: Path = Path(".greengate")
    energy_meter: str = "auto"  # auto | nvml | rapl | none
    max_num_seqs: int = 64
    kv_cache_gb: float = 0.5
    block_size: int = 16
    default_max_tokens: int = 256
    prefix_caching: bool = True


@dataclass
class _Ext:
    """The request's `greengate` options this server acts on."""

    return_token_ids: bool = False
    resume_ids: tuple[int, ...] = ()
    migrate_on_preempt: bool = False


class _Preempted(Exception):
    """The engine put this request back in its waiting queue (its KV blocks were taken)."""


def _error(status: int, message: str, type_: str = "invalid_request_error",
           param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> Response:
    """The OpenAI error shape the gateway uses (gateway.errors), here without importing it."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


def _upstream_error(e: UpstreamError) -> Response:
    headers = {"retry-after": str(max(1, round(e.retry_after)))} if e.retry_after else None
    if e.body:
        return Response(e.body, status_code=e.status or 502, media_type="application/json",
                        headers=headers)
    status = e.status or 502
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return _error(status, str(e), type_, code="engine_overloaded" if status == 503 else None,
                  headers=headers)


def _ext(body: dict) -> _Ext:
    raw = body.get(EXTENSION_FIELD) or {}
    if not isinstance(raw, dict):
        raise fmt.bad_request(f"'{EXTENSION_FIELD}' must be an object", EXTENSION_FIELD)
    ids = raw.get("resume_token_ids") or []
    if not isinstance(ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise fmt.bad_request("greengate.resume_token_ids must be a list of token ids",
                              f"{EXTENSION_FIELD}.resume_token_ids")
    return _Ext(bool(raw.get("return_token_ids")), tuple(ids),
                bool(raw.get("migrate_on_preempt")))


def _trailing(kind: str, rid: str, model: str, created: int, ext: dict[str, Any]) -> bytes:
    """The trailing event of a stream: a chunk with no choices (SDKs accept it, as they do the
    usage chunk) whose `greengate` field carries the request's energy."""
    return orjson.dumps({"id": rid, "object": fmt.CHUNK_OBJECT[kind], "created": created,
                         "model": model, "choices": [], EXTENSION_FIELD: ext})


def _splice(payload: bytes, ext: dict[str, Any]) -> bytes:
    """Add the `greengate` field to a JSON object without parsing it again."""
    return payload[:-1] + b',"' + EXTENSION_FIELD.encode() + b'":' + orjson.dumps(ext) + b"}"


class _Counters:
    """What /metrics reports beyond the engine's own stats: throughput and energy."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.requests = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.migrated_out = 0
        self.energy_j: dict[str, float] = {}
        self._recent: deque[tuple[float, int]] = deque()

    def tokens(self, n: int) -> None:
        now = time.monotonic()
        self.generation_tokens += n
        self._recent.append((now, n))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        span = min(RATE_WINDOW_S, max(now - self.started, 1e-3))
        return sum(n for _, n in self._recent) / span


class EngineServer:
    """One engine and the HTTP handlers over it."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        opts = EngineOptions(device=cfg.device, dtype=cfg.dtype,  # type: ignore[arg-type]
                             max_num_seqs=cfg.max_num_seqs,  # type: ignore[arg-type]
                             kv_cache_gb=cfg.kv_cache_gb, block_size=cfg.block_size,
                             default_max_tokens=cfg.default_max_tokens,
                             prefix_caching=cfg.prefix_caching)
        self.meter = detect_meter(cfg.energy_meter)
        member_cfg = MemberConfig(name="engine", kind="engine", model=cfg.model, engine=opts)
        self.member = EngineMember(member_cfg, cfg.state_dir, self.meter)
        self.engine = self.member.engine
        self.counters = _Counters()
        self.meter_start = self._meter_joules()

    # --- energy ----------------------------------------------------------------------------

    def _meter_joules(self) -> float | None:
        if not self.meter.measures:
            return None
        try:
            return self.meter.read()
        except Exception:  # a failing meter makes the whole-window figure unknown, not 0
            return None

    def energy(self, ev: TokenEvent, completion_tokens: int) -> tuple[float | None, str]:
        """The request's joules so far and their source: the engine's per-step meter shares,
        else an estimate from the parameter count (labelled)."""
        if ev.joules is not None and ev.energy_source:
            return ev.joules, ev.energy_source
        est = estimate_from_params(self.member.num_params / 1e9, None, completion_tokens)
        if est is None:
            return None, "unknown"
        return est.joules, est.source

    # --- requests --------------------------------------------------------------------------

    def _parse(self, endpoint: Endpoint, body: dict) -> tuple[fmt.EngineRequest, _Ext]:
        ext = _ext(body)
        er = fmt.parse(endpoint, body, self.engine.tokenizer,
                       context_window=self.member.context_window,
                       default_max_tokens=self.cfg.default_max_tokens)
        if ext.resume_ids:
            vocab = self.engine.tokenizer.vocab_size
            if any(t < 0 or t >= vocab for t in ext.resume_ids):
                raise fmt.bad_request("greengate.resume_token_ids holds ids outside the "
                                      "vocabulary", f"{EXTENSION_FIELD}.resume_token_ids")
            n = len(ext.resume_ids)
            if n >= er.params.max_tokens:
                raise fmt.bad_request("greengate.resume_token_ids already holds max_tokens "
                                      "tokens", f"{EXTENSION_FIELD}.resume_token_ids")
            if len(er.prompt_ids) + n >= self.member.context_window:
                raise fmt.bad_request("the resumed request no longer fits the context",
                                      "messages", "context_length_exceeded")
            er.prompt_ids = er.prompt_ids + list(ext.resume_ids)
            er.params = dataclasses.replace(er.params, max_tokens=er.params.max_tokens - n)
            er.echo_prompt = None
        return er, ext

    def _events(self, er: fmt.EngineRequest) -> RequestStream:
        self.counters.requests += 1
        self.counters.prompt_tokens += len(er.prompt_ids)
        return self.member._events(er)

    def _preempted(self, request_id: int) -> bool:
        """The request is back in the engine's waiting queue with output already made: its
        KV went to others and it would wait and recompute here."""
        return any(s.seq_id == request_id and s.output_ids
                   for s in list(self.engine.scheduler.waiting))

    async def _tokens(self, events: RequestStream, ext: _Ext) -> AsyncIterator[TokenEvent]:
        """The engine's events; with `migrate_on_preempt`, raises `_Preempted` when the request
        was preempted, checked while no token arrives."""
        if not ext.migrate_on_preempt:
            async for ev in _failing_cleanly(events):
                yield ev
            return
        it = aiter(_failing_cleanly(events))
        while True:
            nxt = asyncio.ensure_future(anext(it))
            while True:
                done, _ = await asyncio.wait({nxt}, timeout=PREEMPT_POLL_S)
                if done:
                    break
                if self._preempted(events.request_id):
                    nxt.cancel()  # and wait for it: the generator must stop before aclose
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await nxt
                    raise _Preempted
            try:
                ev = nxt.result()
            except StopAsyncIteration:
                return
            yield ev

    def _usage(self, ev: TokenEvent, ext: _Ext) -> tuple[dict[str, Any], dict[str, Any]]:
        """Usage (resumed ids counted as completion, as the client sees them) and the
        `greengate` field with the request's energy."""
        n = len(ext.resume_ids)
        prompt, completion = ev.prompt_tokens - n, ev.completion_tokens + n
        joules, source = self.energy(ev, ev.completion_tokens)
        use = fmt.usage(prompt, completion, joules, source if joules is not None else None,
                        ev.speculative)
        if joules is not None:
            self.counters.energy_j[source] = self.counters.energy_j.get(source, 0.0) + joules
        ext_out = {"energy_j": joules, "energy_source": source if joules is not None else None,
                   "cached_tokens": ev.cached_tokens, "server": SERVER_NAME}
        return use, ext_out

    async def complete(self, endpoint: Endpoint, body: dict) -> Response:
        try:
            er, ext = self._parse(endpoint, body)
            events = self._events(er)
        except UpstreamError as e:
            return _upstream_error(e)
        parts: list[str] = [er.echo_prompt] if er.echo_prompt else []
        entries: list[dict[str, Any]] | None = [] if er.logprobs else None
        ids: list[int] = []
        last: TokenEvent | None = None
        text = _ResumeText(self, ext.resume_ids)
        try:
            async for ev in _failing_cleanly(events):
                parts.append(text.push(ev))
                if ev.token_id is not None:
                    ids.append(ev.token_id)
                if entries is not None:
                    entry = self.member._logprob_entry(ev)
                    if entry is not None:
                        entries.append(entry)
                last = ev
        except UpstreamError as e:
            return _upstream_error(e)
        finally:
            await events.aclose()
        assert last is not None  # the engine always ends with a finished event
        self.counters.tokens(last.completion_tokens)
        use, ext_out = self._usage(last, ext)
        if ext.return_token_ids:
            ext_out["token_ids"] = ids
        data = fmt.completion(er.kind, fmt.new_id(er.kind), self._model(body), "".join(parts),
                              last.finish_reason, use, entries)
        data[EXTENSION_FIELD] = ext_out
        return Response(orjson.dumps(data), media_type="application/json")

    def _model(self, body: dict) -> str:
        return str(body.get("model") or self.member.upstream_model)

    async def stream(self, endpoint: Endpoint, body: dict) -> Response:
        try:
            er, ext = self._parse(endpoint, body)
            events = self._events(er)
        except UpstreamError as e:
            return _upstream_error(e)
        return StreamingResponse(self._sse(er, ext, events, self._model(body)),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    async def _sse(self, er: fmt.EngineRequest, ext: _Ext, events: RequestStream,
                   model: str) -> AsyncIterator[bytes]:
        rid, created = fmt.new_id(er.kind), int(time.time())
        pending: list[int] = []  # ids whose text was not yet sent (held back)
        text = _ResumeText(self, ext.resume_ids)
        last: TokenEvent | None = None
        sent = 0

        def sse(payload: bytes) -> bytes:
            return b"data: " + payload + b"\n\n"

        try:
            if er.kind == "chat":
                yield sse(fmt.chunk("chat", rid, model, created, role=True, text=""))
            elif er.echo_prompt:
                yield sse(fmt.chunk("text", rid, model, created, text=er.echo_prompt))
            async for ev in self._tokens(events, ext):
                last = ev
                if ev.token_id is not None:
                    pending.append(ev.token_id)
                delta = text.push(ev)
                entry = self.member._logprob_entry(ev) if er.logprobs else None
                lp = [entry] if entry is not None else None
                if delta or lp or (ev.finish_reason is not None and pending):
                    payload = fmt.chunk(er.kind, rid, model, created, text=delta,
                                        logprob_entries=lp)
                    if ext.return_token_ids:
                        joules, source = self.energy(ev, ev.completion_tokens)
                        payload = _splice(payload, {"token_ids": pending, "energy_j": joules,
                                                    "energy_source": source})
                        pending = []
                    yield sse(payload)
                if ev.finish_reason is not None:
                    self.counters.tokens(ev.completion_tokens - sent)
                    sent = ev.completion_tokens
                    yield sse(fmt.chunk(er.kind, rid, model, created,
                                        finish_reason=ev.finish_reason,
                                        text=None if er.kind == "chat" else ""))
                    use, ext_out = self._usage(ev, ext)
                    if er.include_usage:
                        yield sse(fmt.usage_chunk(er.kind, rid, model, created, use))
                    yield sse(_trailing(er.kind, rid, model, created, ext_out))
                elif ev.completion_tokens - sent >= 16:
                    self.counters.tokens(ev.completion_tokens - sent)
                    sent = ev.completion_tokens
            yield b"data: [DONE]\n\n"
        except _Preempted:
            self.counters.migrated_out += 1
            joules, source = self.energy(last, last.completion_tokens) if last else (None, "")
            ext_out = {"preempted": True, "energy_j": joules,
                       "energy_source": source if joules is not None else None,
                       "server": SERVER_NAME}
            yield sse(_trailing(er.kind, rid, model, created, ext_out))
            yield b"data: [DONE]\n\n"
        except UpstreamError as e:
            err = {"error": {"message": str(e), "type": "server_error", "param": None,
                             "code": "engine_error"}}
            yield sse(orjson.dumps(err))
        finally:
            if last is not None and last.completion_tokens > sent:
                self.counters.tokens(last.completion_tokens - sent)
            await events.aclose()

    # --- introspection ---------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": self.member.upstream_model, "object": "model", "created": 0,
            "owned_by": "greengate", "max_model_len": self.member.context_window}]}

    def health(self) -> tuple[int, dict[str, Any]]:
        s = self.engine.stats()
        alive = self.engine.alive
        return (200 if alive else 503), {
            "status": "ok" if alive else "engine stopped", "server": SERVER_NAME,
            "model": self.member.upstream_model, "device": s["device"],
            "energy_source": s["energy_source"] if self.meter.measures else "estimated"}

    def metrics_text(self) -> str:
        """Prometheus text: the names a gateway's replica scraper reads (and vLLM-like ones
        are not faked: a scraper tells greengate's by the `greengate_` prefix)."""
        s = self.engine.stats()
        c = self.counters
        used = s["kv_blocks"] - s["kv_blocks_free"]
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, value: float | None,
                   labels: str = "") -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            if value is not None:
                lines.append(f"{name}{labels} {value}")

        metric("greengate_engine_running_requests", "gauge", "Requests being decoded.",
               s["running"])
        metric("greengate_engine_waiting_requests", "gauge", "Requests queued (queue depth).",
               s["waiting"])
        metric("greengate_engine_kv_blocks_used", "gauge", "KV-cache blocks in use.", used)
        metric("greengate_engine_kv_blocks_free", "gauge", "KV-cache blocks free.",
               s["kv_blocks_free"])
        metric("greengate_engine_kv_cache_usage", "gauge", "Share of KV blocks in use.",
               s["kv_usage"])
        metric("greengate_engine_tokens_per_second", "gauge",
               f"Generated tokens per second over the last {RATE_WINDOW_S:g} s.",
               round(c.tokens_per_s(), 3))
        metric("greengate_engine_requests_total", "counter", "Requests admitted.", c.requests)
        metric("greengate_engine_prompt_tokens_total", "counter", "Prompt tokens admitted.",
               c.prompt_tokens)
        metric("greengate_engine_generation_tokens_total", "counter", "Tokens generated.",
               c.generation_tokens)
        metric("greengate_engine_prefix_cache_hit_tokens_total", "counter",
               "Prompt tokens served from the prefix cache.", s["prefix_cache_hit_tokens"])
        metric("greengate_engine_preemptions_total", "counter", "Sequences preempted.",
               s["preemptions"])
        metric("greengate_engine_migrated_out_total", "counter",
               "Streams ended on preemption for the gateway to resume elsewhere.",
               c.migrated_out)
        lines.append("# HELP greengate_engine_request_energy_joules_total Energy attributed to "
                     "finished requests, by source (measured:* or estimated:*).")
        lines.append("# TYPE greengate_engine_request_energy_joules_total counter")
        for source, joules in sorted(c.energy_j.items()):
            lines.append(f'greengate_engine_request_energy_joules_total{{source="{source}"}} '
                         f"{joules}")
        now = self._meter_joules()
        if now is not None and self.meter_start is not None:
            # The whole device since start (a Zeus-style window), to check the shares against.
            metric("greengate_engine_meter_energy_joules_total", "counter",
                   f"Energy the meter ({self.meter.source}) read since start.",
                   now - self.meter_start)
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.engine.shutdown()
        self.meter.close()


class _ResumeText:
    """Text deltas for a resumed request. The engine detokenizes the new tokens on their own;
    a tokenizer that drops a leading space at the start of a decode (SentencePiece) would lose
    it at the seam, so the first released text is redone in the resumed ids' context."""

    def __init__(self, server: EngineServer, resume_ids: tuple[int, ...]) -> None:
        self._tok = server.engine.tokenizer
        self._ctx = list(resume_ids[-RESUME_CONTEXT_IDS:])
        self._held: list[int] = []
        self._fixed = not resume_ids

    def push(self, ev: TokenEvent) -> str:
        if self._fixed:
            return ev.text
        if not ev.text:
            if ev.token_id is not None and ev.finish_reason is None:
                self._held.append(ev.token_id)  # held back by the engine's detokenizer
            return ""
        if ev.token_id is not None:
            self._held.append(ev.token_id)
        self._fixed = True
        before = self._tok.decode(self._ctx)
        after = self._tok.decode(self._ctx + self._held)
        return after[len(before):] if after.startswith(before) else ev.text


def create_app(server: EngineServer) -> Starlette:
    """The HTTP face; every refusal is an OpenAI-style error, never a 500."""

    async def body_of(request: Request) -> dict | Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        return body

    def handler(endpoint: Endpoint):  # type: ignore[no-untyped-def]
        async def handle(request: Request) -> Response:
            body = await body_of(request)
            if isinstance(body, Response):
                return body
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                return _error(400, "stream must be true or false", param="stream")
            try:
                if stream:
                    return await server.stream(endpoint, body)
                return await server.complete(endpoint, body)
            except UpstreamError as e:
                return _upstream_error(e)
            except Exception as e:  # never a bare 500
                log.exception("request failed")
                return _error(500, f"engine failed: {e!r}", "server_error")
        return handle

    async def models(_: Request) -> Response:
        return JSONResponse(server.models())

    async def health(_: Request) -> Response:
        status, body = server.health()
        return JSONResponse(body, status_code=status)

    async def metrics(_: Request) -> Response:
        if not server.engine.alive:  # a scraper then ejects this replica
            return _error(503, "the engine's step loop has stopped", "server_error",
                          code="engine_stopped")
        return Response(server.metrics_text(), media_type="text/plain; version=0.0.4")

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        if status == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}")
        return _error(status, f"No route {request.url.path} on this engine server.",
                      code="not_found")

    routes = [
        Route("/v1/chat/completions", handler("chat/completions"), methods=["POST"]),
        Route("/v1/completions", handler("completions"), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a Hugging Face checkpoint folder, or tiny-random-llama")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto",
                   choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--state-dir", type=Path,
                   default=Path(os.environ.get("GREENGATE_STATE_DIR", ".greengate")))
    p.add_argument("--energy-meter", default="auto", choices=["auto", "nvml", "rapl", "none"])
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--kv-cache-gb", type=float, default=0.5, help="KV-cache size on the CPU")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--default-max-tokens", type=int, default=256)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--log-level", default="info")


def config_from(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(model=args.model, host=args.host, port=args.port, device=args.device,
                        dtype=args.dtype, state_dir=args.state_dir, energy_meter=args.energy_meter,
                        max_num_seqs=args.max_num_seqs, kv_cache_gb=args.kv_cache_gb,
                        block_size=args.block_size,
                        default_max_tokens=args.default_max_tokens,
                        prefix_caching=not args.no_prefix_caching)


def serve(cfg: ServerConfig, log_level: str = "info") -> None:
    """Load the model, then serve until interrupted."""
    import uvicorn

    server = EngineServer(cfg)
    try:
        uvicorn.run(create_app(server), host=cfg.host, port=cfg.port, log_level=log_level,
                    access_log=False)
    finally:
        server.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="greengate engine serve", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(config_from(args), args.log_level)


if __name__ == "__main__":
    main()
