"""The bundled engine served through the gateway: same OpenAI surface, streaming, exact usage,
decision rows, fallbacks and the no-configuration default of `make run`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from backends.engine.checkpoint import write_tiny_checkpoint
from backends.engine.tokenizer import Tokenizer
from backends.pool_config import PoolConfig, default_pool, with_engine_model
from tests.conftest import GatewayFactory
from tests.engine_support import StepMeter
from tests.servers import free_port

ENGINE_OPTS = {"kv_cache_gb": 0.02, "max_num_seqs": 8, "token_budget": 64, "device": "cpu",
               "dtype": "float32"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    write_tiny_checkpoint(path, family="llama")
    return path


def engine_pool(checkpoint: Path, fake_url: str, **opts: Any) -> list[dict[str, Any]]:
    return [
        {"name": "local", "kind": "engine", "model": str(checkpoint),
         "engine": {**ENGINE_OPTS, **opts}, "fallbacks": ["fake-small"]},
        {"name": "fake-small", "kind": "openai", "model": "up-small", "base_url": fake_url,
         "price": {"input_per_1m": 0.5, "output_per_1m": 1.5}},
    ]


def chat(content: str, **kw: Any) -> dict[str, Any]:
    return {"model": "local", "messages": [{"role": "user", "content": content}],
            "temperature": 0, **kw}


async def burst(gw: Any, n: int) -> list[httpx.Response]:
    """`n` long requests at once: more than an engine with one slot and one queue place takes."""
    async with httpx.AsyncClient(timeout=60) as c:
        return await asyncio.gather(*[
            c.post(gw.v1 + "/chat/completions", headers=gw.headers(),
                   json=chat(f"request {i}", max_tokens=300, ignore_eos=True))
            for i in range(n)])


def engine_member(gw_obj: Any) -> Any:
    rt = gw_obj.server.server.config.app.state.rt
    return rt.pool.members["local"].backend


def wait_all_blocks_free(member: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        s = member.stats()
        if s["running"] == 0 and s["waiting"] == 0 and s["kv_usage"] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"engine did not free its blocks: {s}")
        time.sleep(0.02)


def test_chat_non_stream_exact_usage_and_decision(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none")
    r = gw.post("/v1/chat/completions", chat("hello there", max_tokens=12, ignore_eos=True))
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-greengate-member"] == "local"
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["finish_reason"] == "length"
    tok = Tokenizer(checkpoint)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello there"}],
                                     add_generation_prompt=True)
    assert body["usage"]["prompt_tokens"] == len(tok.encode(prompt))
    assert body["usage"]["completion_tokens"] == 12
    row = gw.decision(r.headers["x-request-id"])
    assert row["served_member"] == "local" and row["status"] == 200
    assert row["usage_source"] == "upstream"
    assert row["completion_tokens"] == 12
    # No meter here: the energy is an estimate from the checkpoint's size, and says so.
    assert row["energy_source"].startswith("estimated:")
    assert row["energy_j"] > 0
    wait_all_blocks_free(engine_member(gw))


def test_stream_matches_non_stream_with_sdk(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none")
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.admin_key)
    msgs = [{"role": "user", "content": "stream me something"}]
    full = client.chat.completions.create(model="local", messages=msgs, temperature=0,
                                          max_tokens=20)
    chunks = list(client.chat.completions.create(
        model="local", messages=msgs, temperature=0, max_tokens=20, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and
                c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    # Without include_usage the client gets no usage chunk, but the row is still exact.
    r = gw.post("/v1/chat/completions", {**chat("again", max_tokens=5, ignore_eos=True),
                                         "stream": True})
    assert r.status_code == 200
    assert '"usage"' not in r.text
    row = gw.decision(r.headers["x-request-id"])
    assert row["completion_tokens"] == 5 and row["usage_source"] == "upstream"


def test_completions_and_logprobs(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none")
    r = gw.post("/v1/completions", {"model": "local", "prompt": "The sky is",
                                    "max_tokens": 4, "temperature": 0, "logprobs": 3,
                                    "ignore_eos": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert len(choice["logprobs"]["tokens"]) == 4
    offsets = choice["logprobs"]["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets) and len(offsets) == 4
    # Legacy layout: alternatives keyed by text, so two ids that decode alike share a key.
    assert all(1 <= len(top) <= 3 for top in choice["logprobs"]["top_logprobs"])
    for lp, top in zip(choice["logprobs"]["token_logprobs"], choice["logprobs"]["top_logprobs"],
                       strict=True):
        assert lp <= 0
        assert lp == pytest.approx(max(top.values()))  # greedy took the most likely token
    r = gw.post("/v1/chat/completions", chat("hi", max_tokens=3, logprobs=True, top_logprobs=2,
                                             ignore_eos=True))
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(e["top_logprobs"]) == 2 for e in content)


@pytest.mark.parametrize(("extra", "code"), [
    ({"n": 2}, None),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
     "unsupported_parameter"),
    ({"max_tokens": 10**7}, "context_length_exceeded"),
    ({"temperature": 9}, None),
    ({"stop": [""]}, None),
])
def test_bad_requests_get_openai_errors(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str,
        extra: dict, code: str | None) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none")
    r = gw.post("/v1/chat/completions", chat("hi", **extra))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["message"]
    if code:
        assert err["code"] == code
    wait_all_blocks_free(engine_member(gw))


def test_prompt_longer_than_context_is_refused(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none")
    window = engine_member(gw).context_window
    r = gw.post("/v1/completions", {"model": "local", "prompt": [5] * (window + 1)})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_client_disconnect_frees_blocks(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none")
    member = engine_member(gw)
    body = {**chat("go on forever", max_tokens=400, ignore_eos=True), "stream": True}
    with httpx.stream("POST", gw.v1 + "/chat/completions", json=body,
                      headers=gw.headers(), timeout=30) as r:
        assert r.status_code == 200
        for i, _ in enumerate(r.iter_lines()):
            if i > 3:
                break  # leave mid-stream
    wait_all_blocks_free(member)
    row = gw.latest_decision(1)
    assert row["status"] == 499
    assert 0 < row["completion_tokens"] < 400


def test_full_queue_falls_back(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url, max_num_seqs=1, max_waiting=1),
                      energy_meter="none", retries=0)
    responses = asyncio.run(burst(gw, 4))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    served = [r.headers["x-greengate-member"] for r in responses]
    assert "local" in served and "fake-small" in served, served
    wait_all_blocks_free(engine_member(gw))


def test_models_lists_engine(make_gateway: GatewayFactory, checkpoint: Path,
                             fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none")
    r = httpx.get(gw.v1 + "/models", headers=gw.headers())
    entry = next(m for m in r.json()["data"] if m["id"] == "local")
    assert entry["owned_by"] == "greengate:engine"
    assert entry["context_window"] == engine_member(gw).context_window


def test_kv_gauge_in_metrics(make_gateway: GatewayFactory, checkpoint: Path,
                             fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none")
    text = httpx.get(gw.url + "/metrics", headers=gw.headers()).text
    assert 'greengate_engine_kv_cache_usage{member="local"}' in text


def test_engine_model_setting_replaces_builtin(tmp_path: Path) -> None:
    pool = with_engine_model(default_pool(), tmp_path / "my-model")
    [m] = pool.pool
    assert m.name == "my-model" and m.model == str(tmp_path / "my-model")
    assert "random-weights" not in m.tags
    other = PoolConfig.model_validate({"pool": [
        {"name": "x", "kind": "openai", "model": "x", "base_url": "http://127.0.0.1:1/v1"}]})
    assert [m.name for m in with_engine_model(other, tmp_path / "m2").pool] == ["x", "m2"]


def test_serve_with_no_configuration_answers_from_tiny_random_llama(tmp_path: Path) -> None:
    """What `make run` does on a fresh machine with no pool file: the built-in random model."""
    port = free_port()
    env = {**os.environ, "GREENGATE_PORT": str(port), "GREENGATE_ADMIN_KEY": "gg-admin-test",
           "GREENGATE_DATABASE_URL": f"sqlite:///{tmp_path}/gg.db",
           "GREENGATE_STATE_DIR": str(tmp_path / "state"), "GREENGATE_SAFETY_CLASSIFIER": "false"}
    env.pop("GREENGATE_CONFIG", None)
    env.pop("GREENGATE_ENGINE_MODEL", None)
    proc = subprocess.Popen([sys.executable, "-m", "greengate.cli", "serve"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not start:\n{proc.stdout.read()}")  # type: ignore[union-attr]
            time.sleep(0.2)
        h = {"Authorization": "Bearer gg-admin-test"}
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=h).json()["data"]
        entry = next(m for m in models if m["id"] == "tiny-random-llama")
        assert "RANDOM" in entry["description"]
        for model in ("tiny-random-llama", "auto"):
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers=h, timeout=60,
                           json={"model": model, "max_tokens": 8,
                                 "messages": [{"role": "user", "content": "hello"}]})
            assert r.status_code == 200, r.text
            assert r.headers["x-greengate-member"] == "tiny-random-llama"
            assert r.json()["usage"]["completion_tokens"] >= 1
        assert (tmp_path / "state" / "models" / "tiny-random-llama" / "config.json").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_full_queue_without_fallback_is_a_clean_503(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    pool = engine_pool(checkpoint, fake_url, max_num_seqs=1, max_waiting=1)
    pool[0]["fallbacks"] = []
    gw = make_gateway(pool=pool, energy_meter="none", retries=0)
    responses = asyncio.run(burst(gw, 4))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.json()["error"]["code"] == "upstream_overloaded"
    assert refused.headers["retry-after"] == "1"
    row = gw.decision(refused.headers["x-request-id"])
    assert row["status"] == 503
    wait_all_blocks_free(engine_member(gw))


def test_admin_pool_shows_engine_state(make_gateway: GatewayFactory, checkpoint: Path,
                                       fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none")
    gw.post("/v1/chat/completions", chat("hi", max_tokens=2))
    r = httpx.get(gw.url + "/admin/pool", headers=gw.headers())
    local = next(m for m in r.json() if m["name"] == "local")
    eng = local["engine"]
    assert eng["device"] == "cpu" and eng["random_weights"] is False
    assert eng["kv_blocks"] > 0 and 0 <= eng["kv_usage"] <= 1
    assert eng["params"] == engine_member(gw).num_params
    # The checkpoint's size, not a made-up figure, drives the estimate until a meter measures.
    assert local["energy"]["active_params_b"] == pytest.approx(eng["params"] / 1e9)
    assert next(m for m in r.json() if m["name"] == "fake-small")["engine"] is None


def test_measured_energy_reaches_the_decision_row(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.pool.detect_meter", lambda prefer: StepMeter(per_read=0.5))
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url))
    r = gw.post("/v1/chat/completions", chat("measure me", max_tokens=6, ignore_eos=True))
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["energy_source"] == "measured:test" and usage["energy_j"] > 0
    row = gw.decision(r.headers["x-request-id"])
    # Measured joules replace the size-based estimate in the row, and say where they came from.
    assert row["energy_source"] == "measured:test"
    assert row["energy_j"] == pytest.approx(usage["energy_j"])
    # Alone in the engine, the request carries every step it was in: prefill + 5 decodes.
    assert row["energy_j"] == pytest.approx(0.5 * 6)


def test_request_shapes_found_in_review(make_gateway: GatewayFactory, checkpoint: Path,
                                        fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none")
    bad_part = {"model": "local", "messages": [
        {"role": "user", "content": [{"type": "text", "text": 5}]}]}
    r = gw.post("/v1/chat/completions", bad_part)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    # One token id is a prompt, not a batch to unwrap.
    r = gw.post("/v1/completions", {"model": "local", "prompt": [7], "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 1
    # top_p 0 keeps only the likeliest token: the greedy answer, whatever the temperature.
    greedy = gw.post("/v1/chat/completions", chat("pick", max_tokens=8, ignore_eos=True))
    top0 = gw.post("/v1/chat/completions", {**chat("pick", max_tokens=8, ignore_eos=True),
                                            "temperature": 1.5, "top_p": 0, "seed": 3})
    assert top0.json()["choices"][0]["message"]["content"] == (
        greedy.json()["choices"][0]["message"]["content"])


def test_engine_failure_mid_request_is_an_upstream_error(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url), energy_meter="none", retries=0)
    runner = engine_member(gw).engine.runner
    real_run, calls = runner.run, [0]

    def flaky(items: Any, copies: Any = ()) -> Any:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("simulated device failure")
        return real_run(items, copies)

    runner.run = flaky
    # Before any byte was sent: the gateway falls back to fake-small.
    r = gw.post("/v1/chat/completions", chat("fail me", max_tokens=10, ignore_eos=True))
    assert r.status_code == 200, r.text
    assert r.headers["x-greengate-member"] == "fake-small"
    row = gw.decision(r.headers["x-request-id"])
    assert [a["member"] for a in row["attempts"]][:1] == ["local"]
    # Mid-stream: the stream ends with an OpenAI-style error event, not a broken connection.
    calls[0] = -5  # fail on the 8th step, once text has gone out
    r = gw.post("/v1/chat/completions", {**chat("now stream", max_tokens=10, ignore_eos=True),
                                         "stream": True})
    assert r.status_code == 200
    assert r.headers["x-greengate-member"] == "local"
    assert '"content":"' in r.text.split("engine failed")[0]
    assert '"error"' in r.text and "engine failed" in r.text
    wait_all_blocks_free(engine_member(gw))


def test_priority_extension_orders_admission(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = make_gateway(pool=engine_pool(checkpoint, fake_url, max_num_seqs=1, max_waiting=8),
                      energy_meter="none", cache=False)
    member = engine_member(gw)
    finished: list[str] = []

    async def ask(name: str, priority: int, tokens: int) -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            r = await c.post(gw.v1 + "/chat/completions", headers=gw.headers(), json={
                **chat(name, max_tokens=tokens, ignore_eos=True), "priority": priority})
            assert r.status_code == 200, r.text
            finished.append(name)

    async def scenario() -> None:
        first = asyncio.create_task(ask("first", 0, 400))  # holds the only slot
        while member.stats()["running"] == 0:
            await asyncio.sleep(0.005)
        low = asyncio.create_task(ask("low", 5, 4))
        while member.stats()["waiting"] < 1:
            await asyncio.sleep(0.005)
        high = asyncio.create_task(ask("high", -5, 4))
        await asyncio.gather(first, low, high)

    asyncio.run(scenario())
    assert finished == ["first", "high", "low"]
    r = gw.post("/v1/chat/completions", chat("x", priority="urgent"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "priority"
