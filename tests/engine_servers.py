"""Engine servers (`python -m backends.engine.server`) as real subprocesses for tests and the
replica benchmark: start on a free port, wait for /health, kill (SIGKILL, as a crash), restart
on the same port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


class EngineServerProcess:
    def __init__(self, model: Path | str, state_dir: Path, *, kv_cache_gb: float = 0.05,
                 max_num_seqs: int = 16, extra: tuple[str, ...] = (),
                 port: int | None = None) -> None:
        self.model = str(model)
        self.state_dir = state_dir
        self.kv_cache_gb = kv_cache_gb
        self.max_num_seqs = max_num_seqs
        self.extra = extra
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir / f"engine-{self.port}.log"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def start(self, timeout: float = 120.0) -> EngineServerProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # One thread each: the machine's cores are shared with the test process and the other
        # replica (two threads under load were ~7x slower here).
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "backends.engine.server", "--model", self.model,
               "--port", str(self.port), "--device", "cpu", "--dtype", "float32",
               "--energy-meter", "none",
               "--state-dir", str(self.state_dir), "--kv-cache-gb", str(self.kv_cache_gb),
               "--max-num-seqs", str(self.max_num_seqs), "--log-level", "warning",
               *self.extra]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.root + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("engine server did not start in time")
            time.sleep(0.2)

    def kill(self) -> None:
        """A crash: no clean shutdown, open streams break."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> dict[str, float]:
        from backends.replicas import parse_metrics

        return parse_metrics(httpx.get(self.root + "/metrics", timeout=5).text)
