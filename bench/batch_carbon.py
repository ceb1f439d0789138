"""Carbon-aware batch scheduling over a synthetic day, time-compressed.

One run, one workload, two arms interleaved step by step on the same simulated clock: every
batch submitted twice, once with metadata.schedule "now" (the anchor: run at submission) and
once planned by greengate's scheduler, each arm in its own SQL database through the real
BatchService (SQL rows, the planner, the runner, the output files). A simulated pool runs at
most --capacity requests per 5-minute step for each arm; each request's energy is an estimate
(tokens x J/token of the example pool's fake-small member: "estimated", like the gateway's own
rows for such a member), so both arms use the same energy and differ only in when it is drawn.
The intensity is the static daily profile (greengate.yaml `carbon:` or the built-in one).

Reports gCO2e, energy, the share of batches finished inside their completion window, and the
reduction; --out writes JSON.

    .venv/bin/python bench/batch_carbon.py [--batches 48] [--out bench_batch_carbon.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.auth import Principal  # noqa: E402
from gateway.batches import BatchService, ItemResult  # noqa: E402
from gateway.files import FileStore  # noqa: E402
from migrations import runner as migrate  # noqa: E402
from store.database import make_engine  # noqa: E402
from telemetry.carbon_feed import CarbonFeedConfig, make_feed  # noqa: E402

STEP = timedelta(minutes=5)
J_PER_TOKEN = 0.3  # the example pool's fake-small: "illustrative figure for the mock"
WINDOWS = ("24h", "24h", "12h", "6h")


@dataclass
class Arm:
    name: str
    svc: BatchService
    files: FileStore
    ids: list[str]


def _feed(config: Path | None):  # type: ignore[no-untyped-def]
    cfg = None
    if config is not None and config.exists():
        import yaml

        data = yaml.safe_load(config.read_text()) or {}
        if "carbon" in data:
            cfg = CarbonFeedConfig.model_validate(data["carbon"])
    return make_feed(cfg)


def _arm(name: str, tmp: Path, feed, clock, capacity: int) -> Arm:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp}/{name}.db"
    migrate.upgrade(url)
    engine = make_engine(url)  # WAL and a busy timeout, as the gateway runs SQLite
    files = FileStore(engine, 1 << 30)

    async def execute(p: Principal, endpoint: str, body: dict) -> ItemResult:
        tokens = int(body.get("max_tokens") or 200) + 50
        return ItemResult(200, {"usage": {"total_tokens": tokens}}, None, tokens * J_PER_TOKEN,
                          "estimated: tokens x 0.3 J/token")

    # est_request_s: the planner's idea of the run's length at the simulated pool's speed
    svc = BatchService(engine, files, feed, execute, clock=clock, concurrency=64,
                       est_request_s=STEP.total_seconds() / capacity * 64,
                       slot_capacity=capacity * 3)
    return Arm(name, svc, files, [])


def run(n_batches: int, capacity: int, seed: int, config: Path | None) -> dict:
    rng = random.Random(seed)
    feed = _feed(config)
    start = datetime(2026, 6, 1, tzinfo=UTC)
    now = [start]

    def clock() -> datetime:
        return now[0]

    principal = Principal(False, "bench", None, "gg-bench", None)
    # a day of submissions: arrival times uniform over 24 h, sizes 20..400 requests
    workload = sorted((start + timedelta(seconds=rng.uniform(0, 86_400)),
                       rng.randint(20, 400), rng.choice(WINDOWS), rng.choice((64, 256, 512)))
                      for _ in range(n_batches))
    with tempfile.TemporaryDirectory() as tmp:
        arms = [_arm("at_submission", Path(tmp), feed, clock, capacity),
                _arm("carbon_aware", Path(tmp), feed, clock, capacity)]
        pending = list(workload)
        end = start + timedelta(days=2, hours=12)
        while now[0] < end:
            while pending and pending[0][0] <= now[0]:
                _, size, window, max_tokens = pending.pop(0)
                lines = b"\n".join(orjson.dumps({
                    "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "fake-small", "max_tokens": max_tokens,
                             "messages": [{"role": "user", "content": f"q{i}"}]}})
                    for i in range(size))
                for arm in arms:  # interleaved: the same batch, the same instant
                    f = arm.files.create("bench", "in.jsonl", "batch", lines)
                    meta = {"schedule": "now"} if arm.name == "at_submission" else None
                    b = arm.svc.create(principal, "bench", f.id, "/v1/chat/completions",
                                       window, meta)
                    arm.ids.append(b["id"])
            for arm in arms:
                asyncio.run(arm.svc.run_due(max_items=capacity))
            now[0] += STEP
        out: dict = {"batches": n_batches, "capacity_per_5min": capacity, "seed": seed,
                     "intensity_source": feed.source, "energy_source": "estimated",
                     "arms": {}}
        for arm in arms:
            g = e = 0.0
            inside = 0
            for bid in arm.ids:
                b = arm.svc.get("bench", bid)
                c = b["carbon"] or {}
                g += c.get("gco2e") or 0.0
                e += c.get("energy_wh") or 0.0
                done_at = b["completed_at"]
                inside += bool(b["status"] == "completed" and done_at is not None
                               and done_at <= b["expires_at"])
            out["arms"][arm.name] = {"gco2e": round(g, 3), "energy_wh": round(e, 3),
                                     "within_window": inside / len(arm.ids)}
    a, c = out["arms"]["at_submission"], out["arms"]["carbon_aware"]
    out["gco2e_ratio"] = round(c["gco2e"] / a["gco2e"], 4) if a["gco2e"] else None
    out["gco2e_reduction"] = round(1 - c["gco2e"] / a["gco2e"], 4) if a["gco2e"] else None
    prof = getattr(feed, "profile", None)
    out["profile_max_over_min"] = round(max(prof) / min(prof), 3) if prof else None
    out["targets"] = {"within_window_100pct": c["within_window"] == 1.0,
                      "gco2e_reduction_ge_25pct": (out["gco2e_reduction"] or 0) >= 0.25}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=48)
    ap.add_argument("--capacity", type=int, default=600,
                    help="requests the simulated pool runs per 5 minutes, per arm")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--config", type=Path, default=Path("greengate.yaml"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    res = run(args.batches, args.capacity, args.seed, args.config)
    print("| arm | gCO2e | energy Wh (estimated) | batches within window |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in res["arms"].items():
        print(f"| {name} | {r['gco2e']:.1f} | {r['energy_wh']:.1f} | "
              f"{r['within_window']:.0%} |")
    print(f"\ngCO2e carbon-aware / at submission: {res['gco2e_ratio']} "
          f"(reduction {res['gco2e_reduction']:.1%}); profile max/min "
          f"{res['profile_max_over_min']}; targets {res['targets']}")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
