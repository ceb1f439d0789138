"""The Member seam: every pool member, remote or bundled, answers the same two calls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

# "responses": only for members with `responses: native`, which serve the Responses API.
Endpoint = Literal["chat/completions", "completions", "embeddings", "responses"]


EXTENSION_FIELD = "greengate"  # greengate's own request options, e.g. {"speculative": false}


@dataclass(slots=True)
class UpstreamRequest:
    endpoint: Endpoint
    body: dict  # an OpenAI request body, "model" already set to the upstream's name
    stream: bool = False

    def wire_body(self) -> dict:
        """The body for a remote provider: greengate's extension object stays here (a strict
        provider would refuse an unknown field)."""
        if EXTENSION_FIELD not in self.body:
            return self.body
        return {k: v for k, v in self.body.items() if k != EXTENSION_FIELD}


@dataclass(slots=True)
class UpstreamResponse:
    content: bytes  # the upstream's JSON, passed to the client as it came
    data: dict  # the same, parsed (usage, model)


class UpstreamError(Exception):
    """A failed upstream call. `status` is None when no HTTP answer came (connect, timeout)."""

    def __init__(
        self,
        message: str,
        *,
        kind: Literal["connect", "timeout", "deadline", "http", "protocol"],
        status: int | None = None,
        body: bytes | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Worth another try on the same member: transport trouble, overload, server faults."""
        if self.status is None:
            return True
        return self.status in (408, 409, 429) or self.status >= 500

    @property
    def client_fault(self) -> bool:
        """The request itself is wrong: the client should see the upstream's answer as is."""
        return self.status in (400, 413, 422)


class Member(ABC):
    """One pool member. `stream` yields the JSON payload of each SSE event (no 'data: ' prefix,
    no [DONE]); errors before the first payload are raised from the first `__anext__`."""

    name: str
    upstream_model: str

    @abstractmethod
    async def complete(self, req: UpstreamRequest) -> UpstreamResponse: ...

    @abstractmethod
    def stream(self, req: UpstreamRequest) -> AsyncIterator[bytes]: ...

    async def stream_batches(self, req: UpstreamRequest) -> AsyncIterator[list[bytes]]:
        """The same payloads, grouped as they became available (never an empty group), so the
        gateway writes once per group; by default one payload per group."""
        async for payload in self.stream(req):
            yield [payload]

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass
