"""Issue 12, defect 6 and the fuzz run: the data plane is in /openapi.json with its request
models, and schemathesis over the whole schema finds no server error and only OpenAI-shaped
4xx bodies (checks in tests/schemathesis_hooks.py).

`make test` runs it at a small budget (GREENGATE_FUZZ_EXAMPLES, default 20 per operation, a
fixed seed); `make fuzz` at a large one with a random seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import Gateway

ROOT = Path(__file__).resolve().parent.parent
DATA_PLANE = {
    "/v1/chat/completions": "ChatCompletionRequest",
    "/v1/completions": "CompletionRequest",
    "/v1/embeddings": "EmbeddingRequest",
}


def test_data_plane_is_in_the_schema(gw: Gateway) -> None:
    schema = httpx.get(gw.url + "/openapi.json", timeout=10).json()
    for path, model in DATA_PLANE.items():
        op = schema["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}"
        assert op["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
        assert "model" in schema["components"]["schemas"][model]["required"]
    completion = schema["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]
    shapes = json.dumps(completion)
    assert '"integer"' in shapes and '"string"' in shapes  # token ids as OpenAI accepts
    chat = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert "request_timeout_s" in chat  # the extension is documented


def test_schemathesis_finds_no_server_error(gw: Gateway, fake, tmp_path: Path) -> None:
    schema = httpx.get(gw.url + "/openapi.json", timeout=10).json()
    # Generated requests name real members (and 'auto'), so positive cases reach the upstream
    # instead of stopping at 404; negative cases still send anything.
    members = {
        "ChatCompletionRequest": ["auto", "fake-small", "fake-large", "lite"],
        "CompletionRequest": ["auto", "fake-small", "fake-large"],
        "EmbeddingRequest": ["auto", "fake-embed"],
    }
    for model, names in members.items():
        schema["components"]["schemas"][model]["properties"]["model"] = {
            "type": "string",
            "enum": names,
        }
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(schema))
    examples = os.environ.get("GREENGATE_FUZZ_EXAMPLES", "20")
    seed = os.environ.get("GREENGATE_FUZZ_SEED", "12")
    cmd = [
        str(Path(sys.executable).parent / "st"),
        "--no-color",
        "run",
        str(path),
        "--url",
        gw.url,
        "-H",
        f"Authorization: Bearer {gw.admin_key}",
        "-c",
        "no_server_error,openai_error_shape",
        "--phases",
        "examples,coverage,fuzzing",
        "-n",
        examples,
        "--workers",
        "1",
        "--request-timeout",
        "30",
    ]
    if seed != "random":
        cmd += ["--seed", seed]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_TELEMETRY": "false",
    }
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3000)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert "generated" in out
    # Whatever the fuzzer sent, the decision log kept up and refused nothing.
    ready = httpx.get(gw.url + "/health/ready", timeout=10).json()
    assert ready["decisions_quarantined"] == 0
