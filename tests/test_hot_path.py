"""The upstream client's hot path and `serve --workers`.

The concurrency-64 collapse came from httpcore's pool: on every request and every release it
checks every connection once per queued request, so its work per request grows with
connections x waiting requests. These tests count that work (the per-connection checks each
client makes) rather than timing anything: the remote member's client must do the same small
number of checks per request whether 8 or 128 requests wait, and the old client is measured the
same way to show that the count does see the mechanism."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp.client_proto
import httpcore
import httpx
import orjson
import pytest

from backends.base import UpstreamRequest
from backends.openai_compat import HttpLimits, OpenAICompatMember
from backends.pool_config import MemberConfig
from gateway.settings import Settings

REPO = Path(__file__).resolve().parent.parent
REPLY = orjson.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)


@dataclass
class CountingUpstream:
    """A keep-alive HTTP/1.1 server that answers every POST after `delay_s` and counts the TCP
    connections it accepted and the requests it held at once."""

    delay_s: float = 0.002
    connections: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    served: int = 0
    server: asyncio.Server | None = field(default=None, repr=False)

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                await asyncio.sleep(self.delay_s)
                self.in_flight -= 1
                self.served += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(REPLY), REPLY)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[int]:
    counter = [0]
    original: Callable = getattr(owner, name)

    def counted(self, *a, **kw):  # type: ignore[no-untyped-def]
        counter[0] += 1
        return original(self, *a, **kw)

    monkeypatch.setattr(owner, name, counted)
    return counter


def _member(url: str, limit: int) -> OpenAICompatMember:
    cfg = MemberConfig(name="m", kind="openai", model="m", base_url=url)
    return OpenAICompatMember(cfg, HttpLimits(max_connections=limit, keepalive_s=30.0))


def _request() -> UpstreamRequest:
    return UpstreamRequest(
        "chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )


async def _member_checks_per_request(
    monkeypatch: pytest.MonkeyPatch, concurrent: int, limit: int = 4, rounds: int = 2
) -> tuple[float, CountingUpstream]:
    upstream = CountingUpstream()
    url = await upstream.start()
    member = _member(url, limit)
    try:
        await asyncio.gather(*(member.complete(_request()) for _ in range(limit)))  # warm
        checks = _count_calls(monkeypatch, aiohttp.client_proto.ResponseHandler, "is_connected")
        for _ in range(rounds):
            answers = await asyncio.gather(
                *(member.complete(_request()) for _ in range(concurrent))
            )
            assert all(a.data["choices"][0]["message"]["content"] == "hi" for a in answers)
        monkeypatch.undo()
        return checks[0] / (rounds * concurrent), upstream
    finally:
        await member.aclose()
        await upstream.stop()


async def test_member_pool_work_per_request_does_not_grow_with_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    few, _ = await _member_checks_per_request(monkeypatch, concurrent=8)
    many, upstream = await _member_checks_per_request(monkeypatch, concurrent=128)
    # One liveness check per hand-out (a connection popped from the idle deque), however many
    # requests wait behind the 4 connections.
    assert few <= 3 and many <= 3, (few, many)
    assert many <= few * 1.5 + 0.5, (few, many)
    # The queue is bounded by the pool: never more connections or calls in flight than allowed.
    assert upstream.connections <= 4
    assert upstream.max_in_flight <= 4
    assert upstream.served == 4 + 2 * 128


async def test_httpcore_pool_work_grows_with_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cause of the old collapse, measured the same way (so the count above can fail)."""

    async def per_request(concurrent: int) -> float:
        upstream = CountingUpstream()
        url = await upstream.start()
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
            await asyncio.gather(
                *(client.post(f"{url}/chat/completions", content=b"{}") for _ in range(4))
            )
            checks = _count_calls(monkeypatch, httpcore.AsyncHTTPConnection, "is_available")
            await asyncio.gather(
                *(client.post(f"{url}/chat/completions", content=b"{}") for _ in range(concurrent))
            )
            monkeypatch.undo()
        await upstream.stop()
        return checks[0] / concurrent

    few, many = await per_request(8), await per_request(128)
    assert many > 8 * few, (few, many)


