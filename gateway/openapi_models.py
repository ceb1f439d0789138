"""The data plane's request and error shapes, for /openapi.json only.

The /v1 handlers read the raw body (the pass-through path does not pay for model parsing, and
gateway.proxy.validate gives OpenAI-style errors); these models describe what they accept, as
OpenAI's API does, so schema-driven tools and fuzzers see the data plane. Unknown fields are
allowed and passed to the upstream, as OpenAI-compatible servers expect."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

TokenIds = list[int]
Stop = str | list[str] | None


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageUrl(_Open):
    url: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageUrl


class OtherPart(_Open):
    type: Literal["input_audio", "file", "refusal"]


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | ImagePart | OtherPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Open):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDef


class StreamOptions(_Open):
    include_usage: bool | None = None


class _Sampling(_Open):
    model: str = Field(min_length=1, description="A pool member's name, or 'auto' to route.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: Stop = None
    seed: int | None = None
    user: str | None = None
    request_timeout_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="greengate extension: this request's deadline in "
        "seconds across every attempt and member (it can shorten the gateway's, not lengthen "
        "it). Never sent upstream.",
    )


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions, as OpenAI accepts it."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    """POST /v1/completions (legacy), as OpenAI accepts it."""

    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(
        description="A string, strings, token ids, or arrays of token ids."
    )
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None


class EmbeddingRequest(_Open):
    """POST /v1/embeddings, as OpenAI accepts it."""

    model: str = Field(min_length=1)
    input: str | list[str] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error greengate answers, with its HTTP status."""

    error: ErrorDetail


DATA_PLANE: dict[str, tuple[type[BaseModel], str]] = {
    "/v1/chat/completions": (
        ChatCompletionRequest,
        "A chat completion (or an SSE stream of "
        "chunks with stream: true), from the named member or, for "
        "'auto', the one the router picks.",
    ),
    "/v1/completions": (CompletionRequest, "A legacy text completion (or its SSE stream)."),
    "/v1/embeddings": (EmbeddingRequest, "Embeddings from an embedding member."),
}
_ERRORS = {
    400: "Bad input",
    401: "No or wrong API key",
    403: "Not allowed for this key",
    404: "Unknown model",
    413: "Body too large",
    429: "Budget or upstream rate limit",
    502: "Upstream failed",
    503: "Members cooling down, upstream or database away",
    504: "The request's deadline or an upstream timeout",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def data_plane_route_extra(path: str) -> dict[str, Any]:
    """The openapi_extra of one /v1 route: its request model, and OpenAI-shaped errors."""
    model, description = DATA_PLANE[path]
    ok: dict[str, Any] = {"type": "object", "additionalProperties": True}
    content: dict[str, Any] = {"application/json": {"schema": ok}}
    if path != "/v1/embeddings":
        content["text/event-stream"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {"200": {"description": description, "content": content}}
    for status, text in _ERRORS.items():
        responses[str(status)] = {
            "description": text,
            "content": {"application/json": {"schema": _ref("ErrorResponse")}},
        }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref(model.__name__)}},
        },
        "responses": responses,
        "security": [{"bearer": []}],
    }


def install(app: FastAPI) -> None:
    """Add the data-plane models to the generated schema's components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        models = [(m, "validation") for m, _ in DATA_PLANE.values()]
        models.append((ErrorResponse, "validation"))
        _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs.get("$defs", {}))
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A greengate virtual key (or the admin key).",
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
