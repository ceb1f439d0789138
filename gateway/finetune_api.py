"""/v1/fine_tuning/jobs: OpenAI's fine-tuning API (create, list, retrieve, cancel, events,
checkpoints) for the caller's team; /admin/fine_tuning/jobs: the same jobs across teams for
the admin pages (a team's web session reads its own)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from gateway.admin import TEAM_READABLE, require_admin, team_scope
from gateway.auth import Principal
from gateway.errors import GatewayError
from gateway.finetune_service import FineTuningService

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai"])
admin_router = APIRouter(prefix="/admin/fine_tuning/jobs", tags=["admin"],
                         dependencies=[Depends(require_admin)])
Limit = Query(20, ge=1, le=100)


def _service(request: Request) -> FineTuningService:
    return request.app.state.rt.finetune


async def _caller(request: Request) -> Principal:
    return await request.app.state.rt.auth.authenticate(request)


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


@router.post("", summary="Create a fine-tuning job", openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["model", "training_file"], "properties": {
            "model": {"type": "string"}, "training_file": {"type": "string"},
            "validation_file": {"type": "string"}, "suffix": {"type": "string"},
            "seed": {"type": "integer"}, "method": {"type": "object"},
            "hyperparameters": {"type": "object"}, "metadata": {"type": "object"},
            "greengate": {"type": "object", "description": "LoRA options: rank, alpha, "
                          "targets, max_seq_len, checkpoint_every, weight_decay"}}}}}}})
async def create(request: Request) -> Response:
    """Checks the body, the base member and both files (every line) before a job exists: a
    bad one is a 400 naming the line and the field."""
    principal = await _caller(request)
    raw = await request.body()
    if len(raw) > request.app.state.rt.settings.max_body_bytes:
        raise GatewayError(413, "Request body is too large.", code="request_too_large")
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as e:
        raise GatewayError(400, f"The request body is not valid JSON: {e}",
                           code="invalid_json") from None
    return _json(await _service(request).create(principal, body))


@router.get("", summary="List fine-tuning jobs")
async def list_jobs(request: Request, after: str | None = None, limit: int = Limit) -> Response:
    return _json(await _service(request).list(await _caller(request), after, limit))


@router.get("/{job_id}", summary="Retrieve a fine-tuning job")
async def retrieve(request: Request, job_id: str) -> Response:
    return _json(await _service(request).get(await _caller(request), job_id))


@router.post("/{job_id}/cancel", summary="Cancel a fine-tuning job")
async def cancel(request: Request, job_id: str) -> Response:
    return _json(await _service(request).cancel(await _caller(request), job_id))


@router.get("/{job_id}/events", summary="List a job's events")
async def events(request: Request, job_id: str, after: str | None = None,
                 limit: int = Limit) -> Response:
    return _json(await _service(request).events(await _caller(request), job_id, after, limit))


@router.get("/{job_id}/checkpoints", summary="List a job's checkpoints")
async def checkpoints(request: Request, job_id: str, after: str | None = None,
                      limit: int = Query(10, ge=1, le=100)) -> Response:
    return _json(await _service(request).checkpoints(await _caller(request), job_id, after,
                                                     limit))


# ---- admin (the UI's jobs pages) --------------------------------------------------------
@admin_router.get("", openapi_extra=TEAM_READABLE)
async def admin_list(request: Request, p: Principal = Depends(require_admin),
                     team: str | None = None, after: str | None = None,
                     limit: int = Query(50, ge=1, le=500)) -> Response:
    """Every team's jobs for the admin (or one team's: `team`); a team session its own."""
    scope = team_scope(p, team)
    return _json(await _service(request).list(p, after, limit, team=scope, any_team=True))


async def _visible(request: Request, p: Principal, job_id: str) -> dict[str, Any]:
    job = await _service(request).detail(job_id)
    if not p.is_admin and job["organization_id"] != p.team:
        raise GatewayError(404, f"No fine-tuning job '{job_id}' for this team.",
                           code="fine_tuning_job_not_found")
    return job


@admin_router.get("/{job_id}", openapi_extra=TEAM_READABLE)
async def admin_detail(request: Request, job_id: str,
                       p: Principal = Depends(require_admin)) -> Response:
    """The job with its loss curve (every metrics event) and whether its adapter serves."""
    return _json(await _visible(request, p, job_id))


@admin_router.get("/{job_id}/events", openapi_extra=TEAM_READABLE)
async def admin_events(request: Request, job_id: str, p: Principal = Depends(require_admin),
                       after: str | None = None,
                       limit: int = Query(50, ge=1, le=500)) -> Response:
    await _visible(request, p, job_id)
    return _json(await _service(request).events(p, job_id, after, limit, any_team=True))


@admin_router.get("/{job_id}/checkpoints", openapi_extra=TEAM_READABLE)
async def admin_checkpoints(request: Request, job_id: str,
                            p: Principal = Depends(require_admin)) -> Response:
    await _visible(request, p, job_id)
    return _json(await _service(request).checkpoints(p, job_id, None, 100, any_team=True))
