"""/v1/files: OpenAI's Files API over the shared FileStore, scoped to the caller's team."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from gateway.errors import GatewayError
from gateway.files import (
    UPLOAD_PURPOSES,
    FileNotFound,
    FileStore,
    FileTooLarge,
    InvalidFile,
    namespace,
)

router = APIRouter(prefix="/v1/files", tags=["openai"])
MULTIPART_SLACK = 64 * 1024  # the form's other fields and boundaries around the file
EXPIRES_MIN_S, EXPIRES_MAX_S = 3600, 30 * 86400  # OpenAI's bounds for expires_after


def _store(request: Request) -> FileStore:
    return request.app.state.rt.files


async def _team(request: Request) -> str:
    principal = await request.app.state.rt.auth.authenticate(request)
    return namespace(principal.team)


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def not_found(e: FileNotFound) -> GatewayError:
    return GatewayError(404, str(e), param="file_id", code="file_not_found")


def _bad(message: str, param: str | None, code: str = "invalid_file") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def _expires(form: Any) -> float | None:
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise _bad("expires_after[anchor] must be 'created_at'.", "expires_after.anchor",
                   "invalid_value")
    if not isinstance(seconds, str) or not seconds.isdigit() or not (
            EXPIRES_MIN_S <= int(seconds) <= EXPIRES_MAX_S):
        raise _bad(f"expires_after[seconds] must be an integer from {EXPIRES_MIN_S} to "
                   f"{EXPIRES_MAX_S}.", "expires_after.seconds", "invalid_value")
    return float(seconds)


@router.post("", summary="Upload a file", openapi_extra={"requestBody": {
    "required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "purpose"], "properties": {
            "file": {"type": "string", "format": "binary"},
            "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)}}}}}}})
async def upload(request: Request) -> Response:
    """A file for a batch, a fine-tuning job, ... stored whole or not at all. JSONL purposes
    (batch, fine-tune, evals) are checked line by line; a bad line is named in the 400."""
    team = await _team(request)  # before reading the body: no key, no parsing
    store = _store(request)
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise _bad("Upload files as multipart/form-data with the fields 'file' and "
                   "'purpose'.", None, "invalid_content_type")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > store.max_bytes + MULTIPART_SLACK:
        raise GatewayError(413, f"The file is larger than the limit of {store.max_bytes} "
                           "bytes.", param="file", code="file_too_large")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as e:  # starlette's MultiPartException and malformed bodies
        raise _bad(f"The multipart body cannot be read: {e}", None, "invalid_multipart") \
            from None
    try:
        upload_ = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload_, UploadFile):
            raise _bad("'file' is required: the file's content as a multipart file field.",
                       "file")
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            raise _bad(f"'purpose' must be one of {', '.join(UPLOAD_PURPOSES)}.", "purpose",
                       "invalid_purpose")
        filename = (upload_.filename or "upload")[:512]
        expires = _expires(form)
        if upload_.size is not None and upload_.size > store.max_bytes:
            raise GatewayError(413, f"The file is larger than the limit of {store.max_bytes} "
                               "bytes.", param="file", code="file_too_large")
        try:
            record = await run_in_threadpool(store.create, team, filename, purpose,
                                             upload_.file, expires)
        except FileTooLarge as e:
            raise GatewayError(413, str(e), param="file", code="file_too_large") from None
        except InvalidFile as e:
            raise _bad(f"{filename}: {e}", "file") from None
    finally:
        await form.close()
    return _json(record.to_openai())


@router.get("", summary="List files")
async def list_files(request: Request, purpose: str | None = None, limit: int = 10_000,
                     after: str | None = None, order: str = "desc") -> Response:
    team = await _team(request)
    if not 1 <= limit <= 10_000:
        raise _bad("'limit' must be from 1 to 10000.", "limit", "invalid_value")
    if order not in ("asc", "desc"):
        raise _bad("'order' must be 'asc' or 'desc'.", "order", "invalid_value")
    try:
        rows, more = await run_in_threadpool(_store(request).list, team, purpose, limit, after,
                                             order)
    except FileNotFound:
        raise _bad(f"'after' names no file of this team: {after}", "after",
                   "invalid_value") from None
    data = [r.to_openai() for r in rows]
    return _json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                  "last_id": data[-1]["id"] if data else None, "has_more": more})


@router.get("/{file_id}", summary="Retrieve a file's metadata")
async def retrieve(request: Request, file_id: str) -> Response:
    team = await _team(request)
    try:
        return _json((await run_in_threadpool(_store(request).get, team, file_id)).to_openai())
    except FileNotFound as e:
        raise not_found(e) from None


@router.get("/{file_id}/content", summary="Retrieve a file's content")
async def content(request: Request, file_id: str) -> Response:
    team = await _team(request)
    store = _store(request)
    try:
        record = await run_in_threadpool(store.get, team, file_id)
        chunks = await run_in_threadpool(store.iter_chunks, team, file_id)
    except FileNotFound as e:
        raise not_found(e) from None
    safe = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                   for c in record.filename)
    return StreamingResponse(iterate_in_threadpool(chunks),
                             media_type="application/octet-stream",
                             headers={"content-length": str(record.bytes),
                                      "content-disposition": f'attachment; filename="{safe}"'})


@router.delete("/{file_id}", summary="Delete a file")
async def remove(request: Request, file_id: str) -> Response:
    team = await _team(request)
    try:
        record = await run_in_threadpool(_store(request).delete, team, file_id)
    except FileNotFound as e:
        raise not_found(e) from None
    return _json({"id": record.id, "object": "file", "deleted": True})
