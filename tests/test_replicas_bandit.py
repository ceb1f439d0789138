"""Bandit learning merged across replicas (real processes, the bandit router with its feature
models): feedback given to one replica moves the others within a second, and a replica that
starts late begins from the merged snapshot in SQL."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conftest import PG_BASE
from tests.replica_support import (
    Replica,
    isolated_stores,
    new_replica,
    replica_env,
    start_all,
    wait_until,
    write_pool,
)

REDIS = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def pair(fake_server, tmp_path_factory) -> Iterator[tuple[list[Replica], dict]]:
    server, _ = fake_server
    folder = tmp_path_factory.mktemp("bandit-replicas")
    with isolated_stores("bandit", PG_BASE, REDIS) as (schema, prefix):
        db = f"{PG_BASE}?options=-csearch_path%3D{schema}"
        cfg = write_pool(folder / "pool.yaml", server.url + "/v1")
        env = replica_env(db, REDIS, prefix, folder / "state", cfg, router="bandit",
                          bandit_save_interval_s=0.2, log_flush_interval_s=0.05)
        reps = [new_replica(f"b{i}", folder, {**env, "GREENGATE_STATE_DIR": str(
            folder / f"state-{i}")}) for i in range(2)]
        try:
            start_all(reps)
            yield reps, env
        finally:
            for r in reps:
                r.stop()


def _arms(r: Replica) -> dict[str, int]:
    resp = r.get("/admin/replicas")
    assert resp.status_code == 200, resp.text
    return resp.json()["bandit_arms"]


def test_feedback_on_one_replica_moves_the_others_and_a_late_starter(
        pair: tuple[list[Replica], dict], tmp_path) -> None:
    (a, b), env = pair
    before_a, before_b = _arms(a), _arms(b)
    assert before_a == before_b  # both restored the same (empty) state
    served = []
    for i in range(3):
        resp = a.post("/v1/chat/completions", {"model": "auto", "messages": [
            {"role": "user", "content": f"explain merging number {i}"}]})
        assert resp.status_code == 200, resp.text
        served.append((resp.headers["x-request-id"], resp.headers["x-greengate-member"]))
    for rid, _ in served:
        fb = a.post("/v1/feedback", {"request_id": rid, "score": 0.9})
        assert fb.status_code == 200 and fb.json()["applied_to_bandit"], fb.text
    want = dict(before_a)
    for _, member in served:
        want[member] = want.get(member, 0) + 1
    assert _arms(a) == want
    took = wait_until(lambda: _arms(b) == want, 5, 0.01)
    assert took is not None and took < 1.0, (took, _arms(b), want)
    assert b.get("/admin/replicas").json()["bandit"]["remote_updates"] >= 3

    # A replica started now restores the merged state from SQL.
    late = new_replica("late", tmp_path, {**env, "GREENGATE_STATE_DIR": str(tmp_path / "s")})
    wait_until(lambda: False, 0.6)  # a save interval or two
    start_all([late])
    try:
        assert _arms(late) == want
    finally:
        late.stop()
