"""OpenTelemetry spans (GenAI semantic conventions plus greengate's attributes), exported over
OTLP/HTTP to an in-process receiver that decodes the protobuf as a collector would."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import GatewayFactory


class Receiver:
    """An OTLP/HTTP trace endpoint on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.content_types.append(self.headers.get("content-type", ""))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            receiver.spans.append({
                                "name": s.name, "kind": s.kind, "resource": resource,
                                "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                                "status": s.status.code,
                                "attrs": {a.key: _value(a.value) for a in s.attributes}})
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} spans, got {len(self.spans)}")
            time.sleep(0.05)
        return self.spans

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_span_per_request(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gw = make_gateway(otlp_endpoint=receiver.url, otlp_delay_ms=100)
    r = gw.post("/v1/chat/completions", {"model": "fake-small", "messages": [
        {"role": "user", "content": "trace me"}]})
    assert r.status_code == 200
    bad = gw.post("/v1/chat/completions", {"model": "nope", "messages": [
        {"role": "user", "content": "x"}]})
    assert bad.status_code == 404
    spans = receiver.wait(2)
    assert receiver.content_types[0] == "application/x-protobuf"
    by_id = {s["attrs"]["greengate.request_id"]: s for s in spans}
    ok = by_id[r.headers["x-request-id"]]
    row = gw.decision(r.headers["x-request-id"])
    a = ok["attrs"]
    assert ok["name"] == "chat fake-small" and ok["resource"]["service.name"] == "greengate"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.system"] == "openai"
    assert a["gen_ai.request.model"] == "fake-small" and a["gen_ai.response.model"] == "up-small"
    assert a["gen_ai.usage.input_tokens"] == row["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == row["completion_tokens"]
    assert a["greengate.served_member"] == "fake-small"
    assert a["greengate.route_reason"] == row["route_reason"]
    assert a["greengate.energy_j"] == pytest.approx(row["energy_j"])
    assert a["greengate.energy_source"] == row["energy_source"]
    assert a["greengate.cache_hit"] is False
    assert ok["end"] > ok["start"]
    miss = by_id[bad.headers["x-request-id"]]["attrs"]
    assert miss["http.response.status_code"] == 404 and miss["error.type"] == "404"
    assert "gen_ai.usage.input_tokens" not in miss  # unknown, not 0


def test_no_endpoint_no_export(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gw = make_gateway()
    assert gw.post("/v1/chat/completions", {"model": "fake-small", "messages": [
        {"role": "user", "content": "x"}]}).status_code == 200
    time.sleep(0.5)
    assert receiver.spans == []
