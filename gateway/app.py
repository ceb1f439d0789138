"""The gateway's ASGI application: /v1 (OpenAI protocol), /health, /admin, /metrics. The web
UI is mounted on it by the composition root (greengate.app), never imported from here."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backends import PoolConfig
from gateway import (
    admin,
    batches_api,
    docs_pages,
    files_api,
    finetune_api,
    openapi_models,
    replicas_api,
    reports_api,
    responses_api,
)
from gateway.auth import Principal
from gateway.errors import GatewayError, error_response
from gateway.files import namespace
from gateway.json_body import JsonBodyByDefault, not_json_message
from gateway.metrics_access import MetricsListener, check_route
from gateway.runtime import Runtime
from gateway.sessions import SessionStore
from gateway.settings import Settings
from gateway.shared_sessions import RedisSessionStore
from gateway.shared_state import RedisLink
from store import database, is_connection_error

log = logging.getLogger("greengate")


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64, description="The x-request-id.")
    score: float | None = Field(None, ge=0, le=1)
    thumbs: Literal["up", "down"] | None = None
    comment: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _one(self) -> FeedbackIn:
        if (self.score is None) == (self.thumbs is None):
            raise ValueError("give exactly one of score (0..1) or thumbs (up/down)")
        return self


# Young collections every 20,000 net container allocations instead of Python's 700. A served
# request leaves no cyclic garbage (tests/test_hot_path.py), so a young collection frees next
# to nothing: it walks the objects of the requests in flight and promotes them, and with 64
# streams open the default ran ~0.3 young collections per request, each later walked again by
# the older generations. At concurrency 64, streamed, that was ~400 ms of collection per
# ~1,000 requests, against ~35 ms with this threshold (2 collections); measured with
# gc.callbacks in the gateway, interleaved with the default, on this project's 2-core machine.
GC_GEN0_THRESHOLD = 20_000


def create_app(
    settings: Settings, pool_config: PoolConfig, admin_key: str, extractor: Any | None = None
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.rt = await Runtime.start(settings, pool_config, admin_key, extractor)
        try:
            listener = MetricsListener.start(settings, app.state.rt.metrics.registry)
        except Exception:
            await app.state.rt.stop()
            raise
        # Everything loaded at start (models, tables) out of the collector's reach: a full
        # collection then walks only what requests allocate, not a pause in the tail.
        gc.collect()
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(GC_GEN0_THRESHOLD, *thresholds[1:])
        try:
            yield
        finally:
            try:
                if listener is not None:
                    listener.stop()
                await app.state.rt.stop()
            finally:
                # The app object may outlive its serving (a test harness, a server that keeps
                # it): drop the runtime, its models and stores, so they do not go with it.
                app.state.rt = None
                gc.set_threshold(*thresholds)
                gc.unfreeze()  # what this app held can be collected again once it is gone

    app = FastAPI(
        title="greengate",
        version="0.1.0",
        summary="Energy-aware multi-model routing gateway (OpenAI-compatible).",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc with their assets served here (docs_pages): offline
        redoc_url=None,
    )
    docs_pages.install(app)
    app.add_middleware(JsonBodyByDefault)  # curl -d without Content-Type: still JSON

    def rt(request: Request) -> Runtime:
        return request.app.state.rt

    # /v1 endpoints read the raw body: the pass-through path must not pay for model parsing.
    async def chat(request: Request) -> Response:
        return await rt(request).proxy.handle(request, "chat/completions")

    async def completions(request: Request) -> Response:
        return await rt(request).proxy.handle(request, "completions")

    async def embeddings(request: Request) -> Response:
        return await rt(request).proxy.handle(request, "embeddings")

    # Described in /openapi.json by their request models (gateway.openapi_models), which
    # FastAPI does not parse: the handler reads the raw body.
    for path, handler, summary in (
            ("/v1/chat/completions", chat, "Create a chat completion"),
            ("/v1/completions", completions, "Create a (legacy) completion"),
            ("/v1/embeddings", embeddings, "Create embeddings")):
        app.add_api_route(path, handler, methods=["POST"], tags=["openai"], summary=summary,
                          response_class=Response,
                          openapi_extra=openapi_models.data_plane_route_extra(path))
    openapi_models.install(app)

    def model_entries(r: Runtime, principal: Principal) -> list[dict[str, Any]]:
        created = int(time.time())
        data = [{"id": "auto", "object": "model", "created": created, "owned_by": "greengate",
                 "description": "let greengate choose a member"}]
        team = namespace(principal.team)
        for m in r.pool.members.values():
            if not m.visible_to(team):  # another team's fine-tuned adapter
                continue
            if principal.may_use(m.name) or (
                    m.base_member is not None and principal.may_use(m.base_member)):
                entry = {"id": m.name, "object": "model", "created": created,
                         "owned_by": f"greengate:{m.cfg.kind}", "mode": m.cfg.mode,
                         "context_window": m.context_window}
                if m.base_member is not None:
                    entry["owned_by"], entry["parent"] = team, m.base_member
                if m.is_engine:
                    if m.backend.random_weights:
                        entry["description"] = ("bundled engine, RANDOM weights: a demo, "
                                                "not a model")
                    spec = m.backend.stats().get("speculative")
                    if spec is not None:
                        entry["speculative"] = {k: spec[k] for k in (
                            "method", "max_k", "adaptive", "acceptance", "mean_k")}
                data.append(entry)
        return data

    @app.get("/v1/models", tags=["openai"])
    async def models(request: Request) -> Response:
        r = rt(request)
        principal = await r.auth.authenticate(request)
        return Response(orjson.dumps({"object": "list", "data": model_entries(r, principal)}),
                        media_type="application/json")

    @app.get("/v1/models/{model_id:path}", tags=["openai"])
    async def model(request: Request, model_id: str) -> Response:
        """One model: a member this key may use, or 'auto'."""
        r = rt(request)
        principal = await r.auth.authenticate(request)
        for entry in model_entries(r, principal):
            if entry["id"] == model_id:
                return Response(orjson.dumps(entry), media_type="application/json")
        raise GatewayError(404, f"The model '{model_id}' does not exist in this greengate pool "
                           "(or this key may not use it); GET /v1/models lists them.",
                           param="model", code="model_not_found")

    @app.post("/v1/feedback", tags=["routing"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {
            "schema": FeedbackIn.model_json_schema()}}}})
    async def feedback(request: Request) -> dict:
        """Quality feedback on a served request: a score in [0, 1] or thumbs up/down. It is
        joined to the request's decision row and teaches the router; late feedback counts."""
        r = rt(request)
        principal = await r.auth.authenticate(request)  # before reading: no key, no parsing
        try:
            body = FeedbackIn.model_validate_json(await request.body())
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise GatewayError(400, f"{param or 'body'}: {first['msg']}", param=param,
                               code="invalid_feedback") from None
        score = body.score if body.score is not None else (1.0 if body.thumbs == "up" else 0.0)
        return await r.routing.feedback(principal, body.request_id, score, body.comment,
                                        r.decisions.is_pending)

    @app.get("/metrics", tags=["health"], include_in_schema=True)
    async def metrics(request: Request) -> Response:
        """Prometheus exposition: requests, latency, tokens, cost, energy by source, carbon,
        routing choices, budget refusals, queue depths. Who may read it:
        GREENGATE_METRICS_ACCESS (open, admin, or port: a listener of its own)."""
        r = rt(request)
        principal = (await r.auth.authenticate(request)
                     if settings.metrics_access == "admin" else None)
        check_route(settings, principal)
        return Response(r.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/health/live", tags=["health"])
    async def live() -> dict:
        return {"status": "ok"}

    @app.get("/health/ready", tags=["health"])
    async def ready(request: Request) -> Response:
        """Ready when the decision log keeps up. With the database away the gateway still
        serves from memory (database_outage: fail_open) and says "degraded"; fail_closed
        answers 503 then."""
        r = rt(request)
        body: dict[str, Any] = {"status": "ok", "database": "ok"}
        try:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(database.ping, r.engine)
        except Exception:  # any driver error means "not ready"
            # The driver's message can name hosts and users: it goes to the log, not to a
            # probe that anyone may call.
            log.exception("readiness: the database does not answer")
            body = {"status": "degraded", "database": "unreachable"}
            if settings.database_outage == "fail_closed":
                body["status"] = "unavailable"
        behind = r.decisions.behind()
        if behind is not None:
            body["status"] = "unavailable"
            body["decision_log"] = behind
        body["members"] = {m.name: m.breaker.state() for m in r.pool.members.values()}
        body["decisions_pending"] = r.decisions.pending
        body["decisions_journaled"] = r.decisions.journaled
        body["decisions_quarantined"] = r.decisions.quarantined
        return JSONResponse(body, status_code=503 if body["status"] == "unavailable" else 200)

    app.include_router(finetune_api.router)
    app.include_router(finetune_api.admin_router)
    app.include_router(files_api.router)
    app.include_router(responses_api.router)
    app.include_router(batches_api.router)
    app.include_router(admin.router)
    app.include_router(reports_api.router)
    app.include_router(replicas_api.router)
    # The web UI's sign-ins (/admin accepts them too): in Redis when replicas share state, so
    # a load balancer needs no sticky sessions.
    app.state.sessions = SessionStore() if not settings.redis_url else RedisSessionStore(
        RedisLink(settings.redis_url), settings.redis_prefix, settings.redis_url)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # the body is not JSON at all
            return error_response(GatewayError(400, not_json_message(first["msg"]),
                                               code="invalid_json"))
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return error_response(GatewayError(422, f"{param or 'request'}: {first['msg']}",
                                           param=param, code="invalid_field"))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        return error_response(GatewayError(exc.status_code, str(exc.detail)))

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> Response:
        # The driver's text names hosts and users: the log gets it, the caller a clear status.
        if is_connection_error(exc):
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                        type(exc.orig).__name__ if exc.orig else exc)
            return error_response(GatewayError(
                503, "The database is unavailable; retry shortly.", code="database_unavailable",
                headers={"retry-after": "5"}))
        if isinstance(exc, DataError):
            return error_response(GatewayError(
                400, "A value in this request cannot be stored (too long, or characters the "
                "database refuses).", code="unstorable_value"))
        if isinstance(exc, IntegrityError):
            return error_response(GatewayError(409, "This conflicts with what is stored.",
                                               code="conflict"))
        log.exception("database error on %s %s", request.method, request.url.path)
        return error_response(GatewayError(500, "Internal error in greengate; it has been logged."))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(GatewayError(500, "Internal error in greengate; it has been logged."))

    return app
