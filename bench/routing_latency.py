"""Routing decision latency inside the gateway, under concurrent load.

The gateway (`greengate serve`, router `bandit`) fronts four members on the mock upstream;
C client threads (default 32) send `model: auto` chat requests with real prompts (RouterBench
and RouterDC questions from ../shared/data when present, built-in ones otherwise). Each
decision row records how long routing took inside the gateway: `features_ms` (embedding,
task, cluster, complexity; concurrent requests share micro-batched embedding calls) and
`route_ms` (features plus policy, candidates and bandit ranking). The same number of
requests naming a member directly is the anchor: the end-to-end cost of choosing.

    .venv/bin/python bench/routing_latency.py --out bench/results/routing_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import (  # noqa: E402 - bench/ is not a package
    HOST,
    REPO,
    describe,
    free_port,
    greengate_cmd,
    running,
    subprocess_env,
)

POOL = """pool:
{members}
"""
MEMBER = """  - name: {name}
    kind: openai
    model: {name}
    base_url: http://{host}:{port}/v1
    price: {{input_per_1m: {price}, output_per_1m: {price}}}
    energy: {{active_params_b: {params}, source: "bench"}}
"""
BUILT_IN = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Which gas do plants absorb from the atmosphere during photosynthesis?",
    "The trophy doesn't fit into the brown suitcase because it's too large. What is too large?",
    "Summarise the main causes of the French Revolution in three sentences.",
    "Translate 'good morning, how are you?' into Spanish and German.",
]


def prompts(limit: int) -> list[str]:
    data = REPO.parent / "shared" / "data"
    texts: list[str] = []
    if data.exists():
        from routing.outcomes import load_outcomes

        files = sorted((data / "routerbench").glob("*.csv")) + sorted(
            (data / "routerdc7").glob("*.json"))
        texts = [o.prompt for o in load_outcomes(files)]
    texts = texts or BUILT_IN
    step = max(1, len(texts) // limit)
    return (texts[::step] * (limit // max(1, len(texts[::step])) + 1))[:limit]


def send(client: httpx.Client, model: str, text: str) -> float:
    t = time.perf_counter()
    r = client.post("/chat/completions", json={
        "model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]})
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
    return (time.perf_counter() - t) * 1000


def run_load(base: str, key: str, model: str, texts: list[str], concurrency: int) -> list[float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                      timeout=60, limits=limits, trust_env=False) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda t: send(client, model, t), texts))


def routing_rows(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT features FROM decisions WHERE route_reason LIKE 'auto:%' "
                            "AND status = 200 ORDER BY created_at").fetchall()
    return [json.loads(r[0]) for r in rows if r[0]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=640)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--upstream-latency-ms", type=float, default=0.0,
                   help="the mock answers in this to twice this (uniform); 0 saturates the "
                   "CPU with routing work")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    texts = prompts(args.requests)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        mock_port, gw_port = free_port(), free_port()
        env = subprocess_env({})
        stack.enter_context(running(
            "mock", greengate_cmd("mock-upstream", "--host", HOST, "--port", str(mock_port),
                                  "--latency-ms", str(args.upstream_latency_ms),
                                  "--jitter-ms", str(args.upstream_latency_ms)),
            env, work, f"http://{HOST}:{mock_port}/v1/models", 60))
        members = "".join(MEMBER.format(name=n, host=HOST, port=mock_port, price=pr, params=pa)
                          for n, pr, pa in (("small", 0.2, 8), ("medium", 1.0, 34),
                                            ("large", 5.0, 70), ("huge", 15.0, 220)))
        (work / "pool.yaml").write_text(POOL.format(members=members))
        key = "gg-bench-" + secrets.token_urlsafe(12)
        db = work / "bench.db"
        stack.enter_context(running(
            "gateway", greengate_cmd("serve", "--config", str(work / "pool.yaml"), "--host",
                                     HOST, "--port", str(gw_port)),
            subprocess_env({"GREENGATE_ADMIN_KEY": key, "GREENGATE_ROUTER": "bandit",
                            "GREENGATE_DATABASE_URL": f"sqlite:///{db}",
                            "HF_HUB_OFFLINE": "1"}),
            work, f"http://{HOST}:{gw_port}/health/ready", 180))
        base = f"http://{HOST}:{gw_port}/v1"
        run_load(base, key, "auto", texts[:64], args.concurrency)  # warm-up
        named = run_load(base, key, "small", texts, args.concurrency)
        auto = run_load(base, key, "auto", texts, args.concurrency)
        time.sleep(1.5)  # let the decision log flush
        feats = routing_rows(db)[64:]  # drop the warm-up's rows
        route_ms = [f["route_ms"] for f in feats]
        features_ms = [f["features_ms"] for f in feats]
        embedded = sum(1 for f in feats if f["query"].get("embedded", True)) / len(feats)
        guard_ms = [f.get("safety_ms", 0.0) + f.get("cache_ms", 0.0) for f in feats]
    result = {
        "requests": args.requests, "concurrency": args.concurrency, "cpus": os.cpu_count(),
        "upstream_latency_ms": args.upstream_latency_ms,
        "embedded_share": embedded,  # the rest were routed on cheap features (budget)
        "route_ms": describe(route_ms), "features_ms": describe(features_ms),
        "safety_and_cache_ms": describe(guard_ms),  # on top of the shared features
        "end_to_end_auto_ms": describe(auto), "end_to_end_named_ms": describe(named),
        "targets": {"route_p50_under_10ms": describe(route_ms)["p50"] < 10,
                    "route_p99_under_30ms": describe(route_ms)["p99"] < 30},
    }
    print(f"{'metric':24} {'p50':>8} {'p90':>8} {'p99':>8}")
    for k in ("route_ms", "features_ms", "safety_and_cache_ms", "end_to_end_auto_ms",
              "end_to_end_named_ms"):
        d = result[k]
        print(f"{k:24} {d['p50']:8.2f} {d['p90']:8.2f} {d['p99']:8.2f}")
    print(f"requests routed with the embedding: {embedded:.1%} (the rest skipped it to stay "
          "within GREENGATE_FEATURES_BUDGET_MS)")
    print(json.dumps(result["targets"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
