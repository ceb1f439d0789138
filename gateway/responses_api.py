"""/v1/responses: OpenAI's Responses API, served through the chat path of the proxy.

The request is translated to one chat request (gateway.responses) and handed to the proxy, so
routing, the cache, safety, budgets and the decision row (endpoint "responses") apply exactly
as for chat; a chat member's answer is translated back, and a member that speaks Responses
(`responses: native`) is sent the request as Responses and its answer passes through
(gateway.responses_native). Conversation state (previous_response_id) is stored per team
unless `store: false`, whichever member answered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from gateway import responses as rs
from gateway.errors import GatewayError
from gateway.files import namespace
from gateway.response_store import ResponseNotFound, ResponseStore
from gateway.responses_native import NativeCall

log = logging.getLogger("greengate.responses")
router = APIRouter(prefix="/v1/responses", tags=["openai"])
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_KEPT_HEADERS = ("x-request-id", "x-greengate-member", "x-greengate-cache",
                 "x-greengate-constraint")


def _store(request: Request) -> ResponseStore:
    return request.app.state.rt.responses


def _json(data: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), media_type="application/json", headers=headers)


def _not_found(e: ResponseNotFound) -> GatewayError:
    return GatewayError(404, str(e), param="response_id", code="response_not_found")


class Turn:
    """One Responses request on its way through the proxy: parsed in the proxy's try block
    (so a bad request still gets its decision row), answered after."""

    def __init__(self, store: ResponseStore, body: Any) -> None:
        self.store = store
        self.raw = body
        self.req: rs.ResponsesRequest | None = None
        self.history: list[dict[str, Any]] = []
        self.team = ""

    async def prepare(self, team: str | None) -> dict[str, Any]:
        """The chat body; raises GatewayError (400) naming the bad field."""
        self.team = namespace(team)
        self.req = rs.parse(self.raw)
        prev = self.req.previous_response_id
        if prev is not None:
            try:
                conv = await asyncio.to_thread(self.store.get, self.team, prev)
            except ResponseNotFound as e:
                raise GatewayError(400, str(e), param="previous_response_id",
                                   code="previous_response_not_found") from None
            self.history = conv.messages
            self.req.chat = rs.chat_body(self.req, self.history)
        return self.req.chat

    async def save(self, response: dict[str, Any], request_id: str | None) -> None:
        assert self.req is not None
        if not self.req.store or response.get("status") == "failed":
            return
        messages = self.history + self.req.messages + rs.output_to_messages(response["output"])
        try:
            await asyncio.to_thread(self.store.save, self.team, response, self.req.input_items,
                                    messages, request_id)
        except Exception:  # the answer is already out: the log says the state was lost
            log.exception("storing response %s failed", response.get("id"))


def _kept(resp: Response) -> dict[str, str]:
    return {h: resp.headers[h] for h in _KEPT_HEADERS if h in resp.headers}


def _sse_payloads(buffer: bytearray) -> list[bytes]:
    """Whole `data:` payloads at the front of buffer (which keeps any partial event)."""
    out = []
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return out
        event = bytes(buffer[:end])
        del buffer[:end + 2]
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                out.append(line[5:].strip())


async def _events(turn: Turn, tr: rs.StreamTranslator, chat: StreamingResponse,
                  request_id: str | None) -> AsyncIterator[bytes]:
    buffer = bytearray()
    failed = False
    try:
        yield b"".join(tr.start())
        async for piece in chat.body_iterator:
            buffer += piece if isinstance(piece, bytes) else str(piece).encode()
            out: list[bytes] = []
            for payload in _sse_payloads(buffer):
                if payload == b"[DONE]":
                    continue
                try:
                    data = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(data, dict) and isinstance(data.get("error"), dict):
                    err = data["error"]
                    out += tr.fail(str(err.get("message")), err.get("code"))
                    failed = True
                    break
                if isinstance(data, dict):
                    out += tr.chunk(data)
            if out:
                yield b"".join(out)
            if failed:
                break
        if not failed:
            yield b"".join(tr.finish())
            assert tr.response is not None
            await turn.save(tr.response, request_id)
    finally:
        closer = getattr(chat.body_iterator, "aclose", None)
        if closer is not None:
            await closer()


@router.post("", summary="Create a model response", response_class=Response)
async def create(request: Request) -> Response:
    """Text or items in, a Response out (streamed as Responses events with stream: true)."""
    rt = request.app.state.rt
    turn: Turn | None = None
    rid = rs.new_id("resp")

    async def prepare(principal: Any, body: Any) -> dict[str, Any]:
        nonlocal turn
        turn = Turn(_store(request), body)
        return await turn.prepare(principal.team)

    def state() -> tuple[rs.ResponsesRequest, list[dict[str, Any]]]:
        assert turn is not None and turn.req is not None
        return turn.req, turn.history

    async def save(response: dict[str, Any], request_id: str | None) -> None:
        assert turn is not None
        await turn.save(response, request_id)

    native = NativeCall(rid, state, save)
    chat = await rt.proxy.handle_translated(request, "chat/completions", prepare,
                                            row_endpoint="responses", native=native)
    if chat.status_code != 200 or turn is None or turn.req is None or native.served:
        return chat  # an error, or a member's own Response (already greengate's)
    req = turn.req
    headers = _kept(chat)
    member = headers.get("x-greengate-member")
    if isinstance(chat, StreamingResponse):
        tr = rs.StreamTranslator(req, rid, member or req.body["model"])
        return StreamingResponse(_events(turn, tr, chat, headers.get("x-request-id")),
                                 media_type="text/event-stream",
                                 headers={**_SSE_HEADERS, **headers})
    data = orjson.loads(chat.body)
    output, finish = rs.output_from_chat(data)
    response = rs.response_object(req, rid, int(data.get("created") or rs.now()),
                                  member or str(data.get("model") or req.body["model"]),
                                  output, rs.usage_from_chat(data.get("usage")),
                                  finish_reason=finish)
    await turn.save(response, headers.get("x-request-id"))
    return _json(response, headers)


@router.get("/{response_id}", summary="Retrieve a stored response")
async def retrieve(request: Request, response_id: str) -> Response:
    principal = await request.app.state.rt.auth.authenticate(request)
    try:
        conv = await asyncio.to_thread(_store(request).get, namespace(principal.team),
                                       response_id)
    except ResponseNotFound as e:
        raise _not_found(e) from None
    return _json(conv.response)


@router.delete("/{response_id}", summary="Delete a stored response")
async def remove(request: Request, response_id: str) -> Response:
    principal = await request.app.state.rt.auth.authenticate(request)
    try:
        await asyncio.to_thread(_store(request).delete, namespace(principal.team), response_id)
    except ResponseNotFound as e:
        raise _not_found(e) from None
    return _json({"id": response_id, "object": "response", "deleted": True})


@router.get("/{response_id}/input_items", summary="List a stored response's input items")
async def input_items(request: Request, response_id: str, limit: int = 20,
                      order: str = "desc", after: str | None = None) -> Response:
    principal = await request.app.state.rt.auth.authenticate(request)
    if not 1 <= limit <= 100:
        raise GatewayError(400, "'limit' must be from 1 to 100.", param="limit",
                           code="invalid_value")
    if order not in ("asc", "desc"):
        raise GatewayError(400, "'order' must be 'asc' or 'desc'.", param="order",
                           code="invalid_value")
    try:
        conv = await asyncio.to_thread(_store(request).get, namespace(principal.team),
                                       response_id)
    except ResponseNotFound as e:
        raise _not_found(e) from None
    items = conv.input_items if order == "asc" else list(reversed(conv.input_items))
    if after is not None:
        ids = [i.get("id") for i in items]
        if after not in ids:
            raise GatewayError(400, f"'after' names no input item of this response: {after}",
                               param="after", code="invalid_value")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return _json({"object": "list", "data": page,
                  "first_id": page[0]["id"] if page else None,
                  "last_id": page[-1]["id"] if page else None,
                  "has_more": len(items) > limit})
