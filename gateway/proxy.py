"""The request path of /v1: authenticate, validate, plan the members, call with retries and
fallback, pass the answer through, and queue the decision row. One row per request."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from backends import Endpoint, UpstreamError, UpstreamRequest, UpstreamResponse
from gateway import cache_stage
from gateway.answers import completion_text, streamed_text
from gateway.auth import Authenticator, Principal, database_unavailable
from gateway.errors import GatewayError, error_body, error_response
from gateway.guard import Guard, StreamRestore, restore_response
from gateway.pool import Pool, PoolMember
from gateway.ratelimit import Limit, Refused
from gateway.routing_service import RoutingService
from gateway.settings import Settings
from gateway.stages import (
    SSE_HEADERS,
    BudgetStage,
    CacheStage,
    CallStage,
    Exchange,
    FeaturesStage,
    GuardStage,
    Plan,
    RouteStage,
    Stage,
)
from routing import tokens
from routing.cache import CacheKey, SemanticCache
from store import DecisionLog, DecisionRow, is_connection_error
from telemetry import Budgets, CarbonIntensity, EnergyReading, Metrics

log = logging.getLogger("greengate.proxy")

_REQUIRED = {"chat/completions": "messages", "completions": "prompt", "embeddings": "input"}



def _bad(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def validate(endpoint: Endpoint, body: Any) -> None:
    """Enough checking that a malformed request gets a clear 400 here, not an upstream 500."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a non-empty string.", "model")
    field = _REQUIRED[endpoint]
    value = body.get(field)
    if endpoint == "chat/completions":
        if not isinstance(value, list) or not value:
            raise _bad("'messages' must be a non-empty array of message objects.", "messages")
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _bad(f"messages[{i}] must be an object with a string 'role'.",
                           f"messages[{i}]")
            _check_content(m.get("content"), f"messages[{i}].content", m["role"])
    elif not isinstance(value, (str, list)) or (isinstance(value, list) and not value):
        raise _bad(f"'{field}' must be a string or a non-empty array.", field)
    elif isinstance(value, list) and not _text_or_tokens(value):
        raise _bad(f"'{field}' must be a string, an array of strings, an array of token ids "
                   "or an array of token-id arrays.", field)
    rt = body.get("request_timeout_s")
    if rt is not None and (isinstance(rt, bool) or not isinstance(rt, (int, float))
                           or not 0 < rt <= 86_400):
        raise _bad("'request_timeout_s' must be a number of seconds above 0.",
                   "request_timeout_s")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _bad("'stream' must be a boolean.", "stream")
    if body.get("stream") and endpoint == "embeddings":
        raise _bad("Embeddings cannot be streamed.", "stream")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise _bad("'stream_options' must be an object.", "stream_options")
    for name, lo, hi in (("temperature", 0, 2), ("top_p", 0, 1),
                         ("presence_penalty", -2, 2), ("frequency_penalty", -2, 2)):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not lo <= v <= hi):
            raise _bad(f"'{name}' must be a number between {lo} and {hi}.", name)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise _bad(f"'{name}' must be a positive integer.", name)
    for name in ("tools", "stop") if endpoint != "embeddings" else ():
        v = body.get(name)
        if name == "tools" and v is not None and not isinstance(v, list):
            raise _bad("'tools' must be an array.", "tools")
        if name == "tools" and v:
            for i, tool in enumerate(v):
                fn = tool.get("function") if isinstance(tool, dict) else None
                if (not isinstance(fn, dict) or not isinstance(fn.get("name"), str)
                        or tool.get("type", "function") != "function"):
                    raise _bad(f"tools[{i}] must be a function tool: "
                               '{"type": "function", "function": {"name": ...}}.',
                               f"tools[{i}]")
        if name == "stop" and v is not None and not isinstance(v, (str, list)):
            raise _bad("'stop' must be a string or an array of strings.", "stop")


_USER_PARTS = frozenset({"text", "image_url", "input_audio", "file"})
_OTHER_PARTS = frozenset({"text", "refusal"})


