"""Which upstream HTTP client for the remote members: the candidates side by side.

The concurrency-64 collapse of issue 15 came from httpcore's AsyncConnectionPool, whose work per
request grows with connections x queued requests. This drives the same fast fake provider
(bench/fast_upstream.py, a subprocess) from this process with each candidate, interleaved in
rounds, at each concurrency, and reports requests per second, latency p50/p99 and the CPU
milliseconds this process spends per request (the client's own cost):

- httpx_shared: one httpx.AsyncClient, max_connections 1000 (the old greengate client);
- httpx_bounded: httpx with a small pool (--pool connections) and an asyncio.Semaphore of the
  same size in front, so httpcore never holds queued requests;
- aiohttp: aiohttp.TCPConnector(limit=--pool), greengate's client now.

    .venv/bin/python bench/upstream_clients.py --out bench/results/upstream_clients.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

REPO = Path(__file__).resolve().parent.parent
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
Send = Callable[[], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)


async def drive(
    send: Send, concurrency: int, seconds: float, lat: list[float]
) -> tuple[int, float, float]:
    stop = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await send()
            lat.append((time.perf_counter() - t0) * 1000)
            done += 1

    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - t0, time.process_time() - c0


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    shared = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200), trust_env=False
    )
    bounded = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=args.pool, max_keepalive_connections=args.pool),
        trust_env=False,
    )
    gate = asyncio.Semaphore(args.pool)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.pool))

    async def s_shared() -> None:
        r = await shared.post(url, content=BODY)
        assert r.status_code == 200

    async def s_bounded() -> None:
        async with gate:
            r = await bounded.post(url, content=BODY)
        assert r.status_code == 200

    async def s_aiohttp() -> None:
        async with session.post(url, data=BODY) as r:
            await r.read()
            assert r.status == 200

    candidates: dict[str, Send] = {
        "httpx_shared": s_shared,
        "httpx_bounded": s_bounded,
        "aiohttp": s_aiohttp,
    }
    for send in candidates.values():
        await drive(send, max(args.concurrency), 1.0, [])
    out: dict[str, Any] = {}
    for conc in args.concurrency:
        acc = {n: {"lat": [], "n": 0, "wall": 0.0, "cpu": 0.0} for n in candidates}
        names = list(candidates)
        for rnd in range(args.rounds):
            for n in names[rnd % 3 :] + names[: rnd % 3]:
                n_done, wall, cpu = await drive(candidates[n], conc, args.slot_s, acc[n]["lat"])
                acc[n]["n"] += n_done
                acc[n]["wall"] += wall
                acc[n]["cpu"] += cpu
        out[f"c{conc}"] = {
            n: {
                "rps": a["n"] / a["wall"],
                "p50_ms": pct(a["lat"], 50),
                "p99_ms": pct(a["lat"], 99),
                "client_cpu_ms_per_request": 1000 * a["cpu"] / a["n"],
                "requests": a["n"],
            }
            for n, a in acc.items()
        }
        print(
            f"c{conc}: "
            + ", ".join(
                f"{n} {v['rps']:.0f} rps p99 {v['p99_ms']:.1f} ms "
                f"{v['client_cpu_ms_per_request']:.3f} CPU ms/req"
                for n, v in out[f"c{conc}"].items()
            )
        )
    await shared.aclose()
    await bounded.aclose()
    await session.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--pool", type=int, default=16, help="connections for the bounded clients")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--slot-s", type=float, default=2.0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "fast_upstream.py"), "--port", str(port)]
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        try:
            import uvloop

            result = uvloop.run(run(args, f"http://127.0.0.1:{port}/v1/chat/completions"))
        except ImportError:
            result = asyncio.run(run(args, f"http://127.0.0.1:{port}/v1/chat/completions"))
    finally:
        up.terminate()
    doc = {
        "meta": {
            "cpu_count": os.cpu_count(),
            "pool": args.pool,
            "rounds": args.rounds,
            "slot_s": args.slot_s,
            "loadavg_1m_at_end": os.getloadavg()[0],
            "note": "client and fake provider share this machine's cores",
        },
        "results": result,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
