"""`greengate serve --workers 1` against `--workers N`, side by side in one run.

Both gateways (same pool of two members on one fast fake provider, SQLite decision logs, cache
and safety models off; the N-worker one shares state through Redis) are driven by one
aiohttp load generator (bench/vs_litellm.py's), cell by cell, the two alternating slot by slot
so machine noise falls on both alike. Per cell: RPS, CPU ms per request (the server's
processes), p50 and p99.

    .venv/bin/python bench/workers_ab.py --out bench/results/workers_ab.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_litellm as V  # noqa: E402
from overhead import write_json  # noqa: E402


async def measure(systems: list[V.System], args: argparse.Namespace) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for s in systems:
            for stream in (False, True):
                await V.drive(session, s, stream, max(args.concurrency), args.warmup_s,
                              V.CellResult())
        for conc in args.concurrency:
            for stream in (False, True):
                key = f"c{conc}_{'stream' if stream else 'plain'}"
                res = {s.name: V.CellResult() for s in systems}
                for rnd in range(args.rounds):
                    for s in systems if rnd % 2 == 0 else systems[::-1]:
                        await V.drive(session, s, stream, conc, args.slot_s, res[s.name])
                cells[key] = {n: V.summarise(r, None) for n, r in res.items()}
                print(key + ": " + ", ".join(
                    f"{n} {c['rps']:.0f} rps, {c['cpu_ms_per_request']:.2f} ms CPU, "
                    f"p50 {c['p50_ms']:.1f} p99 {c['p99_ms']:.1f}"
                    for n, c in cells[key].items()), flush=True)
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--workers", type=int, default=2, help="the N of the second gateway")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--slot-s", type=float, default=2.5)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = p.parse_args(argv)
    if not V.redis_answers(args.redis_url):
        print(f"workers_ab.py: --workers {args.workers} needs Redis; none at {args.redis_url}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gg-workers-ab-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        up_port, _ = V.start_upstream(stack, workdir)
        systems = [V.start_greengate(stack, workdir / f"w{n}", up_port, n, args.redis_url,
                                     name=f"workers_{n}")
                   for n in (1, args.workers)]
        cells = asyncio.run(measure(systems, args))
    ratios = {k: {"rps_x": c[f"workers_{args.workers}"]["rps"] / c["workers_1"]["rps"]}
              for k, c in cells.items()}
    doc = {"meta": {"cpu_count": os.cpu_count(), "loadavg_1m_at_end": os.getloadavg()[0],
                    "rounds": args.rounds, "slot_s": args.slot_s, "workers": args.workers},
           "cells": cells, "ratios": ratios}
    for k, r in ratios.items():
        print(f"{k}: {args.workers} workers serve {r['rps_x']:.2f}x one worker's RPS")
    if args.out:
        write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
