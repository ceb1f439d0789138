"""Fixtures: a fake OpenAI provider (real HTTP server) and greengate gateways in front of it."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from backends.mock_upstream import MockBehaviour, create_app
from backends.pool_config import PoolConfig
from gateway.settings import Settings
from greengate.app import create_app as create_gateway
from tests.servers import ServerThread

ADMIN_KEY = "gg-admin-test-" + uuid.uuid4().hex
PG_BASE = os.environ.get(
    "GREENGATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def fake_server() -> Iterator[tuple[ServerThread, MockBehaviour]]:
    behaviour = MockBehaviour()
    server = ServerThread(create_app(behaviour)).start()
    yield server, behaviour
    server.stop()


@pytest.fixture
def fake(fake_server: tuple[ServerThread, MockBehaviour]) -> Iterator[MockBehaviour]:
    _, behaviour = fake_server
    behaviour.reset()
    yield behaviour
    behaviour.reset()


@pytest.fixture
def fake_url(fake_server: tuple[ServerThread, MockBehaviour]) -> str:
    return fake_server[0].url + "/v1"


def closed_port_url() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now: connecting is refused
    return f"http://127.0.0.1:{port}/v1"


def default_pool(fake_url: str) -> list[dict[str, Any]]:
    return [
        {"name": "fake-small", "kind": "openai", "model": "up-small", "base_url": fake_url,
         "api_key_env": "FAKE_PROVIDER_KEY", "price": {"input_per_1m": 0.5, "output_per_1m": 1.5},
         "context_window": 8192, "energy": {"j_per_token": 0.3, "source": "test figure"},
         "fallbacks": ["fake-large"]},
        {"name": "fake-large", "kind": "openai", "model": "up-large", "base_url": fake_url,
         "price": {"input_per_1m": 3.0, "output_per_1m": 15.0}, "context_window": 32768},
        {"name": "fake-embed", "kind": "openai", "mode": "embedding", "model": "up-embed",
         "base_url": fake_url, "price": {"input_per_1m": 0.02, "output_per_1m": 0.0}},
        {"name": "dead", "kind": "openai", "model": "up-dead", "base_url": closed_port_url(),
         "price": {"input_per_1m": 0.1, "output_per_1m": 0.1}, "fallbacks": ["fake-small"]},
        {"name": "lite", "kind": "litellm", "model": "openai/up-lite", "base_url": fake_url,
         "api_key_env": "FAKE_PROVIDER_KEY",
         "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}},
    ]


@dataclass
class Gateway:
    server: ServerThread
    engine: Engine
    admin_key: str = ADMIN_KEY

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def v1(self) -> str:
        return self.server.url + "/v1"

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    def post(self, path: str, json: Any = None, key: str | None = None,
             **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=json, headers=self.headers(key), timeout=30, **kw)

    def decision(self, rid: str, timeout: float = 10.0) -> dict[str, Any]:
        """The decision row of request `rid`, waiting for the batched writer."""
        deadline = time.monotonic() + timeout
        while True:
            with self.engine.connect() as conn:
                row = conn.execute(sa.text("SELECT * FROM decisions WHERE id = :id"),
                                   {"id": rid}).mappings().first()
            if row is not None:
                out = dict(row)
                for col in ("candidates", "attempts", "features"):
                    if isinstance(out[col], str):  # SQLite hands JSON back as text
                        out[col] = json.loads(out[col])
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"no decision row for request {rid}")
            time.sleep(0.02)

    def latest_decision(self, expected_total: int, timeout: float = 10.0) -> dict[str, Any]:
        """The newest row once `expected_total` rows exist (for calls made without an id)."""
        deadline = time.monotonic() + timeout
        while self.count_decisions() < expected_total:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {expected_total} decision rows")
            time.sleep(0.02)
        with self.engine.connect() as conn:
            rid = conn.execute(sa.text(
                "SELECT id FROM decisions ORDER BY created_at DESC LIMIT 1")).scalar_one()
        return self.decision(rid)

    def count_decisions(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one()

    def create_key(self, team: str = "team-a", models: list[str] | None = None) -> str:
        r = self.post("/admin/keys", {"team": team, "allowed_models": models})
        assert r.status_code == 201, r.text
        return r.json()["key"]


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_gateway(
    tmp_path: Path, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GatewayFactory]:
    monkeypatch.setenv("FAKE_PROVIDER_KEY", "sk-upstream-secret")
    started: list[tuple[ServerThread, Engine]] = []

    def factory(pool: list[dict] | None = None, database_url: str | None = None,
                extractor: Any = None, **overrides: Any) -> Gateway:
        url = database_url or f"sqlite:///{tmp_path}/gg-{len(started)}.db"
        fast = {"router": "cheapest", "log_flush_interval_s": 0.02, "retry_backoff_s": 0.01,
                "retry_backoff_max_s": 0.05,
                # Each gateway its own state (decision journal): never the repo's .greengate.
                "state_dir": tmp_path / f"state-{len(started)}"}
        settings = Settings(_env_file=None, database_url=url, **{**fast, **overrides})
        cfg = PoolConfig.model_validate({"pool": pool or default_pool(fake_url)})
        server = ServerThread(create_gateway(settings, cfg, ADMIN_KEY, extractor)).start()
        engine = sa.create_engine(url)
        started.append((server, engine))
        return Gateway(server, engine)

    yield factory
    for server, engine in started:
        if not server.server.should_exit:
            server.stop()
        engine.dispose()


@pytest.fixture
def gw(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()


@pytest.fixture(scope="session")
def pg_reachable() -> None:
    """Skip PostgreSQL tests, with the reason, when no server answers at GREENGATE_TEST_PG (a
    contributor's laptop); under CI (`CI` set, where the servers are up) that is a failure, so
    a missing server cannot turn the PostgreSQL tests into silent skips."""
    engine = sa.create_engine(PG_BASE, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as e:
        reason = (f"PostgreSQL is not reachable at {engine.url.render_as_string()} "
                  f"(GREENGATE_TEST_PG): {str(e.orig).strip().splitlines()[0]}")
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI runs the PostgreSQL tests", pytrace=False)
        pytest.skip(reason)
    finally:
        engine.dispose()


@pytest.fixture
def pg_url(pg_reachable: None) -> Iterator[str]:
    """A fresh schema in the PostgreSQL test database, dropped afterwards."""
    schema = "gg_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
