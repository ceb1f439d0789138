"""Soak: mixed traffic over several replicas for a long while, RSS of each replica each minute.

What it runs
    A fast fake provider and `--replicas` gateway replicas (real `greengate serve` processes)
    on one PostgreSQL schema and one Redis (shared state on, the semantic cache shared through
    Redis), and a client process sending, round-robin over the replicas, at `--concurrency`:
    plain and streamed chat completions, a share of cache-eligible prompts repeated from a
    small set (hits), prompts of varied length, and feedback on a share of answers.
    Every request is under a team budget (large: never exhausted).

What it reports (JSON, and a PNG of RSS per replica over time)
    - rss_mb[replica][minute]: VmRSS of each replica process at the end of each minute;
    - growth_after_warmup_pct: per replica, (last - minute 5) / minute 5 (the issue: < 10%);
    - errors: non-200 answers (and transport errors), by status;
    - served (200s) and rows: decision rows in PostgreSQL for the soak's team after the
      replicas stopped with SIGTERM (the issue: rows equal to 200s).

    make soak                        # 30 minutes
    .venv/bin/python bench/soak.py --minutes 6 --out bench/results/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.scaleout import REDIS, drop_schema, new_schema, start_upstream  # noqa: E402
from tests.replica_support import new_replica, replica_env, start_all, write_pool  # noqa: E402

TEAM = "soak"
CACHED = [f"What is the capital of country number {i}?" for i in range(20)]


def payload(rng: random.Random) -> dict[str, Any]:
    cached = rng.random() < 0.3
    if cached:
        text = rng.choice(CACHED)  # repeated: the cache answers most of these
    else:
        text = " ".join(f"word{rng.randrange(10_000)}" for _ in range(rng.randint(3, 200)))
    b: dict[str, Any] = {"model": rng.choice(["m", "m2", "auto"]),
                         "max_tokens": rng.randint(4, 64),
                         "messages": [{"role": "user", "content": text}]}
    if cached:
        b["temperature"] = 0  # cache-eligible (the default cap is 0.3)
    if rng.random() < 0.4:
        b["stream"] = True
        b["stream_options"] = {"include_usage": True}
    return b


async def traffic(urls: list[str], key: str, seconds: float, concurrency: int,
                  seed: int, stats: Counter) -> None:
    h = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=60)) as s:
        async def worker(w: int) -> None:
            rng = random.Random(seed * 1000 + w)
            i = w
            while time.monotonic() < deadline:
                url = urls[i % len(urls)]
                i += 1
                body = payload(rng)
                try:
                    async with s.post(url + "/v1/chat/completions", json=body,
                                      headers=h) as r:
                        data = await r.read()
                        ok = r.status == 200 and (not body.get("stream") or b"[DONE]" in data)
                        stats["200" if ok else f"status {r.status}"] += 1
                        if r.headers.get("x-greengate-member") == "cache":
                            stats["cache hits"] += 1
                        rid = r.headers.get("x-request-id")
                    if ok and rid and rng.random() < 0.05:
                        async with s.post(url + "/v1/feedback", headers=h, json={
                                "request_id": rid, "score": rng.random()}) as fr:
                            await fr.read()
                            stats[f"feedback {fr.status}"] += 1
                except (aiohttp.ClientError, TimeoutError) as e:
                    stats[f"transport {type(e).__name__}"] += 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))


def plot(rss: dict[str, list[float]], path: Path, minutes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, series in rss.items():
        ax.plot(range(1, len(series) + 1), series, marker="o", label=name)
    ax.axvline(5, color="grey", linestyle=":", label="warm-up ends")
    ax.set_xlabel("minute")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"greengate soak: {len(rss)} replicas, {minutes} min mixed traffic")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO / "bench/results/soak.json")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gg-soak-"))
    upstream_proc, upstream = start_upstream(folder)
    schema, db = new_schema()
    prefix = f"ggsoak:{uuid.uuid4().hex[:8]}:"
    cfg = write_pool(folder / "pool.yaml", upstream)
    reps = [new_replica(f"replica-{i}", folder, replica_env(
        db, REDIS, prefix, folder / f"state-{i}", cfg, cache=True, cache_redis=True,
        log_flush_interval_s=0.2)) for i in range(args.replicas)]
    stats: Counter = Counter()
    rss: dict[str, list[float]] = {r.name: [] for r in reps}
    try:
        start_all(reps)
        key = reps[0].post("/admin/keys", {"team": TEAM, "allowed_models": None}).json()["key"]
        reps[0].post("/admin/budgets", {"scope": "team", "subject": TEAM, "metric": "usd",
                                        "period": "day", "limit": 1e9})
        urls = [r.url for r in reps]
        for minute in range(args.minutes):
            asyncio.run(traffic(urls, key, 60.0, args.concurrency, args.seed + minute, stats))
            for r in reps:
                kb = r.rss_kb()
                rss[r.name].append(round(kb / 1024, 1) if kb else float("nan"))
            print(json.dumps({"minute": minute + 1, "rss_mb": {n: s[-1] for n, s in
                                                                 rss.items()},
                              "stats": dict(stats)}), flush=True)
    finally:
        codes = [r.stop() for r in reps]  # SIGTERM: each drains its decision log
        upstream_proc.terminate()
        upstream_proc.wait(10)
    engine = sa.create_engine(db)
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT count(*) FROM decisions WHERE team = :t AND "
                                 "status = 200 AND endpoint = 'chat/completions'"),
                         {"t": TEAM}).scalar_one()
    engine.dispose()
    drop_schema(schema)
    warm = 4 if args.minutes > 5 else 0
    growth = {n: round(100.0 * (s[-1] - s[warm]) / s[warm], 2) if len(s) > warm else None
              for n, s in rss.items()}
    errors = {k: v for k, v in stats.items() if k.startswith(("status", "transport"))}
    out = {"when": datetime.now(UTC).isoformat(), "minutes": args.minutes,
           "replicas": args.replicas, "concurrency": args.concurrency, "rss_mb": rss,
           "growth_after_warmup_pct": growth, "warmup_minutes": warm + 1 if warm else 0,
           "served": stats["200"], "rows": rows, "errors": errors,
           "exit_codes": codes, "stats": dict(stats)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    plot(rss, args.out.with_suffix(".png"), args.minutes)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
