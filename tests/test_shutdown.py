"""SIGTERM drains the decision queue and lets in-flight streams finish: nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
import yaml

from tests.servers import free_port


def _rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one()
    finally:
        engine.dispose()


def test_sigterm_loses_no_decision(tmp_path: Path, fake, fake_url: str) -> None:
    cfg = tmp_path / "pool.yaml"
    cfg.write_text(yaml.safe_dump({"pool": [
        {"name": "m", "kind": "openai", "model": "up", "base_url": fake_url,
         "price": {"input_per_1m": 1, "output_per_1m": 1}}]}))
    db = f"sqlite:///{tmp_path}/drain.db"
    port = free_port()
    env = {**os.environ, "GREENGATE_DATABASE_URL": db, "GREENGATE_ADMIN_KEY": "gg-admin-drain",
           "GREENGATE_LOG_FLUSH_INTERVAL_S": "120", "GREENGATE_LOG_BATCH_SIZE": "100000",
           "GREENGATE_ROUTER": "cheapest",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "greengate.cli", "serve", "--config", str(cfg), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer gg-admin-drain"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)

        with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
            for i in range(30):
                r = c.post("/v1/chat/completions", json={
                    "model": "m", "stream": i % 2 == 0,
                    "messages": [{"role": "user", "content": f"request {i}"}]})
                assert r.status_code == 200
        assert _rows(db) == 0  # all 30 are still queued in memory

        # One slow stream is still running when SIGTERM arrives.
        fake.chunk_delay_s = 0.05
        fake.reply = " ".join(["slow"] * 30)
        streamed: list[str] = []

        def slow() -> None:
            with httpx.stream("POST", base + "/v1/chat/completions", headers=headers, timeout=30,
                              json={"model": "m", "stream": True,
                                    "messages": [{"role": "user", "content": "slow"}]}) as r:
                streamed.extend(r.iter_lines())

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=30)
        # uvicorn re-raises the signal once its graceful shutdown has finished.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "data: [DONE]" in streamed
    assert _rows(db) == 31
