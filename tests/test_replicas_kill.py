"""SIGKILL and SIGTERM of a replica under load (two real replicas on PostgreSQL and Redis):
every request that was answered 200 has its decision row once the killed replica starts
again. The write-behind batch is made long (2 s) so that without the journal a kill would
certainly lose rows: the bound is "requests still in flight", and those were never 200s."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import PG_BASE
from tests.replica_support import (
    ADMIN,
    Replica,
    isolated_stores,
    new_replica,
    replica_env,
    start_all,
    write_pool,
)

REDIS = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def two(fake_server, tmp_path_factory) -> Iterator[tuple[list[Replica], str]]:
    server, _ = fake_server
    folder = tmp_path_factory.mktemp("kill")
    with isolated_stores("kill", PG_BASE, REDIS) as (schema, prefix):
        db = f"{PG_BASE}?options=-csearch_path%3D{schema}"
        cfg = write_pool(folder / "pool.yaml", server.url + "/v1")
        env = replica_env(db, REDIS, prefix, folder / "state", cfg,
                          log_flush_interval_s=2.0, log_batch_size=100_000)
        reps = [new_replica(f"k{i}", folder, {**env, "GREENGATE_STATE_DIR": str(
            folder / f"state-{i}")}) for i in range(2)]
        try:
            start_all(reps)
            yield reps, db
        finally:
            for r in reps:
                r.stop()


def _load(reps: list[Replica], stop: threading.Event, ok: list[str], other: list[int],
          stream_every: int = 3) -> None:
    """Requests round-robin over the replicas until `stop`; ids of the 200s go to `ok`."""
    with httpx.Client(timeout=10) as client:
        i = 0
        while not stop.is_set():
            r = reps[i % len(reps)]
            i += 1
            body = {"model": "m", "messages": [{"role": "user", "content": f"load {i}"}]}
            if i % stream_every == 0:
                body["stream"] = True
            try:
                resp = client.post(r.url + "/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {ADMIN}"})
                done = resp.status_code == 200 and (
                    not body.get("stream") or b"[DONE]" in resp.content)
            except httpx.HTTPError:
                other.append(-1)
                continue
            if done:
                ok.append(resp.headers["x-request-id"])
            else:
                other.append(resp.status_code)


def _ids(db: str) -> set[str]:
    engine = sa.create_engine(db)
    try:
        with engine.connect() as c:
            return set(c.execute(sa.text("SELECT id FROM decisions")).scalars())
    finally:
        engine.dispose()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_under_load_every_200_has_its_row(two, fake, sig: int) -> None:
    reps, db = two
    fake.latency_s = 0.01
    stop = threading.Event()
    ok: list[str] = []
    other: list[int] = []
    with ThreadPoolExecutor(12) as pool:
        workers = [pool.submit(_load, reps, stop, ok, other) for _ in range(12)]
        time.sleep(2.0)
        reps[1].send(sig)
        reps[1].proc.wait(30)
        time.sleep(0.5)  # the survivor keeps serving; the dead one refuses connections
        stop.set()
        for w in workers:
            w.result()
    killed_ok = len(ok)
    assert killed_ok > 50  # there was load on both when the kill came
    reps[1].start().wait_ready()  # the same state folder: it replays the journal
    deadline = time.monotonic() + 30
    missing = set(ok) - _ids(db)
    while missing and time.monotonic() < deadline:
        time.sleep(0.2)
        missing = set(ok) - _ids(db)
    assert not missing, f"{len(missing)} of {killed_ok} answered requests have no row"
