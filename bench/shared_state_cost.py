"""What shared state adds to one request, without the rest of the gateway: the budget
admission and charge (two Lua scripts on Redis) against the embedded default (counters in
memory), interleaved request by request. The other shared state (keys, policies, bandit,
breaker) costs a request nothing: it moves by events, off the request path.

    .venv/bin/python bench/shared_state_cost.py --out bench/results/shared_state_cost.json

Redis at GREENGATE_TEST_REDIS (default redis://127.0.0.1:6379/0), keys under a fresh prefix
that is deleted afterwards. The figure includes the loopback round trips; a Redis on another
host adds its network round trip twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.shared_budgets import SharedBudgets  # noqa: E402
from gateway.shared_state import RedisLink  # noqa: E402
from telemetry.budgets import BudgetRule, Budgets, MemoryCounters  # noqa: E402

REDIS = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def one(b: Budgets) -> float:
    rid = uuid.uuid4().hex
    t0 = time.perf_counter()
    b.check("bench", None, rid=rid)
    b.charge("bench", None, 1e-6, 0.5, rid=rid)
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rule = BudgetRule(1, "team", "bench", "usd", "day", 1e9)
    prefix = f"ggbench:{uuid.uuid4().hex[:8]}:"
    shared = SharedBudgets(RedisLink(REDIS), prefix)
    embedded = Budgets(MemoryCounters())
    for b in (shared, embedded):
        b.rules = [rule]
        b.seed(rule, 0.0)
    for _ in range(200):  # warm: connections, script cache
        one(shared)
        one(embedded)
    s_ms, e_ms = [], []
    for _ in range(args.requests):
        e_ms.append(one(embedded))
        s_ms.append(one(shared))
    r = shared.link.client
    keys = list(r.scan_iter(prefix + "*"))
    if keys:
        r.delete(*keys)
    out = {"requests": args.requests, "loadavg_1m": round(os.getloadavg()[0], 2),
           "embedded_p50_ms": round(float(np.percentile(e_ms, 50)), 4),
           "shared_p50_ms": round(float(np.percentile(s_ms, 50)), 4),
           "shared_p99_ms": round(float(np.percentile(s_ms, 99)), 4),
           "added_p50_ms": round(float(np.percentile(s_ms, 50) - np.percentile(e_ms, 50)), 4),
           "target_added_p50_ms": 0.5}
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
