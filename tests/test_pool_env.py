"""The pool file's ${NAME:-default} references, and `make run`'s mock port as a setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.pool_config import ConfigError, load_pool
from gateway.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _urls(path: Path) -> dict[str, str | None]:
    return {m.name: m.base_url for m in load_pool(path).pool if m.name.startswith("fake-")}


def test_the_demo_members_follow_the_mock_upstream_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENGATE_MOCK_UPSTREAM_PORT", raising=False)
    assert set(_urls(REPO / "greengate.yaml").values()) == {"http://127.0.0.1:9000/v1"}
    assert Settings(_env_file=None).mock_upstream_port == 9000
    monkeypatch.setenv("GREENGATE_MOCK_UPSTREAM_PORT", "9123")
    assert set(_urls(REPO / "greengate.yaml").values()) == {"http://127.0.0.1:9123/v1"}
    assert Settings(_env_file=None).mock_upstream_port == 9123  # what mock-upstream listens on


def test_an_unset_reference_without_a_default_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GG_TEST_NOT_SET", raising=False)
    f = tmp_path / "pool.yaml"
    f.write_text("pool:\n  - name: m\n    kind: openai\n    model: m\n"
                 "    base_url: http://${GG_TEST_NOT_SET}/v1\n")
    with pytest.raises(ConfigError, match=r"\$\{GG_TEST_NOT_SET\} is not set"):
        load_pool(f)
