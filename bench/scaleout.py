"""Scale-out benchmark: 1, 2 and 3 gateway replicas (real `greengate serve` processes) on one
PostgreSQL and one Redis, against the embedded single-process default, and bursty traffic.

What it measures
    A fast fake provider (bench/fast_upstream.py's protocol, answering `max_tokens` words) and
    N replicas run as subprocesses. One aiohttp client process spreads requests round-robin
    over the replicas at a fixed concurrency (16, 64), streamed and not, and the same request
    goes straight to the provider at the same concurrency, in alternating rounds (direct,
    gateway, direct, gateway) so drift falls on both alike. Every request is under a (large)
    team budget, so with Redis state on each one runs the two budget Lua scripts.

    - rps: gateway requests / gateway wall time; rps_per_core: over os.cpu_count();
    - overhead_p50_ms / overhead_p99_ms: gateway percentile minus direct percentile;
    - state "embedded": 1 replica without Redis (in-process counters); "redis": shared state.
      shared_state_cost_p50_ms = redis 1-replica overhead p50 - embedded overhead p50.
    - burst: open-loop arrivals with Gamma-distributed gaps and Zipf-distributed prompt and
      response lengths at 1x and 3x a mean rate, on all replicas: p99 latency and errors.

Bursty traffic (BurstGPT shapes)
    Source: Wang et al., "BurstGPT: A Real-World Workload Dataset to Optimize LLM Serving
    Systems", arXiv:2401.17644 (KDD 2025), and its trace github.com/HPMLL/BurstGPT: request
    arrivals of the Azure OpenAI GPT services fit a Gamma distribution of inter-arrival times
    (bursty: coefficient of variation above 1), and request and response token counts are
    Zipf-distributed. The parameter values below are ours, picked to match those shapes
    (CV = 1/sqrt(shape) = 2; Zipf exponents near 1.5 with lengths capped at what the fake
    provider and the prompt budget allow); they are not fitted to the trace here. Change them
    with the flags.

Everything shares this machine's cores (client, provider, replicas, PostgreSQL, Redis): with
2 cores the machine, not greengate, is the limit once the gateway processes together use
them; `cpu_bound` in each row says whether the replicas' CPU time was near the cores' wall
time during the cell.

    .venv/bin/python bench/scaleout.py --out bench/results/scaleout.json
    .venv/bin/python bench/scaleout.py --requests 200 --replicas 1,2 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.replica_support import (  # noqa: E402
    Replica,
    new_replica,
    replica_env,
    start_all,
    write_pool,
)
from tests.servers import free_port  # noqa: E402

PG_BASE = os.environ.get("GREENGATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")

# Bursty-traffic shapes (see the module docstring for the source and what is ours).
GAMMA_SHAPE = 0.25  # inter-arrival Gamma shape k: CV = 1/sqrt(k) = 2
ZIPF_PROMPT_A = 1.5  # prompt words ~ Zipf(a), capped
ZIPF_PROMPT_MAX = 400
ZIPF_RESPONSE_A = 1.6  # response tokens (max_tokens the fake provider honours) ~ Zipf(a)
ZIPF_RESPONSE_MAX = 256

UPSTREAM = r'''
import asyncio, sys, time, orjson
sys.path.insert(0, %r)
import fast_upstream as fu

def words(n):
    return [" w%%d" %% i for i in range(max(1, n))]

class H(fu.Handler):
    def on_message_complete(self):
        try:
            req = orjson.loads(b"".join(self.body))
        except orjson.JSONDecodeError:
            return self._send(b"400 Bad Request", b"application/json", b'{"error":{}}')
        n = int(req.get("max_tokens") or len(fu.WORDS))
        ws = words(n)
        usage = {"prompt_tokens": 12, "completion_tokens": len(ws),
                 "total_tokens": 12 + len(ws)}
        model = str(req.get("model") or "fake")
        if not req.get("stream"):
            body = orjson.dumps({"id": "c", "object": "chat.completion",
                "created": int(time.time()), "model": model, "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(ws)}}]})
            return self._send(b"200 OK", b"application/json", body)
        def ev(d):
            return b"data: " + orjson.dumps(d) + b"\n\n"
        base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model}
        events = [ev({**base, "choices": [{"index": 0, "delta": {"content": w}}]}) for w in ws]
        events.append(ev({**base, "choices": [{"index": 0, "delta": {},
                                               "finish_reason": "stop"}]}))
        if (req.get("stream_options") or {}).get("include_usage"):
            events.append(ev({**base, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        out = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"transfer-encoding: chunked\r\n\r\n"]
        out += [b"%%x\r\n%%s\r\n" %% (len(e), e) for e in events]
        out.append(b"0\r\n\r\n")
        self.transport.write(b"".join(out))

async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(H, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()

try:
    import uvloop
    uvloop.run(main(int(sys.argv[1])))
except ImportError:
    asyncio.run(main(int(sys.argv[1])))
'''


@dataclass
class Shot:
    latency_s: float
    ok: bool


def start_upstream(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    script = folder / "upstream.py"
    script.write_text(UPSTREAM % str(REPO / "bench"))
    proc = subprocess.Popen([sys.executable, str(script), str(port)])
    url = f"http://127.0.0.1:{port}/v1"
    import httpx

    for _ in range(200):
        try:
            httpx.get(url + "/models", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("the fake provider did not start")


def new_schema() -> tuple[str, str]:
    schema = "gg_scale_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    return schema, f"{PG_BASE}?options=-csearch_path%3D{schema}"


def drop_schema(schema: str) -> None:
    admin = sa.create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def body(stream: bool, prompt_words: int = 8, max_tokens: int = 9) -> dict[str, Any]:
    b: dict[str, Any] = {"model": "m", "max_tokens": max_tokens, "messages": [
        {"role": "user", "content": " ".join(["bench"] * prompt_words)}]}
    if stream:
        b["stream"] = True
        b["stream_options"] = {"include_usage": True}
    return b


async def one(session: aiohttp.ClientSession, url: str, payload: dict[str, Any],
              headers: dict[str, str]) -> Shot:
    t0 = time.perf_counter()
    try:
        async with session.post(url, json=payload, headers=headers) as r:
            data = await r.read()
            ok = r.status == 200 and (not payload.get("stream") or b"[DONE]" in data)
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    return Shot(time.perf_counter() - t0, ok)


async def closed_loop(urls: list[str], n: int, concurrency: int, payload: dict[str, Any],
                      headers: dict[str, str]) -> tuple[list[Shot], float]:
    """n requests, `concurrency` at a time, round-robin over urls; (shots, wall seconds)."""
    shots: list[Shot] = []
    counter = iter(range(n))
    conn = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        async def worker() -> None:
            for i in counter:
                shots.append(await one(s, urls[i % len(urls)], payload, headers))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return shots, wall


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def cpu_seconds(replicas: list[Replica]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for r in replicas:
        try:
            f = Path(f"/proc/{r.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
        except (FileNotFoundError, AttributeError, IndexError):
            pass
    return total


async def cell(replicas: list[Replica], upstream: str, key: str, concurrency: int, stream: bool,
               n: int) -> dict[str, Any]:
    gw_urls = [r.url + "/v1/chat/completions" for r in replicas]
    direct = [upstream + "/chat/completions"]
    payload = body(stream)
    gw_h = {"Authorization": f"Bearer {key}"}
    await closed_loop(gw_urls, min(n, 4 * concurrency), concurrency, payload, gw_h)  # warm
    g_shots: list[Shot] = []
    d_shots: list[Shot] = []
    g_wall = 0.0
    cpu = 0.0
    for _ in range(2):
        shots, _ = await closed_loop(direct, n // 2, concurrency, payload, {})
        d_shots += shots
        c0 = cpu_seconds(replicas)
        shots, wall = await closed_loop(gw_urls, n // 2, concurrency, payload, gw_h)
        cpu += cpu_seconds(replicas) - c0
        g_shots += shots
        g_wall += wall
    gw_time = g_wall
    cores = os.cpu_count() or 1
    g_ok = [s.latency_s * 1000 for s in g_shots if s.ok]
    d_ok = [s.latency_s * 1000 for s in d_shots if s.ok]
    rps = len(g_shots) / g_wall if g_wall else 0.0
    return {
        "replicas": len(replicas), "concurrency": concurrency, "stream": stream,
        "requests": len(g_shots), "rps": round(rps, 1), "rps_per_core": round(rps / cores, 1),
        "gateway_p50_ms": round(pct(g_ok, 50), 3), "gateway_p99_ms": round(pct(g_ok, 99), 3),
        "direct_p50_ms": round(pct(d_ok, 50), 3), "direct_p99_ms": round(pct(d_ok, 99), 3),
        "overhead_p50_ms": round(pct(g_ok, 50) - pct(d_ok, 50), 3),
        "overhead_p99_ms": round(pct(g_ok, 99) - pct(d_ok, 99), 3),
        "errors": sum(not s.ok for s in g_shots),
        "replica_cpu_s_per_wall_s": round(cpu / gw_time, 2) if gw_time else None,
        # The replicas (not the client, provider or databases) use most of the cores.
        "cpu_bound": bool(gw_time and cpu / gw_time > 0.7 * cores),
        # The machine is shared: its 1-minute load average says how busy it was otherwise.
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


async def burst(replicas: list[Replica], key: str, mean_rps: float, rate_x: float,
                seconds: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rate = mean_rps * rate_x
    n = max(1, int(rate * seconds))
    gaps = rng.gamma(GAMMA_SHAPE, 1.0 / (GAMMA_SHAPE * rate), n)
    prompt = np.minimum(rng.zipf(ZIPF_PROMPT_A, n), ZIPF_PROMPT_MAX)
    resp = np.minimum(rng.zipf(ZIPF_RESPONSE_A, n), ZIPF_RESPONSE_MAX)
    stream = rng.random(n) < 0.5
    urls = [r.url + "/v1/chat/completions" for r in replicas]
    h = {"Authorization": f"Bearer {key}"}
    conn = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=60)) as s:
        tasks = []
        t0 = time.perf_counter()
        at = 0.0
        for i in range(n):
            at += float(gaps[i])
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(s, urls[i % len(urls)], body(
                bool(stream[i]), int(prompt[i]), int(resp[i])), h)))
        shots = await asyncio.gather(*tasks)
    ok = [x.latency_s * 1000 for x in shots if x.ok]
    cv = float(np.std(gaps) / np.mean(gaps))
    return {"rate_x": rate_x, "mean_rps": round(rate, 2), "requests": n,
            "p50_ms": round(pct(ok, 50), 2), "p99_ms": round(pct(ok, 99), 2),
            "errors": sum(not x.ok for x in shots), "arrival_cv": round(cv, 2),
            "replicas": len(replicas)}


def setup_team(r: Replica) -> str:
    key = r.post("/admin/keys", {"team": "bench", "allowed_models": None}).json()["key"]
    r.post("/admin/budgets", {"scope": "team", "subject": "bench", "metric": "usd",
                              "period": "day", "limit": 1e9})
    return key


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--requests", type=int, default=800, help="gateway requests per cell")
    p.add_argument("--replicas", default="1,2,3")
    p.add_argument("--concurrency", default="16,64")
    p.add_argument("--burst-rps", type=float, default=40.0, help="mean rate of the 1x burst")
    p.add_argument("--burst-seconds", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    counts = [int(x) for x in args.replicas.split(",")]
    concs = [int(x) for x in args.concurrency.split(",")]
    prefix = f"ggbench:{uuid.uuid4().hex[:8]}:"
    folder = Path(tempfile.mkdtemp(prefix="gg-scaleout-"))
    upstream_proc, upstream = start_upstream(folder)
    schema, db = new_schema()
    cfg = write_pool(folder / "pool.yaml", upstream)
    rows: list[dict[str, Any]] = []
    bursts: list[dict[str, Any]] = []
    try:
        for state, n_rep in [("embedded", 1)] + [("redis", c) for c in counts]:
            reps = [new_replica(f"{state}-{i}", folder, replica_env(
                db, REDIS if state == "redis" else None, prefix, folder / f"st-{state}-{i}",
                cfg, log_flush_interval_s=0.2)) for i in range(n_rep)]
            start_all(reps)
            try:
                key = setup_team(reps[0])
                time.sleep(1.0)  # the budget reaches every replica (bus) before the load
                for conc in concs:
                    for stream in (False, True):
                        row = asyncio.run(cell(reps, upstream, key, conc, stream,
                                               args.requests))
                        row["state"] = state
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                if state == "redis" and n_rep == max(counts):
                    for x in (1.0, 3.0):
                        b = asyncio.run(burst(reps, key, args.burst_rps, x,
                                              args.burst_seconds, args.seed))
                        bursts.append(b)
                        print(json.dumps(b), flush=True)
            finally:
                for r in reps:
                    r.stop()
    finally:
        upstream_proc.terminate()
        upstream_proc.wait(10)
        drop_schema(schema)
    emb = {(r["concurrency"], r["stream"]): r for r in rows if r["state"] == "embedded"}
    cost = {f"c{c}_{'stream' if s else 'plain'}": round(
        r["overhead_p50_ms"] - emb[(c, s)]["overhead_p50_ms"], 3)
        for r in rows if r["state"] == "redis" and r["replicas"] == 1
        for (c, s) in [(r["concurrency"], r["stream"])] if (c, s) in emb}
    out = {
        "when": datetime.now(UTC).isoformat(), "host": platform.node(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "requests_per_cell": args.requests, "rows": rows, "burst": bursts,
        "shared_state_cost_p50_ms": cost,
        "burst_params": {"gamma_shape": GAMMA_SHAPE, "zipf_prompt_a": ZIPF_PROMPT_A,
                         "zipf_prompt_max": ZIPF_PROMPT_MAX, "zipf_response_a": ZIPF_RESPONSE_A,
                         "zipf_response_max": ZIPF_RESPONSE_MAX, "mean_rps_1x": args.burst_rps,
                         "seconds": args.burst_seconds,
                         "source": "BurstGPT, arXiv:2401.17644 (shapes); values ours"},
        "note": "client, fake provider, replicas, PostgreSQL and Redis share this machine",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
