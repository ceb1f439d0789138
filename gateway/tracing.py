"""OpenTelemetry: one span per served request, exported over OTLP/HTTP when configured.

The span is built from the finished decision row, not opened around the request: the row
already holds everything (times, tokens, member, routing reason, energy and its source, the
cache), so tracing adds one object per request at the end and nothing on the hot path before
the answer. Attributes follow the OpenTelemetry GenAI semantic conventions (gen_ai.*), plus
greengate's own (greengate.*). The tracer provider is greengate's own, not the process-wide
global one, so an application embedding greengate keeps its own tracing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("greengate.tracing")

OPERATIONS = {"chat/completions": "chat", "responses": "chat", "completions": "text_completion",
              "embeddings": "embeddings"}


def attributes(row: dict[str, Any], system: str | None) -> dict[str, Any]:
    """The span's attributes; unknown values are left out, never written as 0."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": OPERATIONS.get(row.get("endpoint") or "", "chat"),
        "http.response.status_code": int(row.get("status") or 0),
        "greengate.request_id": row["id"],
        "greengate.endpoint": row.get("endpoint"),
        "greengate.stream": bool(row.get("stream")),
        "greengate.cache_hit": bool(row.get("cache_hit")),
    }
    if system:
        attrs["gen_ai.system"] = system
        attrs["gen_ai.provider.name"] = system
    optional = {
        "gen_ai.request.model": row.get("requested_model"),
        "gen_ai.response.model": row.get("upstream_model"),
        "gen_ai.usage.input_tokens": row.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": row.get("completion_tokens"),
        "greengate.team": row.get("team"),
        "greengate.served_member": row.get("served_member"),
        "greengate.route_reason": row.get("route_reason"),
        "greengate.usage_source": row.get("usage_source"),
        "greengate.energy_j": row.get("energy_j"),
        "greengate.energy_source": row.get("energy_source"),
        "greengate.cost_usd": row.get("cost_usd"),
        "greengate.gco2e": row.get("gco2e"),
        "greengate.latency_ms": row.get("latency_ms"),
        "greengate.ttft_ms": row.get("ttft_ms"),
    }
    attrs.update({k: v for k, v in optional.items() if v is not None})
    if (row.get("status") or 0) >= 400:
        attrs["error.type"] = str(row.get("status"))
    return attrs


class Tracing:
    """Spans from decision rows, batched and exported in the background."""

    def __init__(self, endpoint: str, headers: dict[str, str] | None = None,
                 service_name: str = "greengate", exporter: Any = None,
                 schedule_delay_ms: int = 1000) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers or {}, timeout=5)
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(
            exporter, schedule_delay_millis=schedule_delay_ms, max_export_batch_size=512))
        self.tracer = self.provider.get_tracer("greengate")

    def record(self, row: dict[str, Any], system: str | None = None) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        try:
            created: datetime = row["created_at"]
            start_ns = int(created.astimezone(UTC).timestamp() * 1e9)
            end_ns = start_ns + int((row.get("latency_ms") or 0.0) * 1e6)
            attrs = attributes(row, system)
            name = f"{attrs['gen_ai.operation.name']} {row.get('requested_model') or ''}".strip()
            span = self.tracer.start_span(name, kind=SpanKind.SERVER, start_time=start_ns,
                                          attributes=attrs)
            status = row.get("status") or 0
            if status >= 500 or status == 0:
                span.set_status(Status(StatusCode.ERROR, (row.get("error") or "")[:200]))
            span.end(end_time=end_ns)
        except Exception:  # tracing must never cost a request its answer or its row
            log.exception("recording the span of %s failed", row.get("id"))

    def shutdown(self) -> None:
        try:
            self.provider.shutdown()  # flushes what is queued
        except Exception:
            log.exception("flushing spans at shutdown failed")
