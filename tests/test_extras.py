"""A missing extra at run time is one clear line that names it, never a traceback.

The missing module is simulated: `sys.modules[name] = None` makes Python refuse the import
exactly as it does for an uninstalled package (ModuleNotFoundError), in this process for the
unit tests and in a child process for the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backends.pool_config import PoolConfig
from extras import MissingExtra, require
from gateway import extras_check
from gateway.settings import Settings

ENGINE_POOL = """
pool:
  - name: tiny
    kind: engine
    model: tiny-random-llama
"""
LITELLM_POOL = """
pool:
  - name: claude
    kind: litellm
    model: anthropic/claude-3-haiku
    price: {input_per_1m: 0.25, output_per_1m: 1.25}
"""


def _pool(text: str) -> PoolConfig:
    import yaml

    return PoolConfig.model_validate(yaml.safe_load(text))


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)
    with pytest.raises(MissingExtra) as info:
        require("litellm", "providers", "the litellm member 'claude'")
    assert str(info.value) == ("the litellm member 'claude' needs `pip install "
                               "greengate[providers]` (module 'litellm' is not installed)")
    assert isinstance(info.value, ImportError) and info.value.extra == "providers"


def test_require_returns_the_module_when_installed() -> None:
    import json

    assert require("json", "none", "the test") is json


def test_a_broken_module_is_not_reported_as_missing(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an absent module means "install the extra"; one that is there but raises keeps
    its own error, so a real bug is not hidden behind install advice."""
    (tmp_path / "gg_broken_mod.py").write_text("raise RuntimeError('a bug, not an install')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="a bug"):
        require("gg_broken_mod", "engine", "the test")


@pytest.mark.parametrize(("pool", "blocked", "extra", "what"), [
    (LITELLM_POOL, "litellm", "providers", "the litellm member 'claude'"),
    (ENGINE_POOL, "backends.engine_backend", "engine", "the engine member 'tiny'"),
])
def test_start_up_check_names_the_member_and_extra(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pool: str, blocked: str, extra: str,
        what: str) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(MissingExtra) as info:
        extras_check.check(settings, _pool(pool))
    assert str(info.value).startswith(f"{what} needs `pip install greengate[{extra}]`")


def test_postgres_and_redis_urls_need_their_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = _pool("pool: [{name: a, kind: openai, model: m, base_url: 'http://127.0.0.1:1/v1'}]")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "redis", None)
    pg = Settings(_env_file=None, database_url="postgresql+psycopg://u@127.0.0.1/db")
    with pytest.raises(MissingExtra, match=r"greengate\[postgres\]"):
        extras_check.check(pg, pool)
    rd = Settings(_env_file=None, database_url="sqlite://", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(MissingExtra, match=r"greengate\[redis\]"):
        extras_check.check(rd, pool)
    extras_check.check(Settings(_env_file=None, database_url="sqlite://"), pool)  # core only


def test_serve_without_torch_says_one_line(tmp_path: Path) -> None:
    """`greengate serve` with an engine member and no torch: exit 2, one line that names the
    member and the extra, no traceback. torch is blocked in the child before anything runs."""
    cfg = tmp_path / "greengate.yaml"
    cfg.write_text(ENGINE_POOL)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        from greengate.cli import main
        sys.exit(main(["serve", "--config", {str(cfg)!r}, "--port", "1"]))
    """)
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "GREENGATE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
           "GREENGATE_STATE_DIR": str(tmp_path / "state")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "needs `pip install" in ln]
    assert lines == ["greengate: the engine member 'tiny' needs `pip install greengate[engine]` "
                     "(module 'torch' is not installed)"]
