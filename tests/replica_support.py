"""Gateway replicas as real subprocesses (`greengate serve`) on one database and one Redis,
for the replica tests and bench/scaleout.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa
import yaml

from tests.servers import free_port

ADMIN = "gg-admin-replicas"
START_TIMEOUT_S = 120.0


def write_pool(path: Path, upstream_url: str, **member: Any) -> Path:
    """A pool of two chat members, `m` and a dearer `m2`, on the given OpenAI upstream;
    `member` settings go to both."""
    base = {"kind": "openai", "model": "up", "base_url": upstream_url,
            "price": {"input_per_1m": 1.0, "output_per_1m": 1.0}, "context_window": 8192,
            **member}
    pool = [{"name": "m", **base},
            {"name": "m2", **base, "model": "up2",  # dearer: "auto" on cheapest picks m
             "price": {"input_per_1m": 2.0, "output_per_1m": 2.0}}]
    path.write_text(yaml.safe_dump({"pool": pool}))
    return path


def serve_command() -> list[str]:
    """`greengate serve` as a module run by this interpreter (no entry-point script needed)."""
    import importlib.util

    module = "greengate.cli" if importlib.util.find_spec("greengate.cli") else "gateway.cli"
    return [sys.executable, "-m", module, "serve"]


@dataclass
class Replica:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Replica:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*serve_command(), "--port", str(self.port)], env=self.env, stdout=log,
            stderr=subprocess.STDOUT, cwd=self.env.get("GG_TEST_CWD"))
        log.close()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> Replica:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/health/live", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {self.name} did not start:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        self.send(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def headers(self, key: str = ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def get(self, path: str, key: str = ADMIN, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers(key), timeout=30, **kw)

    def post(self, path: str, json: Any = None, key: str = ADMIN, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=json, headers=self.headers(key), timeout=30,
                          **kw)

    def rss_kb(self) -> int | None:
        """Resident memory of the replica process (Linux /proc), None once it is gone."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return None
        return None


def replica_env(database_url: str, redis_url: str | None, prefix: str, state_dir: Path,
                config: Path, **settings: Any) -> dict[str, str]:
    """The environment of one replica: GREENGATE_* settings plus what the tests need."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENGATE_")}
    env.update({
        "GREENGATE_DATABASE_URL": database_url, "GREENGATE_ADMIN_KEY": ADMIN,
        "GREENGATE_STATE_DIR": str(state_dir), "GREENGATE_CONFIG": str(config),
        "GREENGATE_ROUTER": "cheapest", "GREENGATE_SAFETY_CLASSIFIER": "false",
        "GREENGATE_PII_NAMES": "false", "GREENGATE_CACHE": "false",
        "GREENGATE_LOG_LEVEL": "warning", "GREENGATE_RETRY_BACKOFF_S": "0.01",
        "GREENGATE_KEY_CACHE_TTL_S": "30",  # long: a revocation must not arrive by TTL
        "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    if redis_url:
        env["GREENGATE_REDIS_URL"] = redis_url
        env["GREENGATE_REDIS_PREFIX"] = prefix
    for k, v in settings.items():
        env[f"GREENGATE_{k.upper()}"] = str(v).lower() if isinstance(v, bool) else str(v)
    return env


def migrate(env: dict[str, str]) -> None:
    """`greengate migrate` once, as a deployment does before starting its replicas (they
    would otherwise race to create the same tables)."""
    cmd = serve_command()
    cmd[-1:] = ["migrate", "up"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)


def start_all(replicas: Iterable[Replica]) -> list[Replica]:
    """Migrate once, start every replica at once (start-up is seconds each), wait for all."""
    replicas = list(replicas)
    if replicas:
        migrate(replicas[0].env)
    out = [r.start() for r in replicas]
    for r in out:
        r.wait_ready()
    return out


def new_replica(name: str, folder: Path, env: dict[str, str], port: int | None = None) -> Replica:
    return Replica(name, port or free_port(), env, folder / f"{name}.log")


def wait_until(pred: Any, timeout: float, step: float = 0.01) -> float | None:
    """Seconds until pred() was true, or None when it never was within `timeout`."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(step)


@contextmanager
def isolated_stores(tag: str, pg_base: str, redis_url: str) -> Iterator[tuple[str, str]]:
    """A PostgreSQL schema and a Redis key prefix of one test module's own, (schema, prefix),
    dropped and deleted afterwards, so replica tests never see each other's rows or keys."""
    schema = f"gg_{tag}_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(pg_base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    prefix = f"ggtest:{uuid.uuid4().hex[:10]}:"
    try:
        yield schema, prefix
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(prefix + "*"))
        if keys:
            r.delete(*keys)
