"""What making decision rows storable costs the writer, next to the insert it protects.

What it measures
    Realistic decision rows (a routed chat request: candidates, attempts, a features dict with
    the 20-odd-number context vector) are written in batches of 500 to a fresh SQLite file,
    two ways in alternating rounds so drift and caching fall on both alike:

    - anchor: the rows inserted as they are (the writer before issue 12);
    - ours: every row passed through gateway.storable.storable_decision, then inserted.

    A share of the rows (--dirty, default 1%) carries a NUL in `requested_model` and an
    over-long error, so the cleaning path does real work. CPU time (process_time) per row is
    reported for each, with the ratio ours/anchor, and the cleaning alone per row. The machine
    is shared: the figures are CPU time, not wall time, and are medians over the rounds.

How to run
    .venv/bin/python bench/decision_log.py --out bench/results/decision_log.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from migrations import runner as migrate
from store import database
from store.schema import Decision
from store.storable import storable_decision

TABLE = Decision.__table__


def make_row(i: int, dirty: bool) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "created_at": datetime.now(UTC),
        "key_id": 3,
        "key_prefix": "gg-abcdefg",
        "team": "team-a",
        "endpoint": "chat/completions",
        "requested_model": "bad\x00model" if dirty else "auto",
        "served_member": "fake-small",
        "upstream_model": "up-small",
        "route_reason": "auto:bandit",
        "candidates": [
            {"member": m, "score": 0.5 - j / 10, "quality": 0.7, "energy_j": 12.0}
            for j, m in enumerate(("fake-small", "fake-large", "lite"))
        ],
        "attempts": [{"member": "fake-small", "status": 200, "ms": 12.5}],
        "features": {
            "policy": {"lambda": 0.5, "mu": 0.1, "exploration": True},
            "flags": [],
            "query": {"task": "qa", "prompt_tokens": 42, "complexity": 0.31},
            "context": [round(0.01 * k, 6) for k in range(24)],
            "analyse_ms": 3.2,
        },
        "stream": i % 2 == 0,
        "status": 200,
        "error": ("e" * 30_000) if dirty else None,
        "latency_ms": 120.0,
        "ttft_ms": 40.0,
        "prompt_tokens": 42,
        "completion_tokens": 90,
        "usage_source": "upstream",
        "cost_usd": 1e-5,
        "energy_j": 27.0,
        "energy_source": "estimated:declared-j-per-token",
        "cache_hit": False,
        "gco2e": 0.003,
        "counterfactual_member": "fake-large",
        "counterfactual_cost_usd": 2e-4,
        "counterfactual_energy_j": 80.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5000, help="rows per round and variant")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dirty", type=float, default=0.01, help="share of rows needing repair")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    every = max(1, round(1 / args.dirty)) if args.dirty > 0 else 0
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/bench.db"
        migrate.upgrade(url)
        engine = database.make_engine(url)
        per_row: dict[str, list[float]] = {"anchor": [], "ours": [], "clean_only": []}
        for r in range(args.rounds):
            order = ("anchor", "ours") if r % 2 == 0 else ("ours", "anchor")
            for variant in order:
                rows = [make_row(i, bool(every) and i % every == 0) for i in range(args.rows)]
                t = time.process_time()
                if variant == "ours":
                    rows = [storable_decision(TABLE, row) for row in rows]
                    per_row["clean_only"].append((time.process_time() - t) / args.rows)
                for i in range(0, len(rows), 500):
                    with engine.begin() as conn:
                        conn.execute(insert(Decision), rows[i : i + 500])
                per_row[variant].append((time.process_time() - t) / args.rows)
        engine.dispose()
    med = {k: statistics.median(v) for k, v in per_row.items()}
    result = {
        "bench": "decision_log",
        "rows_per_round": args.rows,
        "rounds": args.rounds,
        "dirty_share": args.dirty,
        "cpu_us_per_row": {k: round(v * 1e6, 2) for k, v in med.items()},
        "ratio_ours_to_anchor": round(med["ours"] / med["anchor"], 3),
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