async def test_member_streams_reuse_the_pooled_connection() -> None:
    """A stream read to [DONE] gives its connection back (no new TCP connection per call)."""
    connections = 0

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                for event in (
                    b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
                    b"data: [DONE]\n\n",
                ):
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(sse, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    member = _member(url, 2)
    try:
        for _ in range(5):
            payloads = [p async for p in member.stream(_request())]
            assert payloads == [b'{"choices":[{"delta":{"content":"a"}}]}']
    finally:
        await member.aclose()
        server.close()
    assert connections == 1


def _serve(
    tmp_path: Path,
    extra_env: dict[str, str],
    *args: str,
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENGATE_")}
    env.update(
        {
            "GREENGATE_STATE_DIR": str(tmp_path / "state"),
            "GREENGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'gg.db'}",
            "GREENGATE_ADMIN_KEY": "gg-admin-workers-test",
            **extra_env,
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "greengate.cli", "serve", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    proc = _serve(tmp_path, {}, "--workers", "2")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--workers 2 refused" in out
    assert "GREENGATE_REDIS_URL" in out and "budget" in out
    # GREENGATE_WORKERS is refused the same way.
    proc = _serve(tmp_path, {"GREENGATE_WORKERS": "3"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--workers 3 refused" in out


def test_workers_with_redis_serve_from_several_processes(tmp_path: Path, fake_url: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "pool.yaml"
    cfg.write_text(
        f"pool:\n  - name: fake\n    kind: openai\n    model: up\n"
        f"    base_url: {fake_url}\n"
        "    price: {input_per_1m: 0.5, output_per_1m: 1.5}\n"
    )
    proc = _serve(
        tmp_path,
        {
            "GREENGATE_REDIS_URL": "redis://127.0.0.1:6379/0",
            "GREENGATE_SAFETY_CLASSIFIER": "false",
            "GREENGATE_CACHE": "false",
        },
        "--workers",
        "2",
        "--config",
        str(cfg),
        "--port",
        str(port),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(1)
        assert ready, "gateway with 2 workers never became ready"
        headers = {"authorization": "Bearer gg-admin-workers-test"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
            for _ in range(4):
                r = c.post(
                    "/v1/chat/completions",
                    json={"model": "fake", "messages": [{"role": "user", "content": "hello"}]},
                )
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"] == "You said: hello"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert "2 worker processes" in out
    assert out.count("Started server process") >= 2, out[-3000:]


def test_no_sql_on_the_event_loop_while_serving(make_gateway, fake) -> None:  # type: ignore[no-untyped-def]
    """Keys, policies and budgets are read from memory; decision rows are written by the
    writer's own thread: a served request runs no SQL statement on the event loop's thread."""
    import threading

    import sqlalchemy as sa

    gw = make_gateway()
    key = gw.create_key("team-hot")
    loop_thread = gw.server.thread.ident
    on_loop: list[str] = []
    elsewhere: list[str] = []

    def seen(conn, cursor, statement, *a) -> None:  # type: ignore[no-untyped-def]
        elsewhere.append(statement)
        if threading.get_ident() == loop_thread:
            on_loop.append(statement)

    body = {"model": "fake-small", "messages": [{"role": "user", "content": "hello"}]}
    r = gw.post("/v1/chat/completions", body, key=key)  # first use may load the key
    assert r.status_code == 200, r.text
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", seen)
    try:
        for i in range(6):
            r = gw.post("/v1/chat/completions", {**body, "stream": i % 2 == 1}, key=key)
            assert r.status_code == 200, r.text
        gw.latest_decision(7)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", seen)
    assert on_loop == []
    # The listener does see the gateway's SQL: the writer's batched inserts, off the loop.
    assert any("INSERT INTO decisions" in q for q in elsewhere)


async def test_sse_batches_group_by_network_read_and_match_the_payloads() -> None:
    from backends.sse import iter_sse_batches, iter_sse_data

    reads = [b"data: a\n\ndata: b\n\nda", b"ta: c\n\n", b": comment\n\n",
             b"data: d\r\n\r\ndata: [DONE]\n\ndata: after\n\n"]

    async def chunks():  # type: ignore[no-untyped-def]
        for r in reads:
            yield r

    batches = [b async for b in iter_sse_batches(chunks())]
    assert batches == [[b"a", b"b"], [b"c"], [b"d"]]
    assert [p for b in batches for p in b] == [p async for p in iter_sse_data(chunks())]


def _cyclic_garbage_of_the_path(serve: Callable[[], None]) -> list[str]:
    """What `serve` leaves that only the cyclic collector can free, from the request path's
    own modules (tenacity, gateway, backends, store): the type names, one per object. The mock
    upstream and the test client run in this process too, so their garbage is left out."""
    import gc

    path = ("tenacity", "gateway", "backends", "store")
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        serve()
        time.sleep(0.2)  # streamed relays finish their last step after the client has [DONE]
        gc.collect()
        found = []
        for o in gc.garbage:
            mod = getattr(o, "__module__", None) if callable(o) else type(o).__module__
            if isinstance(mod, str) and mod.split(".")[0] in path:
                found.append(f"{mod}.{getattr(o, '__qualname__', type(o).__qualname__)}")
        return found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_served_requests_leave_no_cyclic_garbage(make_gateway, fake) -> None:  # type: ignore[no-untyped-def]
    """A request that needs no retry leaves nothing for the cyclic collector. tenacity's
    AsyncRetrying made ~40 objects of reference cycles per request; with 64 requests in flight
    they outlived young collections and made full collections frequent and long (15% of the
    gateway's CPU, pauses of tens of ms stalling every open stream). The retry machinery is
    now made only once a first try failed: a retried request still leaves tenacity's cycles,
    which shows that the count sees them."""
    gw = make_gateway()
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "hello"}]}
    for stream in (False, True):  # warm: first-use imports and caches are not per request
        assert gw.post("/v1/chat/completions", {**body, "stream": stream}).status_code == 200

    def clean() -> None:
        for i in range(10):
            r = gw.post("/v1/chat/completions", {**body, "stream": i % 2 == 1})
            assert r.status_code == 200, r.text

    assert _cyclic_garbage_of_the_path(clean) == []

    def retried() -> None:
        fake.fail_statuses = [503]
        r = gw.post("/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        rid = r.headers["x-request-id"]
        assert [a["status"] for a in gw.decision(rid)["attempts"]] == [503, 200]

    assert any(name.startswith("tenacity.") for name in _cyclic_garbage_of_the_path(retried))


def test_serving_raises_the_young_collection_threshold(make_gateway) -> None:  # type: ignore[no-untyped-def]
    """While a gateway serves, young collections wait for GC_GEN0_THRESHOLD net allocations
    (the in-flight requests' objects are not re-walked every 700); its shutdown puts back
    what was there."""
    import gc

    from gateway.app import GC_GEN0_THRESHOLD

    # The threshold is the process's: a module-scoped gateway of another test may still be
    # serving here, so start from a known value rather than whatever it left.
    saved = gc.get_threshold()
    before = (700, *saved[1:])
    gc.set_threshold(*before)
    try:
        gw = make_gateway()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *before[1:])
        gw.server.stop()
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*saved)


def _keep_alive_answers(sock: object, port: int) -> bool:
    """One GET /health/live on an open keep-alive socket: True when it is answered."""
    import socket

    assert isinstance(sock, socket.socket)
    try:
        sock.sendall(f"GET /health/live HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:  # headers and body may come in separate reads
            part = sock.recv(65536)
            if not part:
                return False
            got += part
        head, _, body = got.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            part = sock.recv(65536)
            if not part:
                return False
            body += part
        return head.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def test_serve_keeps_idle_client_connections_for_the_setting(tmp_path: Path, fake_url: str) -> None:
    """`serve` hands GREENGATE_CLIENT_KEEPALIVE_S to uvicorn (whose own default, 5 s, closed
    every idle connection between the benchmark's slots: the next slot at concurrency 64 began
    with 64 reconnections at once). Here 1.5 s: a connection idle 0.5 s is still served, one idle
    3 s was closed by the gateway."""
    import socket

    assert Settings(_env_file=None).client_keepalive_s > 5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "pool.yaml"
    cfg.write_text(f"pool:\n  - name: fake\n    kind: openai\n    model: up\n"
                   f"    base_url: {fake_url}\n")
    proc = _serve(tmp_path, {"GREENGATE_CLIENT_KEEPALIVE_S": "1.5", "GREENGATE_CACHE": "false",
                             "GREENGATE_SAFETY_CLASSIFIER": "false"},
                  "--config", str(cfg), "--port", str(port))
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert _keep_alive_answers(sock, port)
            time.sleep(0.5)
            assert _keep_alive_answers(sock, port)
            time.sleep(3)
            assert not _keep_alive_answers(sock, port)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
