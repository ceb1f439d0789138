"""The engine server (`greengate engine serve`) as a real subprocess on a tiny random checkpoint:
the OpenAI surface, energy per request, OpenAI-shaped refusals (a request the KV cache can never
hold is a 400, not a hang), token-exact resume, and the preemption signal a gateway migrates on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.engine_servers import EngineServerProcess
from tests.engine_support import checkpoint

KV_BLOCKS = 10  # x 16 tokens: a KV cache small enough to preempt and to refuse a long prompt
BLOCK_BYTES = 2 * 2 * 16 * 2 * 16 * 4  # k+v, layers, block, kv heads, head dim, float32
PROMPT = list(range(40, 60))  # 20 token ids


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineServerProcess]:
    kv_gb = (KV_BLOCKS * BLOCK_BYTES + 100) / 2**30
    s = EngineServerProcess(checkpoint("llama", seed=2), tmp_path_factory.mktemp("engine"),
                            kv_cache_gb=kv_gb, max_num_seqs=4).start()
    yield s
    s.stop()


def post(server: EngineServerProcess, path: str, body: dict | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(server.url + path, content=content, timeout=60,
                      headers={"content-type": "application/json"})


def sse(text: str) -> list[dict]:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: ") and block[6:] != "[DONE]":
            out.append(orjson.loads(block[6:]))
    return out


def test_models_health_and_metrics(server: EngineServerProcess) -> None:
    models = httpx.get(server.url + "/models").json()
    assert models["data"][0]["max_model_len"] == KV_BLOCKS * 16  # the KV cache bounds it
    assert httpx.get(server.root + "/health").json()["status"] == "ok"
    m = server.metrics()
    for name in ("greengate_engine_running_requests", "greengate_engine_waiting_requests",
                 "greengate_engine_kv_blocks_used", "greengate_engine_kv_blocks_free",
                 "greengate_engine_tokens_per_second"):
        assert name in m
    assert m["greengate_engine_kv_blocks_free"] + m["greengate_engine_kv_blocks_used"] == \
        KV_BLOCKS


def test_chat_carries_energy_and_stream_matches(server: EngineServerProcess) -> None:
    body = {"model": "anything", "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 12, "temperature": 0}
    r = post(server, "/chat/completions", body)
    assert r.status_code == 200, r.text
    data = r.json()
    ext = data["greengate"]
    # No meter on this machine: the figure is an estimate and says so.
    assert ext["energy_source"].startswith("estimated:") and ext["energy_j"] > 0
    assert data["usage"]["energy_j"] == ext["energy_j"]
    text = data["choices"][0]["message"]["content"]

    r = post(server, "/chat/completions", {**body, "stream": True,
                                           "stream_options": {"include_usage": True}})
    chunks = sse(r.text)
    streamed = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks if c["choices"])
    assert streamed == text
    usage = [c for c in chunks if c.get("usage")]
    assert usage and usage[0]["usage"]["completion_tokens"] == data["usage"]["completion_tokens"]
    # The trailing event: no choices, the request's energy in the extension field.
    last = chunks[-1]
    assert last["choices"] == [] and last["greengate"]["energy_j"] > 0
    assert last["greengate"]["energy_source"].startswith("estimated:")
    assert not any("greengate" in c for c in chunks[:-1])  # a plain client sees plain chunks


@pytest.mark.parametrize("body, code", [
    (b"{not json", None),
    ({"prompt": PROMPT, "n": 2}, None),
    ({"prompt": list(range(200))}, "context_length_exceeded"),  # more than the KV ever holds
    ({"prompt": PROMPT, "max_tokens": 150}, "context_length_exceeded"),
    ({"prompt": PROMPT, "greengate": {"resume_token_ids": ["x"]}}, None),
])
def test_bad_input_is_an_openai_400(server: EngineServerProcess, body: dict | bytes,
                                    code: str | None) -> None:
    r = post(server, "/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if code is not None:
        assert err["code"] == code


def test_unknown_route_is_an_openai_404(server: EngineServerProcess) -> None:
    r = httpx.get(server.url + "/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["message"]


def _reference(server: EngineServerProcess, max_tokens: int, prompt: list[int] = PROMPT
               ) -> dict:
    r = post(server, "/completions", {"prompt": prompt, "max_tokens": max_tokens,
                                      "temperature": 0, "ignore_eos": True,
                                      "greengate": {"return_token_ids": True}})
    assert r.status_code == 200, r.text
    return r.json()


def test_resume_continues_token_exactly(server: EngineServerProcess) -> None:
    full = _reference(server, 40)
    ids = full["greengate"]["token_ids"]
    assert len(ids) == 40 and len(set(ids)) > 5  # varied output: a resume bug would show
    r = post(server, "/completions", {"prompt": PROMPT, "max_tokens": 40, "temperature": 0,
                                      "ignore_eos": True, "stream": True,
                                      "stream_options": {"include_usage": True},
                                      "greengate": {"return_token_ids": True,
                                                    "resume_token_ids": ids[:15]}})
    chunks = sse(r.text)
    rest = [t for c in chunks if c.get("greengate") for t in c["greengate"].get("token_ids", [])]
    assert rest == ids[15:]
    head = httpx.post(server.url + "/completions", json={
        "prompt": PROMPT, "max_tokens": 15, "temperature": 0, "ignore_eos": True}).json()
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert head["choices"][0]["text"] + text == full["choices"][0]["text"]
    usage = next(c["usage"] for c in chunks if c.get("usage"))
    # Resumed tokens count as output, as the client saw them.
    assert usage["prompt_tokens"] == len(PROMPT) and usage["completion_tokens"] == 40


def test_preempted_stream_ends_with_the_signal(server: EngineServerProcess) -> None:
    """Three requests whose KV together is three times the cache: the engine preempts, and a
    request that asked for it ends with `greengate.preempted` and the ids it got so far."""
    # Distinct prompts: identical ones would share their blocks through the prefix cache.
    prompts = [[7 + i, *PROMPT] for i in range(3)]
    full = [_reference(server, 120, p)["greengate"]["token_ids"] for p in prompts]

    async def one(client: httpx.AsyncClient, prompt: list[int]) -> list[dict]:
        r = await client.post(server.url + "/completions", json={
            "prompt": prompt, "max_tokens": 120, "temperature": 0, "ignore_eos": True,
            "stream": True, "greengate": {"return_token_ids": True,
                                          "migrate_on_preempt": True}})
        return sse(r.text)

    async def burst() -> list[list[dict]]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    results = asyncio.run(burst())
    preempted = [i for i, c in enumerate(results)
                 if c[-1].get("greengate", {}).get("preempted")]
    assert preempted, "no request was preempted"
    for i in preempted:
        got = [t for c in results[i] for t in (c.get("greengate") or {}).get("token_ids", [])]
        assert got == full[i][:len(got)]  # what was streamed is the greedy output's start
    assert server.metrics()["greengate_engine_migrated_out_total"] >= len(preempted)


def test_cli_runs_engine_serve() -> None:
    """`greengate engine serve` reaches the server's own options (the command a GPU host
    runs), without the other commands paying for importing torch."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "greengate.cli", "engine", "serve", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--model" in out.stdout and "--device" in out.stdout
    probe = ("import sys, greengate.cli as c; c.build_parser().parse_args(['keys', 'list']); "
             "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120).stdout.strip() == "False"
