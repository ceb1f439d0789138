"""Speculative decoding through the gateway: same answers streamed or not, on or off; the
decision row, /v1/models, /admin/pool, the pool page and /metrics carry the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from backends.engine.checkpoint import write_tiny_checkpoint
from tests.conftest import GatewayFactory
from tests.test_engine_gateway import ENGINE_OPTS, engine_member, wait_all_blocks_free


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("spec-ckpt")
    return (write_tiny_checkpoint(root / "target", family="llama"),
            write_tiny_checkpoint(root / "draft", family="llama", seed=3))


def spec_pool(target: Path, speculative: dict[str, Any] | None) -> list[dict[str, Any]]:
    opts = {**ENGINE_OPTS, "speculative": speculative} if speculative else dict(ENGINE_OPTS)
    return [{"name": "local", "kind": "engine", "model": str(target), "engine": opts}]


PROMPT = "repeat after me: one two three, one two three, one two three"


def spec_row(gw: Any, rid: str) -> dict[str, Any] | None:
    value = gw.decision(rid)["speculative"]
    return json.loads(value) if isinstance(value, str) else value


@pytest.mark.parametrize("method", ["ngram", "draft", "self"])
def test_answers_equal_streamed_or_not_with_speculation_on_or_off(
        make_gateway: GatewayFactory, checkpoints: tuple[Path, Path], method: str) -> None:
    target, draft = checkpoints
    spec: dict[str, Any] = {"method": method, "max_k": 4, "ngram_min": 1}
    if method == "draft":
        spec["draft_model"] = str(draft)
    if method == "self":
        spec["exit_layer"] = 1
    gw = make_gateway(pool=spec_pool(target, spec), energy_meter="none")
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.admin_key)
    msgs = [{"role": "user", "content": PROMPT}]
    kw: dict[str, Any] = {"model": "local", "messages": msgs, "temperature": 0,
                          "max_tokens": 40}
    on = client.chat.completions.with_raw_response.create(**kw)
    off = client.chat.completions.with_raw_response.create(
        **kw, extra_body={"greengate": {"speculative": False}})
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        **kw, stream=True) if c.choices)
    on_text = on.parse().choices[0].message.content
    assert on_text == off.parse().choices[0].message.content == streamed
    assert on.parse().usage.completion_tokens == 40
    figures = spec_row(gw, on.headers["x-request-id"])
    assert figures is not None and figures["method"] == method
    assert figures["proposed"] >= figures["accepted"] >= 0
    assert figures["mean_k"] >= 0
    assert spec_row(gw, off.headers["x-request-id"]) is None  # opted out
    # Like energy_j, the figures are also in the usage block the client gets.
    assert on.parse().usage.model_dump()["speculative"] == figures
    wait_all_blocks_free(engine_member(gw))


def test_speculation_state_is_shown_everywhere(
        make_gateway: GatewayFactory, checkpoints: tuple[Path, Path]) -> None:
    target, _ = checkpoints
    gw = make_gateway(pool=spec_pool(target, {"method": "ngram", "ngram_min": 1}),
                      energy_meter="none")
    r = gw.post("/v1/chat/completions", {"model": "local", "temperature": 0, "max_tokens": 30,
                                         "messages": [{"role": "user", "content": PROMPT}]})
    assert r.status_code == 200, r.text
    models = httpx.get(gw.v1 + "/models", headers=gw.headers()).json()["data"]
    (local,) = [m for m in models if m["id"] == "local"]
    assert local["speculative"]["method"] == "ngram" and local["speculative"]["adaptive"]
    pool = httpx.get(gw.url + "/admin/pool", headers=gw.headers()).json()
    members = pool["members"] if isinstance(pool, dict) else pool
    (entry,) = [m for m in members if m["name"] == "local"]
    assert entry["engine"]["speculative"]["proposed_tokens"] >= 0
    metrics = httpx.get(gw.url + "/metrics", headers=gw.headers()).text
    assert 'greengate_engine_spec_tokens{member="local",method="ngram",outcome="proposed"}' \
        in metrics
    assert "greengate_engine_spec_mean_k" in metrics


def test_members_without_speculation_report_none(
        make_gateway: GatewayFactory, checkpoints: tuple[Path, Path]) -> None:
    target, _ = checkpoints
    gw = make_gateway(pool=spec_pool(target, None), energy_meter="none")
    r = gw.post("/v1/chat/completions", {"model": "local", "max_tokens": 5,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert spec_row(gw, r.headers["x-request-id"]) is None
    models = httpx.get(gw.v1 + "/models", headers=gw.headers()).json()["data"]
    assert "speculative" not in [m for m in models if m["id"] == "local"][0]


def test_bad_extension_and_bad_pool_options_are_clear(
        make_gateway: GatewayFactory, checkpoints: tuple[Path, Path]) -> None:
    from pydantic import ValidationError

    from backends.pool_config import SpeculativeOptions

    target, _ = checkpoints
    gw = make_gateway(pool=spec_pool(target, {"method": "ngram"}), energy_meter="none")
    r = gw.post("/v1/chat/completions", {"model": "local", "max_tokens": 5,
                                         "greengate": {"speculative": "no"},
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "speculative" in err["param"]
    with pytest.raises(ValidationError, match="draft_model"):
        SpeculativeOptions(method="draft")
    with pytest.raises(ValidationError):
        SpeculativeOptions(method="ngram", max_k=0)