def _check_content(content: Any, param: str, role: str) -> None:
    """OpenAI's content shapes: a string, null, or an array of typed part objects (a user's:
    text, image_url, input_audio, file; others': text, refusal) whose `text` is a string."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or an array of content parts.", param)
    kinds = _USER_PARTS if role == "user" else _OTHER_PARTS
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind not in kinds:
            raise _bad(f"'{param}[{j}]' must be a content part with 'type' one of "
                       f"{', '.join(sorted(kinds))}.", f"{param}[{j}]")
        if "text" in part and not isinstance(part["text"], str):
            # param names the field as the bundled engine does; the message, the exact path
            raise _bad(f"'{param}[{j}].text' must be a string.", "messages")


def _token_ids(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                       for t in v)


def _text_or_tokens(v: list) -> bool:
    """The array shapes OpenAI accepts for `prompt` and `input`."""
    return (all(isinstance(p, str) for p in v) or _token_ids(v)
            or all(_token_ids(p) and p for p in v))


def _with(headers: dict[str, str], response: Response) -> Response:
    """The rate-limit headers on an answer (streamed or not)."""
    if headers:
        response.headers.update(headers)
    return response


def _system(member: PoolMember | None) -> str | None:
    """gen_ai.system of a member: its provider (litellm's prefix), or the protocol."""
    if member is None:
        return None
    kind = member.cfg.kind
    if kind == "litellm":
        return member.cfg.model.split("/", 1)[0] if "/" in member.cfg.model else "litellm"
    return {"openai": "openai", "engine": "greengate.engine"}.get(kind, kind)


def _sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _error_event(message: str, type_: str, code: str | None = None) -> bytes:
    return _sse(orjson.dumps(error_body(message, type_, None, code)))


class Proxy:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        auth: Authenticator,
        decisions: DecisionLog,
        routing: RoutingService,
        budgets: Budgets,
        metrics: Metrics,
        carbon: CarbonIntensity,
        guard: Guard,
        cache: SemanticCache | None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.auth = auth
        self.decisions = decisions
        self.routing = routing
        self.budgets = budgets
        self.metrics = metrics
        self.carbon = carbon
        self.guard = guard
        self.cache = cache
        # Rate limits, request logs, spans (gateway.org_services sets it at start-up).
        self.org: Any = None
        # The request path, top to bottom (gateway/stages.py); accounting runs when the
        # answer is complete (_account, _finish), which for a stream is after its last chunk.
        self.stages: list[Stage] = [
            FeaturesStage(routing, guard),
            GuardStage(guard),
            CacheStage(cache, self._finish, self._log_request),
            RouteStage(settings, pool, routing),
            BudgetStage(budgets, metrics),
            CallStage(self._stream, self._complete),
        ]

    # ---- entry -------------------------------------------------------------------------
    async def handle(self, request: Request, endpoint: Endpoint) -> Response:
        return await self._handle(request, endpoint)

    async def handle_translated(self, request: Request, endpoint: Endpoint,
                                prepare: Callable[[Principal, Any], Awaitable[dict]],
                                row_endpoint: str, native: Any = None) -> Response:
        """A request in another protocol (the Responses API) served by this path: `prepare`
        turns the caller's body into `endpoint`'s (raising GatewayError naming the field)
        inside the same try, so a refused request still has its decision row, which says
        `row_endpoint`. `native` (gateway.responses_native.NativeCall) serves the members
        that speak the caller's protocol themselves: the plan's members are tried in order,
        each in the protocol it speaks."""
        return await self._handle(request, endpoint, prepare=prepare,
                                  row_endpoint=row_endpoint, native=native)

    async def serve_body(self, principal: Principal, endpoint: Endpoint,
                         body: dict) -> tuple[Response, dict[str, Any] | None]:
        """An internal request (a batch line) by this path, with its decision row."""
        sink: list[DecisionRow] = []
        resp = await self._handle(None, endpoint, principal=principal, body=body, sink=sink)
        return resp, (sink[0].as_row() if sink else None)

    async def _handle(self, request: Request | None, endpoint: Endpoint, *,
                      prepare: Callable[[Principal, Any], Awaitable[dict]] | None = None,
                      row_endpoint: str | None = None, principal: Principal | None = None,
                      body: Any = None, sink: list[DecisionRow] | None = None,
                      native: Any = None) -> Response:
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex
        row: DecisionRow | None = None
        limit_headers: dict[str, str] = {}
        try:
            if principal is None:
                assert request is not None
                principal = await self.auth.authenticate(request)
            row = DecisionRow(id=rid, endpoint=row_endpoint or endpoint,
                              key_id=principal.key_id, key_prefix=principal.key_prefix,
                              team=principal.team)
            if sink is not None:
                sink.append(row)
            limit_headers = self._admit(principal)
            if body is None:
                assert request is not None
                body = await self._read_json(request)
            if prepare is not None:
                body = await prepare(principal, body)
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                row.requested_model = body["model"][:256]
            validate(endpoint, body)
            # greengate's own extension: the caller's deadline, never sent upstream.
            wanted_timeout = body.pop("request_timeout_s", None)
            row.stream = bool(body.get("stream"))
            x = Exchange(rid, t0, endpoint, principal, body, row, wanted_timeout,
                         native=native)
            for stage in self.stages:
                answer = await stage.run(x)
                if answer is not None:
                    return _with(limit_headers, answer)
            raise AssertionError("the call stage always answers")
        except GatewayError as e:
            if row is not None:
                row.status, row.error = e.status, e.message[:2000]
                row.latency_ms = (time.perf_counter() - t0) * 1000
                self._finish(row, principal)
            return error_response(e, {**limit_headers, **e.headers, "x-request-id": rid})
        except Exception as e:  # a bug of ours: still answer cleanly and keep the row
            if is_connection_error(e):  # the database is away: not a bug, and not a 500
                log.warning("request %s: database unavailable (%s)", rid, type(e).__name__)
                err = database_unavailable()
            else:
                log.exception("request %s failed inside greengate", rid)
                err = GatewayError(500, "Internal error in greengate; it has been logged.")
            if row is not None:
                row.status, row.error = err.status, repr(e)[:2000]
                row.latency_ms = (time.perf_counter() - t0) * 1000
                self._finish(row, principal)
            return error_response(err, {"x-request-id": rid})

    def _finish(self, row: DecisionRow, principal: Principal) -> None:
        """The request is over: carbon, budget charge, metrics, then the decision row."""
        if row.energy_j is not None and row.served_member is not None:
            member = self.pool.get(row.served_member)
            region = member.cfg.energy.region if member and member.cfg.energy else None
            row.gco2e = self.carbon.gco2e(row.energy_j, region)
        if self.budgets.rules:  # also releases what admission reserved, charged or not
            try:
                self.budgets.charge(principal.team, principal.key_id, row.cost_usd,
                                    row.energy_j, rid=row.id)
            except Exception:  # a Redis outage must not lose the request's row
                log.exception("charging budgets failed for %s", row.id)
        d = row.as_row()  # metrics, spans and the decision log read the columns by name
        self.metrics.observe(d)
        if self.org is not None:
            self._org_finish(row, d, principal)
        self.decisions.submit(d)

    def _limits(self, principal: Principal) -> list[Limit]:
        out = []
        if principal.key_id is not None and (principal.rpm_limit or principal.tpm_limit):
            out.append(Limit("key", str(principal.key_id), principal.rpm_limit,
                             principal.tpm_limit))
        if principal.team is not None:
            team = self.org.team_settings.get(principal.team)
            if team.rpm_limit or team.tpm_limit:
                out.append(Limit("team", principal.team, team.rpm_limit, team.tpm_limit))
        return out

    def _admit(self, principal: Principal) -> dict[str, str]:
        """Count the request against the key's and the team's rate limits (429 when over);
        the x-ratelimit-* headers of the tightest."""
        if self.org is None:
            return {}
        try:
            return self.org.limiter.admit(self._limits(principal))
        except Refused as r:
            raise GatewayError(429, f"{r} Retry after {r.headers.get('retry-after')} s.",
                               param=r.param, code="rate_limit_exceeded",
                               headers=r.headers) from None

    def _org_finish(self, row: DecisionRow, d: dict[str, Any], principal: Principal) -> None:
        """Tokens against the token limits, and the request's span."""
        tokens = (row.prompt_tokens or 0) + (row.completion_tokens or 0)
        try:
            if tokens:
                self.org.limiter.charge(self._limits(principal), tokens)
        except Exception:
            log.exception("charging rate limits failed for %s", row.id)
        if self.org.tracing is not None:
            member = self.pool.get(row.served_member) if row.served_member else None
            self.org.tracing.record(d, _system(member))

    def _logs_requests(self, row: DecisionRow) -> bool:
        """Whether `_log_request` may keep this row's prompt and answer (a team's request)."""
        return self.org is not None and row.team is not None

    def _log_request(self, row: DecisionRow, endpoint: str, body: dict,
                     answer: str | None) -> None:
        """The prompt and answer for the team's request log (only if it opted in)."""
        if self._logs_requests(row):
            self.org.request_logs.submit(row.as_row(), row.endpoint or endpoint, body, answer)

    def _remember(self, key: CacheKey | None, response: dict | None, member: str) -> None:
        """Cache a successful answer, off the response path."""
        if key is None or response is None or self.cache is None:
            return
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self.cache.put, key, response, member)

    async def _read_json(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = GatewayError(413, f"Request body is larger than {limit} bytes.",
                               code="request_too_large")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw:
            raise _bad("The request body is empty; send a JSON object.")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise _bad(f"The request body is not valid JSON: {e}", code="invalid_json") from None

    # ---- calling with retries and fallback ---------------------------------------------
    def _wait(self, rs: RetryCallState) -> float:
        """Before retry n: the upstream's Retry-After when it sent one, else exponential backoff
        (retry_backoff_s x 2^(n-1), half-jittered), both capped at retry_backoff_max_s."""
        s = self.settings
        err = rs.outcome.exception() if rs.outcome else None
        if isinstance(err, UpstreamError) and err.retry_after is not None:
            return min(err.retry_after, s.retry_backoff_max_s)
        return min(s.retry_backoff_s * (2 ** (rs.attempt_number - 1)), s.retry_backoff_max_s) * (
            0.5 + random.random() / 2)

    def _retrying(self, m: PoolMember, member_end: float, attempts: list[dict]) -> AsyncRetrying:
        """One member's attempts (tenacity): retryable upstream errors only, at most
        1 + m.retries tries, none once the member's breaker opened, and no wait that would end
        past the member's share of the deadline. Fallback across members stays in `_call`."""

        def stop(rs: RetryCallState) -> bool:
            return (rs.attempt_number > m.retries or not m.breaker.available()
                    or time.perf_counter() + rs.upcoming_sleep >= member_end)

        def note_wait(rs: RetryCallState) -> None:  # the decision row says what was waited
            attempts[-1]["retry_in_s"] = round(rs.upcoming_sleep, 3)

        return AsyncRetrying(
            stop=stop, wait=self._wait, before_sleep=note_wait, reraise=True, sleep=asyncio.sleep,
            retry=retry_if_exception(lambda e: isinstance(e, UpstreamError) and e.retryable))

    async def _on_member(self, m: PoolMember, req: UpstreamRequest, stream: bool,
                         member_end: float, attempts: list[dict], rid: str) -> Any:
        """The first try on `m` runs bare; tenacity's retrying is made only once that try
        failed with a retryable error, and it starts by re-raising that error, so its attempt
        numbers, waits and stops are those of a loop that made the first try itself.

        Why not tenacity from the first try: an `AsyncRetrying` and its per-try state form
        reference cycles (about 40 objects a request) that only the cyclic collector frees.
        With 64 requests in flight they outlive young collections, get promoted and make full
        collections frequent and long: 15% of the gateway's CPU and pauses of tens of ms that
        stall every open stream. A request that needs no retry now leaves no cyclic garbage
        (tests/test_hot_path.py counts it)."""
        try:
            return await self._attempt(m, req, stream, member_end, attempts, rid)
        except UpstreamError as e:
            if not e.retryable:
                raise
            failed: UpstreamError | None = e
        async for attempt in self._retrying(m, member_end, attempts):
            with attempt:
                if failed is not None:  # the first try's outcome, for tenacity to judge
                    err, failed = failed, None
                    raise err
                return await self._attempt(m, req, stream, member_end, attempts, rid)
        raise AssertionError("tenacity re-raises the last error (reraise=True)")

    async def _attempt(self, m: PoolMember, req: UpstreamRequest, stream: bool,
                       member_end: float, attempts: list[dict], rid: str) -> Any:
        """One try on `m`, its row in `attempts` and the breaker told; a client fault (the
        request's own) is raised as the GatewayError the client sees, never retried."""
        t = time.perf_counter()
        left = member_end - t
        try:
            result = await (self._open_stream(m, req, left) if stream else self._once(m, req, left))
        except UpstreamError as e:
            attempts.append({"member": m.name, "status": e.status, "kind": e.kind,
                             "error": str(e)[:300],
                             "ms": round((time.perf_counter() - t) * 1000, 2)})
            if e.client_fault:
                raise self._client_fault(e, len(attempts) > 1) from None
            # 429 is back-pressure (Retry-After handles it), and a cut at the request's
            # deadline says nothing about the member: neither counts against it.
            if e.status != 429 and e.kind != "deadline":
                m.breaker.record_failure(rid)
            raise
        m.breaker.record_success(rid)
        m.observe_latency((time.perf_counter() - t) * 1000)
        attempts.append({"member": m.name, "status": 200,
                         "ms": round((time.perf_counter() - t) * 1000, 2)})
        return result

    async def _call(
        self, plan: Plan, endpoint: Endpoint, body: dict, stream: bool, row: DecisionRow,
        native: Any = None,
    ) -> tuple[PoolMember, Any]:
        attempts: list[dict[str, Any]] = row.attempts
        last: UpstreamError | None = None
        cooling: list[PoolMember] = []
        for m in plan.members:
            if time.perf_counter() >= plan.deadline:
                raise self._deadline_error(plan, last, attempts)
            own = m.cfg.request_timeout_s
            member_end = plan.deadline if own is None else min(
                plan.deadline, time.perf_counter() + own)
            if not m.breaker.available():
                cooling.append(m)
                attempts.append({"member": m.name, "skipped": "cooldown"})
                continue
            if native is not None and native.speaks(m):  # the caller's protocol, as is
                req = native.request(m, body, stream, plan.redactor is not None)
            else:
                req = UpstreamRequest(endpoint, {**body, "model": m.backend.upstream_model},
                                      stream)
                if stream:
                    req.body["stream_options"] = {**(body.get("stream_options") or {}),
                                                  "include_usage": True}
            try:
                result = await self._on_member(m, req, stream, member_end, attempts, row.id)
            except UpstreamError as e:
                last = e  # this member is done: on to the next
                continue
            return m, result
        if time.perf_counter() >= plan.deadline - 1e-3 or (last and last.kind == "deadline"):
            raise self._deadline_error(plan, last, attempts)
        raise self._exhausted(last, cooling, attempts)

    @staticmethod
    def _deadline_error(plan: Plan, last: UpstreamError | None,
                        attempts: list[dict]) -> GatewayError:
        tried = [a for a in attempts if "skipped" not in a]
        members = list(dict.fromkeys(a["member"] for a in tried))
        detail = f"; last: {last}" if last is not None else ""
        return GatewayError(
            504, f"The request's deadline of {plan.budget_s:g} s passed after {len(tried)} "
            f"attempt(s) on {len(members)} member(s) ({', '.join(members) or 'none'}){detail}.",
            code="request_timeout",
            headers={"x-should-retry": "false", "x-greengate-deadline-s": f"{plan.budget_s:g}"})

    @staticmethod
    def _timeout_error(what: str, configured: float, left: float) -> UpstreamError:
        if left < configured:  # the request's deadline, not the member's own timeout
            return UpstreamError(f"{what}: the request's deadline came first ({left:.3g} s "
                                 "left)", kind="deadline")
        return UpstreamError(f"{what} in {configured} s", kind="timeout")

    async def _once(self, m: PoolMember, req: UpstreamRequest,
                    left: float = float("inf")) -> UpstreamResponse:
        limit = min(m.cfg.timeouts.total_s, left)
        try:
            async with asyncio.timeout(limit):
                return await m.backend.complete(req)
        except TimeoutError:
            raise self._timeout_error("no complete answer", m.cfg.timeouts.total_s,
                                      left) from None

    async def _open_stream(
        self, m: PoolMember, req: UpstreamRequest, left: float = float("inf")
    ) -> tuple[AsyncIterator[list[bytes]], list[bytes]]:
        agen = m.backend.stream_batches(req)
        try:
            first = await asyncio.wait_for(anext(agen), min(m.cfg.timeouts.first_byte_s, left))
        except TimeoutError:
            await agen.aclose()
            raise self._timeout_error("no first token", m.cfg.timeouts.first_byte_s,
                                      left) from None
        except StopAsyncIteration:
            raise UpstreamError("upstream closed the stream without data",
                                kind="protocol") from None
        except BaseException:
            await agen.aclose()
            raise
        return agen, first

    @staticmethod
    def _client_fault(e: UpstreamError, retried: bool) -> GatewayError:
        msg, type_, param, code = str(e), None, None, None
        try:
            err = orjson.loads(e.body or b"{}").get("error")
            if isinstance(err, dict):
                msg = str(err.get("message") or msg)
                type_, param, code = err.get("type"), err.get("param"), err.get("code")
        except (orjson.JSONDecodeError, AttributeError):
            pass
        headers = {"x-should-retry": "false"} if retried else {}
        return GatewayError(e.status or 400, msg, type=type_, param=param, code=code,
                            headers=headers)

    @staticmethod
    def _exhausted(
        last: UpstreamError | None, cooling: list[PoolMember], attempts: list[dict]
    ) -> GatewayError:
        tried = sum(1 for a in attempts if "skipped" not in a)
        headers = {"x-should-retry": "false"} if tried > 1 else {}
        if last is None:
            wait = min(m.breaker.cooling_down_for() for m in cooling) if cooling else 0
            names = ", ".join(m.name for m in cooling)
            return GatewayError(
                503, f"Every candidate member is cooling down after repeated failures "
                f"({names}); retry in {wait:.0f} s.", code="members_cooling_down",
                # The SDK's own retries would land inside the cooldown: say so.
                headers={"x-should-retry": "false", "retry-after": str(max(1, round(wait)))})
        summary = f"after {tried} attempt(s): {last}"
        if last.kind == "timeout":
            return GatewayError(504, f"Upstream timed out {summary}", code="upstream_timeout",
                                headers=headers)
        if last.status == 429:
            if last.retry_after is not None:
                headers["retry-after"] = str(max(1, round(last.retry_after)))
            return GatewayError(429, f"Upstream is rate limiting {summary}",
                                code="upstream_rate_limited", headers=headers)
        if last.status == 503:
            # Overloaded (a full engine queue, a busy provider): a later retry may well work.
            if last.retry_after is not None:
                headers["retry-after"] = str(max(1, round(last.retry_after)))
            return GatewayError(503, f"Upstream is overloaded {summary}",
                                code="upstream_overloaded", headers=headers)
        return GatewayError(502, f"Upstream failed {summary}", code="upstream_error",
                            headers=headers)

    # ---- accounting --------------------------------------------------------------------
    def _account(self, row: DecisionRow, m: PoolMember, usage: dict | None, endpoint: str,
                 body: dict, completion_text: str | None,
                 reference: PoolMember | None = None) -> dict:
        """Fill tokens, cost and energy; count tokens ourselves when the upstream sent none."""
        model = m.backend.upstream_model
        if usage and isinstance(usage.get("prompt_tokens"), int):
            prompt = usage["prompt_tokens"]
            completion = int(usage.get("completion_tokens") or 0)
            row.usage_source = "upstream"
        else:
            prompt = tokens.prompt_tokens(endpoint, body, model)
            completion = tokens.count_text(completion_text or "", model)
            row.usage_source = "counted:tiktoken"
            usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion}
            if endpoint == "embeddings":
                usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        row.prompt_tokens, row.completion_tokens = prompt, completion
        row.cost_usd = m.cost(prompt, completion)
        # The bundled engine reports joules measured per step; those beat any estimate.
        measured_j, measured_source = usage.pop("energy_j", None), usage.pop("energy_source", None)
        spec = usage.pop("speculative", None)
        if isinstance(spec, dict):
            row.speculative = spec
        # A member with several endpoints: the replicas it ran on and any migration.
        placed = usage.pop("replicas", None)
        if isinstance(placed, dict):
            row.replicas = placed
        energy = (EnergyReading(float(measured_j), str(measured_source))
                  if measured_j is not None and measured_source else m.energy(prompt, completion))
        if energy is not None:
            row.energy_j, row.energy_source = energy.joules, energy.source
        if reference is not None:
            ref_energy = reference.energy(prompt, completion)
            row.counterfactual_member = reference.name
            row.counterfactual_cost_usd = reference.cost(prompt, completion)
            row.counterfactual_energy_j = ref_energy.joules if ref_energy else None
        return usage

    def _served_headers(self, rid: str, m: PoolMember, row: DecisionRow) -> dict[str, str]:
        headers = {"x-request-id": rid, "x-greengate-member": m.name}
        constraint = (row.features or {}).get("constraint")
        if constraint:
            # ASCII only: header values are latin-1 on the wire.
            headers["x-greengate-constraint"] = (
                "met" if constraint["met"] else "unmet; fell back to the best-quality member")
        return headers

    # ---- non-streamed ------------------------------------------------------------------
    async def _complete(self, x: Exchange) -> Response:
        rid, t0, row, endpoint, body, principal = x.rid, x.t0, x.row, x.endpoint, x.body, \
            x.principal
        plan = x.plan
        assert plan is not None
        m, resp = await self._call(plan, endpoint, body, False, row, x.native)
        if x.native is not None and x.native.speaks(m):
            return await x.native.complete(self, x, m, resp)
        upstream_usage = resp.data.get("usage")
        usage = self._account(row, m, upstream_usage, endpoint, body,
                              None if upstream_usage else completion_text(endpoint, resp.data),
                              plan.reference)
        content = resp.content
        if plan.cache_key is not None and not (resp.data.get("choices") or [{}])[0].get(
                "message", {}).get("tool_calls"):
            self._remember(plan.cache_key, {**resp.data, "usage": usage}, m.name)
        if plan.redactor is not None:
            content = orjson.dumps(restore_response(resp.data, plan.redactor))
        if not upstream_usage:
            content = orjson.dumps({**resp.data, "usage": usage})
        elapsed = (time.perf_counter() - t0) * 1000
        row.served_member = m.name
        row.upstream_model = resp.data.get("model") or m.backend.upstream_model
        row.status, row.latency_ms, row.ttft_ms = 200, elapsed, elapsed
        if endpoint != "embeddings":
            self._log_request(row, endpoint, body, completion_text(endpoint, resp.data))
        self._finish(row, principal)
        return Response(content, media_type="application/json",
                        headers=self._served_headers(rid, m, row))

    # ---- streamed ----------------------------------------------------------------------
    async def _stream(self, x: Exchange) -> Response:
        rid, t0, row, endpoint, body, principal = x.rid, x.t0, x.row, x.endpoint, x.body, \
            x.principal
        plan = x.plan
        assert plan is not None
        m, (agen, first) = await self._call(plan, endpoint, body, True, row, x.native)
        if x.native is not None and x.native.speaks(m):
            return x.native.stream(self, x, m, agen, first)
        row.ttft_ms = (time.perf_counter() - t0) * 1000
        row.served_member = m.name
        row.upstream_model = m.backend.upstream_model
        client_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        deadline = t0 + m.cfg.timeouts.total_s
        return StreamingResponse(
            self._relay(row, t0, m, endpoint, body, agen, first, client_usage, deadline,
                        principal, plan.reference,
                        StreamRestore(plan.redactor) if plan.redactor else None,
                        plan.cache_key),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **self._served_headers(rid, m, row)},
        )

    async def _relay(self, row: DecisionRow, t0: float, m: PoolMember, endpoint: Endpoint,
                     body: dict,
                     agen: AsyncIterator[list[bytes]], first: list[bytes], client_usage: bool,
                     deadline: float, principal: Principal, reference: PoolMember | None,
                     restore: StreamRestore | None,
                     cache_key: CacheKey | None) -> AsyncIterator[bytes]:
        usage: dict | None = None
        seen: list[bytes] = []  # kept only to count tokens if no usage arrives
        finished = False
        logged = False
        try:
            # One write per batch (the events one network read brought), not one per event:
            # the payloads pass as they came unless usage, an error or a restore needs them.
            batch: list[bytes] | None = first
            while batch is not None:
                out: list[bytes] = []
                for payload in batch:
                    forward = True
                    if b'"usage"' in payload or b'"error"' in payload:
                        data = orjson.loads(payload)
                        if isinstance(data, dict) and isinstance(data.get("error"), dict):
                            row.status = 502
                            row.error = str(data["error"].get("message"))[:2000]
                            m.breaker.record_failure(row.id)
                            out.append(_sse(payload))
                            yield b"".join(out)
                            return
                        if isinstance(data, dict) and data.get("usage"):
                            usage = data["usage"]
                            forward = bool(data.get("choices")) or client_usage
                    if usage is None:
                        seen.append(payload)
                    if forward and restore is not None:
                        data = orjson.loads(payload)
                        if isinstance(data, dict):
                            payload = orjson.dumps(restore.chunk(data))
                    if forward:
                        out.append(_sse(payload))
                if out:
                    yield b"".join(out)
                if time.perf_counter() > deadline:
                    raise UpstreamError(f"stream exceeded {m.cfg.timeouts.total_s} s",
                                        kind="timeout")
                batch = await anext(agen, None)
            if usage is None:
                text, last_chunk = streamed_text(endpoint, seen)
                usage = self._account(row, m, None, endpoint, body, text, reference)
                if client_usage and last_chunk is not None:
                    yield _sse(orjson.dumps({
                        "id": last_chunk.get("id"), "object": last_chunk.get("object"),
                        "created": last_chunk.get("created"), "model": last_chunk.get("model"),
                        "choices": [], "usage": usage}))
            else:
                self._account(row, m, usage, endpoint, body, None, reference)
            # The row is journaled (decision WAL) before the last byte leaves: a kill after
            # this point cannot lose an answered request's row.
            row.status = 200
            finished = True
            row.latency_ms = (time.perf_counter() - t0) * 1000
            if self._logs_requests(row):  # the answer's text costs a parse of every chunk
                self._log_request(row, endpoint, body, streamed_text(endpoint, seen)[0])
            self._finish(row, principal)
            logged = True
            yield b"data: [DONE]\n\n"
            if cache_key is not None:
                self._remember(cache_key, cache_stage.body_from_stream(seen, usage), m.name)
        except UpstreamError as e:
            m.breaker.record_failure(row.id)
            row.status = 504 if e.kind == "timeout" else 502
            row.error = f"after the first token: {e}"[:2000]
            yield _error_event(f"The upstream stream failed: {e}", "upstream_error",
                               "upstream_stream_error")
        finally:
            with anyio.CancelScope(shield=True):
                await agen.aclose()
            if not logged:
                if not finished and row.status in (0, 200):
                    row.status = 499
                    row.error = "client disconnected before the end of the stream"
                if row.prompt_tokens is None:
                    # Disconnected or failed mid-way: bill what was generated so far.
                    self._account(row, m, usage, endpoint, body,
                                  streamed_text(endpoint, seen)[0], reference)
                row.latency_ms = (time.perf_counter() - t0) * 1000
                self._finish(row, principal)
