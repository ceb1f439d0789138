"""/v1/batches: OpenAI's Batch API over the BatchService, scoped to the caller's team."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.batches import BatchService
from gateway.errors import GatewayError
from gateway.files import namespace

router = APIRouter(prefix="/v1/batches", tags=["openai"])


def _service(request: Request) -> BatchService:
    return request.app.state.rt.batches


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


@router.post("", summary="Create a batch", openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["input_file_id", "endpoint", "completion_window"],
        "properties": {
            "input_file_id": {"type": "string"},
            "endpoint": {"type": "string", "enum": ["/v1/chat/completions", "/v1/completions",
                                                    "/v1/embeddings"]},
            "completion_window": {"type": "string", "example": "24h"},
            "metadata": {"type": "object", "description": '{"schedule": "now"} runs it at '
                         "once; otherwise it is planned into the cleanest hours of its window."},
        }}}}}})
async def create(request: Request) -> Response:
    """Validated whole (a bad line is named, nothing is created), then scheduled into the hours
    of its completion window with the lowest grid carbon intensity and pool load."""
    principal = await request.app.state.rt.auth.authenticate(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as e:
        raise GatewayError(400, f"The request body is not valid JSON: {e}",
                           code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.")
    return _json(await run_in_threadpool(
        _service(request).create, principal, namespace(principal.team),
        body.get("input_file_id"), body.get("endpoint"), body.get("completion_window"),
        body.get("metadata")))


@router.get("", summary="List batches")
async def list_batches(request: Request, limit: int = 20, after: str | None = None) -> Response:
    principal = await request.app.state.rt.auth.authenticate(request)
    if not 1 <= limit <= 100:
        raise GatewayError(400, "'limit' must be from 1 to 100.", param="limit",
                           code="invalid_value")
    return _json(await run_in_threadpool(_service(request).list, namespace(principal.team),
                                         limit, after))


@router.get("/{batch_id}", summary="Retrieve a batch")
async def retrieve(request: Request, batch_id: str) -> Response:
    principal = await request.app.state.rt.auth.authenticate(request)
    return _json(await run_in_threadpool(_service(request).get, namespace(principal.team),
                                         batch_id))


@router.post("/{batch_id}/cancel", summary="Cancel a batch")
async def cancel(request: Request, batch_id: str) -> Response:
    principal = await request.app.state.rt.auth.authenticate(request)
    return _json(await run_in_threadpool(_service(request).cancel, namespace(principal.team),
                                         batch_id))
