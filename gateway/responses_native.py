"""/v1/responses passed through to members that speak Responses (`responses: native`).

The request is the client's own body (gateway.responses.native_body): greengate's stored
conversation is expanded into `input` rather than forwarding previous_response_id, because the
member may never have seen the earlier turns (routing may have served them on another member,
or it forgets them), and it is sent with store: false since greengate holds the conversation.
The answer passes through, whole or event by event: a streamed event is re-serialised only when
something in it must change (greengate's response id and the request's own fields on the
response snapshots, PII placeholders put back). Routing, the cache, safety, budgets and the
decision row are the chat path's (gateway.proxy), which calls this module for the members
that speak Responses and translates for the rest, so one request may fall back across both."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from starlette.responses import Response, StreamingResponse

from backends import UpstreamError, UpstreamRequest, UpstreamResponse
from gateway import responses as rs
from gateway.errors import GatewayError
from gateway.pool import PoolMember
from gateway.stages import SSE_HEADERS, Exchange
from routing.safety import pii

if TYPE_CHECKING:
    from gateway.proxy import Proxy

Save = Callable[[dict[str, Any], str | None], Awaitable[None]]
_COMPLETED = ("response.completed", "response.incomplete")
_FAILED = ("response.failed", "error")
_DELTAS = {"response.output_text.delta": "text",
           "response.function_call_arguments.delta": "arguments"}
_DONES = {"response.output_text.done": "text",
          "response.function_call_arguments.done": "arguments"}


def speaks_responses(m: PoolMember) -> bool:
    return m.cfg.responses == "native"


def _sse(kind: str, data: bytes) -> bytes:
    head = b"event: " + kind.encode() + b"\n" if kind else b""
    return head + b"data: " + data + b"\n\n"


def _parse(payload: bytes) -> dict[str, Any] | None:
    try:
        ev = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return ev if isinstance(ev, dict) else None


def restore_items(obj: Any, redactor: pii.Redactor) -> None:
    """Put redacted values back into output items (or one item, or one content part)."""
    if isinstance(obj, list):
        for o in obj:
            restore_items(o, redactor)
        return
    if not isinstance(obj, dict):
        return
    kind = obj.get("type")
    if kind == "output_text" and isinstance(obj.get("text"), str):
        obj["text"] = redactor.restore(obj["text"])
    elif kind == "refusal" and isinstance(obj.get("refusal"), str):
        obj["refusal"] = redactor.restore(obj["refusal"])
    elif kind == "function_call" and isinstance(obj.get("arguments"), str):
        obj["arguments"] = redactor.restore(obj["arguments"])
    elif kind == "message":
        restore_items(obj.get("content"), redactor)


class EventRestore:
    """PII placeholders back to their values in a Responses stream: deltas through a stream
    restorer per item and content part (a placeholder split across deltas comes out whole),
    the text held back at a part's end sent as one more delta before its `.done`."""

    def __init__(self, redactor: pii.Redactor) -> None:
        self.redactor = redactor
        self._open: dict[tuple[Any, Any], pii.StreamRestorer] = {}

    def event(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        """Restore `ev` in place; the delta to send before it, if any."""
        kind = ev.get("type")
        key = (ev.get("item_id"), ev.get("content_index"))
        if kind in _DELTAS and isinstance(ev.get("delta"), str):
            r = self._open.setdefault(key, self.redactor.stream_restorer())
            ev["delta"] = r.feed(ev["delta"])
            return None
        extra = None
        if kind in _DONES:
            r = self._open.pop(key, None)
            rest = r.flush() if r is not None else ""
            if rest:
                extra = {k: ev[k] for k in ("item_id", "output_index", "content_index",
                                            "sequence_number") if k in ev}
                extra.update(type=kind.replace(".done", ".delta"), delta=rest)
            name = _DONES[kind]
            if isinstance(ev.get(name), str):
                ev[name] = self.redactor.restore(ev[name])
        for name in ("item", "part"):
            restore_items(ev.get(name), self.redactor)
        if isinstance(ev.get("response"), dict):
            restore_items(ev["response"].get("output"), self.redactor)
        return extra


class NativeCall:
    """One /v1/responses request on the proxy's path: the Responses body for each member that
    speaks Responses, and the answer from such a member (greengate's id on it, its accounting,
    the conversation stored). `served` says the answer is already a Response."""

    def __init__(self, rid: str, state: Callable[[], tuple[rs.ResponsesRequest,
                                                           list[dict[str, Any]]]],
                 save: Save) -> None:
        self.rid = rid
        self._state = state  # the parsed request and the stored history (after prepare)
        self._save = save
        self.served = False
        self._done = False  # the decision row is written

    speaks = staticmethod(speaks_responses)

    def request(self, m: PoolMember, chat: dict[str, Any], stream: bool,
                redacted: bool) -> UpstreamRequest:
        req, history = self._state()
        body = rs.native_body(req, history, m.backend.upstream_model, stream,
                              chat["messages"] if redacted else None)
        return UpstreamRequest("responses", body, stream)

    def own(self, response: dict[str, Any], row_features: dict[str, Any] | None) -> None:
        """greengate's id and the request's own state on the member's Response."""
        req, _ = self._state()
        if row_features is not None and "upstream_response_id" not in row_features:
            row_features["upstream_response_id"] = response.get("id")
        response["id"] = self.rid
        response["previous_response_id"] = req.previous_response_id
        response["store"] = req.store
        response["instructions"] = req.body.get("instructions")  # the caller's, unredacted

    @staticmethod
    def _features(x: Exchange) -> dict[str, Any]:
        if x.row.features is None:
            x.row.features = {}
        x.row.features["responses_api"] = "native"
        return x.row.features

    def _settle(self, proxy: Proxy, x: Exchange, m: PoolMember, response: dict[str, Any],
                text: str) -> None:
        """A finished answer: tokens, cost, energy, the cache, the request log, the row."""
        plan, row = x.plan, x.row
        assert plan is not None
        usage = rs.usage_to_chat(response.get("usage"))
        usage = proxy._account(row, m, usage, x.endpoint, x.body, None if usage else text,
                               plan.reference)
        if (plan.cache_key is not None and response.get("status") == "completed"
                and not rs.has_calls(response.get("output"))):
            proxy._remember(plan.cache_key, rs.chat_from_response(response, usage), m.name)
        row.served_member = m.name
        row.upstream_model = str(response.get("model") or m.backend.upstream_model)[:256]
        row.status = 200
        row.latency_ms = (time.perf_counter() - x.t0) * 1000
        proxy._log_request(row, x.endpoint, x.body, text)
        proxy._finish(row, x.principal)
        self._done = True

    # ---- non-streamed --------------------------------------------------------------------
    async def complete(self, proxy: Proxy, x: Exchange, m: PoolMember,
                       resp: UpstreamResponse) -> Response:
        data = resp.data
        if data.get("object") != "response" or not isinstance(data.get("output"), list):
            m.breaker.record_failure(x.rid)
            raise GatewayError(502, f"The member '{m.name}' answered /responses with "
                               "something that is not a Response object.",
                               code="upstream_error")
        self.served = True
        features = self._features(x)
        self.own(data, features)
        text = rs.output_text(data["output"])  # as the member wrote it (redacted, if so)
        assert x.plan is not None
        if x.plan.redactor is not None:
            restore_items(data["output"], x.plan.redactor)
        x.row.ttft_ms = (time.perf_counter() - x.t0) * 1000
        self._settle(proxy, x, m, data, text)
        if data.get("status") != "failed":
            await self._save(data, x.rid)
        return Response(orjson.dumps(data), media_type="application/json",
                        headers=proxy._served_headers(x.rid, m, x.row))

    # ---- streamed ------------------------------------------------------------------------
    def stream(self, proxy: Proxy, x: Exchange, m: PoolMember,
               agen: AsyncIterator[list[bytes]], first: list[bytes]) -> StreamingResponse:
        self.served = True
        self._features(x)
        x.row.ttft_ms = (time.perf_counter() - x.t0) * 1000
        x.row.served_member = m.name
        x.row.upstream_model = m.backend.upstream_model
        return StreamingResponse(self._relay(proxy, x, m, agen, first),
                                 media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **proxy._served_headers(x.rid, m, x.row)})

    def _failed_event(self, snapshot: dict[str, Any] | None, e: UpstreamError) -> bytes:
        """The stream broke after it began: response.failed, which the SDK raises on."""
        response = dict(snapshot or {"id": self.rid, "object": "response", "output": []})
        response.update(status="failed", error={"code": "upstream_stream_error",
                                                "message": f"The upstream stream failed: {e}"})
        return _sse("response.failed", orjson.dumps({"type": "response.failed",
                                                     "response": response}))

    async def _relay(self, proxy: Proxy, x: Exchange, m: PoolMember,
                     agen: AsyncIterator[list[bytes]], first: list[bytes]
                     ) -> AsyncIterator[bytes]:
        row, plan = x.row, x.plan
        assert plan is not None
        restore = EventRestore(plan.redactor) if plan.redactor is not None else None
        deadline = x.t0 + m.cfg.timeouts.total_s
        text: list[str] = []  # the answer as the member wrote it, for the log and counting
        snapshot: dict[str, Any] | None = None
        over = False  # a terminal event went out; what follows is ignored
        try:
            batch: list[bytes] | None = first
            while batch is not None:
                out: list[bytes] = []
                for payload in batch:
                    ev = None if over else _parse(payload)
                    if ev is None:
                        continue
                    kind = str(ev.get("type") or "")
                    changed = restore is not None
                    if kind == "response.output_text.delta":
                        text.append(str(ev.get("delta") or ""))
                    if isinstance(ev.get("response"), dict):
                        self.own(ev["response"], row.features)
                        snapshot, changed = ev["response"], True
                    if restore is not None:
                        extra = restore.event(ev)
                        if extra is not None:
                            out.append(_sse(str(extra["type"]), orjson.dumps(extra)))
                    data = orjson.dumps(ev) if changed else payload
                    if kind in _COMPLETED and snapshot is not None:
                        # Account, write the row and store the turn before the client sees
                        # the end: a follow-up with previous_response_id finds it.
                        if out:
                            yield b"".join(out)
                            out = []
                        self._settle(proxy, x, m, snapshot, "".join(text))
                        await self._save(snapshot, x.rid)
                        over = True
                    elif kind in _FAILED:
                        err = (snapshot or {}).get("error") if kind != "error" else ev
                        row.status = 502
                        row.error = str((err or {}).get("message") or kind)[:2000]
                        m.breaker.record_failure(row.id)
                        over = True
                    out.append(_sse(kind, data))
                if out:
                    yield b"".join(out)
                if not over and time.perf_counter() > deadline:
                    raise UpstreamError(f"stream exceeded {m.cfg.timeouts.total_s} s",
                                        kind="timeout")
                batch = await anext(agen, None)
            if not over:
                raise UpstreamError("the member closed the stream before response.completed",
                                    kind="protocol")
        except UpstreamError as e:
            m.breaker.record_failure(row.id)
            row.status = 504 if e.kind == "timeout" else 502
            row.error = f"after the first event: {e}"[:2000]
            yield self._failed_event(snapshot, e)
        finally:
            with anyio.CancelScope(shield=True):
                await agen.aclose()
            if not self._done:
                if row.status in (0, 200):
                    row.status = 499
                    row.error = "client disconnected before the end of the stream"
                if row.prompt_tokens is None:  # bill what was generated so far
                    usage = rs.usage_to_chat((snapshot or {}).get("usage"))
                    proxy._account(row, m, usage, x.endpoint, x.body,
                                   None if usage else "".join(text), plan.reference)
                row.latency_ms = (time.perf_counter() - x.t0) * 1000
                proxy._finish(row, x.principal)
                self._done = True
