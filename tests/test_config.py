"""The pool file: typed, and a bad one stops start-up naming the file, the field, the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends.pool_config import ConfigError, load_pool
from gateway.settings import Settings

GOOD = """
pool:
  - name: fake-small
    kind: openai
    model: fake-small
    base_url: http://127.0.0.1:9000/v1
    api_key_env: FAKE_API_KEY
    price: {input_per_1m: 0.5, output_per_1m: 1.5}
    context_window: 8192
    tags: [cheap]
    energy: {active_params_b: 8, source: "model card"}
  - name: claude
    kind: litellm
    model: anthropic/claude-3-5-sonnet-20240620
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "greengate.yaml"
    p.write_text(text)
    return p


def test_good_config(tmp_path: Path) -> None:
    pool = load_pool(write(tmp_path, GOOD))
    small = pool.member("fake-small")
    assert small is not None and small.price is not None
    assert small.price.output_per_1m == 1.5 and small.energy.active_params_b == 8
    assert pool.member("claude").price is None  # filled from litellm's map at start


def test_repo_example_config_is_valid() -> None:
    load_pool(Path(__file__).parent.parent / "greengate.yaml")


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (GOOD.replace("kind: openai", "kind: grpc"), "pool[0] (fake-small).kind", "openai"),
        (GOOD.replace("input_per_1m: 0.5", "input_per_1m: -1"),
         "pool[0] (fake-small).price.input_per_1m", "greater than or equal"),
        (GOOD.replace("    base_url: http://127.0.0.1:9000/v1\n", ""),
         "pool[0] (fake-small)", "needs base_url"),
        (GOOD.replace("context_window: 8192", "context_window: lots"),
         "pool[0] (fake-small).context_window", "integer"),
        (GOOD.replace("name: claude", "name: fake-small"), "pool", "duplicate member names"),
        (GOOD.replace("tags: [cheap]", "colour: green"), "pool[0] (fake-small).colour",
         "Extra inputs"),
        (GOOD.replace('energy: {active_params_b: 8, source: "model card"}', "energy: {}"),
         "pool[0] (fake-small).energy", "active_params_b or j_per_token"),
        ("pool: []", "pool", "at least 1"),
        ("just a string", "", "mapping"),
        ("pool: [unclosed", "", "not valid YAML"),
    ],
)
def test_bad_config_messages(tmp_path: Path, text: str, where: str, what: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_pool(path)
    msg = str(info.value)
    assert str(path) in msg and where in msg and what in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_pool(tmp_path / "nope.yaml")


def test_serve_refuses_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("kind: openai", "kind: grpc"))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "GREENGATE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    r = subprocess.run([sys.executable, "-m", "greengate.cli", "serve", "--config", str(path)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert str(path) in r.stderr and "pool[0] (fake-small).kind" in r.stderr
    assert "Traceback" not in r.stderr


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENGATE_PORT", "9123")
    monkeypatch.setenv("GREENGATE_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("GREENGATE_ADMIN_KEY", "secret-admin")
    s = Settings(_env_file=None)
    assert s.port == 9123 and s.database_url.startswith("postgresql")
    assert s.admin_key is not None and s.admin_key.get_secret_value() == "secret-admin"
    assert "secret-admin" not in repr(s)
