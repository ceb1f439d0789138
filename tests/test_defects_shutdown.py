"""Issue 12, defect 1 end to end: the reported sequence on PostgreSQL. A NUL in `model` used to
wedge the writer; SIGTERM then hung and lost every queued row. Now the NUL row is stored, and
a shutdown while the database is away journals the queue, which the next start replays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from tests.faults import TcpProxy
from tests.servers import free_port

ADMIN = "gg-admin-shutdown"


def _start(cfg: Path, db: str, state: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "GREENGATE_DATABASE_URL": db,
        "GREENGATE_ADMIN_KEY": ADMIN,
        "GREENGATE_STATE_DIR": str(state),
        "GREENGATE_LOG_FLUSH_INTERVAL_S": "120",
        "GREENGATE_LOG_BATCH_SIZE": "100000",
        "GREENGATE_LOG_DRAIN_TIMEOUT_S": "2",
        "GREENGATE_ROUTER": "cheapest",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "greengate.cli", "serve", "--config", str(cfg), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.1)


def _ids(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT id FROM decisions")).scalars())
    finally:
        engine.dispose()


def test_sigterm_with_the_database_away_journals_and_the_next_start_replays(
    tmp_path: Path, fake, fake_url: str, pg_url: str
) -> None:
    cfg = tmp_path / "pool.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "pool": [
                    {
                        "name": "m",
                        "kind": "openai",
                        "model": "up",
                        "base_url": fake_url,
                        "price": {"input_per_1m": 1, "output_per_1m": 1},
                    }
                ]
            }
        )
    )
    url = make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    state = tmp_path / "state"
    headers = {"Authorization": f"Bearer {ADMIN}"}
    proc, base = _start(cfg, proxied, state)
    ids = []
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
            r = c.post(
                "/v1/chat/completions",
                json={"model": "bad\u0000model", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 404
            ids.append(r.headers["x-request-id"])
            for i in range(10):
                r = c.post(
                    "/v1/chat/completions",
                    json={
                        "model": "m",
                        "stream": i % 2 == 0,
                        "messages": [{"role": "user", "content": f"request {i}"}],
                    },
                )
                assert r.status_code == 200
                ids.append(r.headers["x-request-id"])
        assert _ids(pg_url) == set()  # all still queued in memory
        proxy.cut()
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        took = time.monotonic() - t
        out = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 15, took
    assert "Application shutdown failed" not in out, out[-3000:]
    journal = state / "decisions.journal.jsonl"
    assert journal.read_text().count("\n") == len(ids)

    proxy.restore()
    proc, base = _start(cfg, proxied, state)
    try:
        deadline = time.monotonic() + 30
        while not set(ids) <= _ids(pg_url):
            assert time.monotonic() < deadline, "journaled rows were not replayed"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        proxy.close()
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        model = conn.execute(
            sa.text("SELECT requested_model FROM decisions WHERE id = :i"), {"i": ids[0]}
        ).scalar_one()
    engine.dispose()
    assert model == "bad\ufffdmodel"
