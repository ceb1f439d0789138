"""bench/vs_litellm.py's own logic: the `model: auto` system sends a prompt no earlier slot
sent (its figure is the cost of a new prompt, so the gateway's embedding cache must never
answer it), and the worker default probes Redis for real."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest
from aiohttp import web

REDIS_URL = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
VS_LITELLM_PY = Path(__file__).resolve().parent.parent / "bench" / "vs_litellm.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("greengate_bench_vs_litellm", VS_LITELLM_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look modules up by name
    spec.loader.exec_module(module)
    return module


def test_unique_prompts_never_repeat_across_slots(bench: ModuleType) -> None:
    """Three slots against a real HTTP server: every prompt the auto system sent is new."""
    seen: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body["messages"][0]["content"])
        return web.json_response({"choices": [{"message": {"content": "hi"}}]})

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        system = bench.System("auto", f"http://127.0.0.1:{port}/v1/chat/completions", "auto",
                              {}, None, True)
        plain = bench.System("plain", system.url, "fake-small", {}, None)
        try:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                for _ in range(3):
                    await bench.drive(session, system, False, 4, 0.15, bench.CellResult())
                before = len(seen)
                await bench.drive(session, plain, False, 2, 0.05, bench.CellResult())
                repeated = seen[before:]
                del seen[before:]
        finally:
            await runner.cleanup()
        assert len(set(repeated)) == 1  # the plain system repeats its one prompt

    asyncio.run(run())
    assert len(seen) > 12
    assert len(set(seen)) == len(seen), "a unique prompt was sent twice"
    assert all(bench.RUN_ID in s for s in seen)  # and none an earlier run sent


def test_body_for_is_the_openai_shape(bench: ModuleType) -> None:
    s = bench.System("auto", "http://x/v1/chat/completions", "auto", {}, None, True)
    body = json.loads(bench.body_for(s, True, next(s.serial)))
    assert body["model"] == "auto" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0]["role"] == "user"


def test_redis_probe(bench: ModuleType) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert bench.redis_answers(f"redis://127.0.0.1:{port}/0", timeout_s=0.5) is False
    # The Redis this machine runs (started before CI; see the README's test section).
    assert bench.redis_answers(REDIS_URL) is True
