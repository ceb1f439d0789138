"""What the decision write-ahead journal costs on the request path: one encode and one
write(2) of a typical decision row per request, timed here against the in-memory queue append
that the decision log did alone before (the anchor), interleaved in rounds.

    .venv/bin/python bench/wal_overhead.py --out bench/results/wal_overhead.json

Also timed: the writer's fsync after each batch of `--batch` rows (off the request path, in
the writer's thread), per batch. The end-to-end figure (gateway overhead with the journal on
and off) comes from bench/overhead.py with GREENGATE_LOG_WAL=false/true.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from store.wal import DecisionWal  # noqa: E402


def typical_row() -> dict:
    """A chat decision row as the proxy builds it (features and candidates included)."""
    return {
        "id": uuid.uuid4().hex, "created_at": datetime.now(UTC), "key_id": 12,
        "key_prefix": "gg-abc1234", "team": "research", "endpoint": "chat/completions",
        "requested_model": "auto", "served_member": "fake-small", "upstream_model": "up-small",
        "route_reason": "bandit: best score", "stream": False, "status": 200, "error": None,
        "candidates": [{"member": f"m{i}", "score": 0.5 + i / 10, "prior_mean": 0.6,
                        "cost_usd": 1e-5 * i, "energy_j": 3.1 * i} for i in range(3)],
        "attempts": [{"member": "fake-small", "status": 200, "ms": 12.5}],
        "features": {"context": [0.1] * 24, "policy": {"lambda": 0.4, "mu": 0.1},
                     "task": "qa", "complexity": 0.31, "deadline_s": 300.0},
        "latency_ms": 14.2, "ttft_ms": 14.2, "prompt_tokens": 42, "completion_tokens": 17,
        "usage_source": "upstream", "cost_usd": 4.6e-5, "energy_j": 17.7,
        "energy_source": "estimated", "cache_hit": False, "gco2e": 0.002,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gg-wal-bench-"))
    wal = DecisionWal(folder, rotate_rows=10 * args.batch)
    rows = [typical_row() for _ in range(args.rows)]
    for r in rows:
        r["id"] = uuid.uuid4().hex
    anchor_us: list[float] = []
    wal_us: list[float] = []
    fsync_ms: list[float] = []
    for _ in range(args.rounds):
        q: collections.deque = collections.deque()
        t0 = time.perf_counter()
        for r in rows:
            q.append(r)
        anchor_us.append((time.perf_counter() - t0) / len(rows) * 1e6)
        t0 = time.perf_counter()
        for r in rows:
            wal.append(r)
            q.append(r)
        wal_us.append((time.perf_counter() - t0) / len(rows) * 1e6)
        for i in range(0, len(rows), args.batch):  # the writer: resolve and fsync per batch
            t1 = time.perf_counter()
            wal.sync()
            fsync_ms.append((time.perf_counter() - t1) * 1000)
            wal.resolve(r["id"] for r in rows[i:i + args.batch])
            wal.append(rows[i])  # keeps a dirty segment for the next sync
            wal.resolve([rows[i]["id"]])
    wal.close()
    line_bytes = len(json.dumps(rows[0], default=str))
    out = {
        "rows_per_round": args.rows, "rounds": args.rounds, "row_bytes": line_bytes,
        "queue_append_us": round(float(np.median(anchor_us)), 3),
        "wal_append_plus_queue_us": round(float(np.median(wal_us)), 3),
        "wal_cost_us_per_request": round(float(np.median(wal_us) - np.median(anchor_us)), 3),
        "fsync_per_batch_ms_p50": round(float(np.percentile(fsync_ms, 50)), 3),
        "fsync_per_batch_ms_p99": round(float(np.percentile(fsync_ms, 99)), 3),
        "batch": args.batch, "filesystem_folder": str(folder),
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
