"""Placement among a member's replicas: round-robin vs least load vs least load + prefix
affinity, on two greengate engine servers (subprocesses, tiny random model) and one workload.

The workload is what prefix affinity is for: many requests share a long system prompt (a team's
assistant, an agent's instructions), several system prompts are in use at once, and requests
arrive in bursts. Within a repeat every policy gets the same workload (the same system prompts,
questions, order and arrival times), except that each run's system prompts carry the run's
own number, so no policy profits from prefixes an earlier run left in the caches; runs are
interleaved (every repeat runs each policy once, the order rotated) so the shared machine's
noise hits all policies alike.

Per policy: TTFT p50/p99 (request sent to first content chunk, through the member), output
tokens/s over the run's wall time, and the prefix-cache hit rate (prompt tokens served from the
engines' prefix caches / prompt tokens admitted, both from the engines' own /metrics counters).
Where the engine servers measure energy (NVML on a GPU), the sum of per-request energy is put
against the meter's whole-window reading of the same run.

    .venv/bin/python bench/replicas.py --out bench/results/replicas.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.base import UpstreamRequest  # noqa: E402
from backends.engine.checkpoint import write_tiny_checkpoint  # noqa: E402
from backends.pool_config import MemberConfig, ReplicaOptions  # noqa: E402
from backends.replicas import ReplicaMember  # noqa: E402
from tests.engine_servers import EngineServerProcess  # noqa: E402

POLICIES = ("round_robin", "least_load", "affinity")
WORDS = ("order", "refund", "invoice", "shipping", "warranty", "battery", "frame", "brake",
         "chain", "tyre", "saddle", "pedal", "account", "password", "discount", "store",
         "repair", "delivery", "size", "colour", "helmet", "light", "lock", "bell")


@dataclass
class Run:
    policy: str
    ttft_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    hit_tokens: float = 0.0
    prompt_tokens: float = 0.0
    energy_j: float | None = 0.0
    energy_sources: set[str] = field(default_factory=set)
    window_j: float | None = None
    placed: dict[str, int] = field(default_factory=dict)
    placed_by: dict[str, int] = field(default_factory=dict)  # affinity | overloaded | ...
    ejections: int = 0
    migrations: int = 0


def system_prompt(rng: random.Random, salt: str = "") -> str:
    """A long, distinctive system prompt (~700 characters); `salt` (same width in every run)
    makes it the run's own without changing anything else."""
    rules = " ".join(f"Rule {i}: when asked about {rng.choice(WORDS)} mention the "
                     f"{rng.choice(WORDS)} policy and the {rng.choice(WORDS)} form."
                     for i in range(10))
    return f"You are assistant {salt}{rng.randrange(10**9)} of a bicycle shop. {rules}"


def workload(rng: random.Random, prompts: int, per_prompt: int, burst: int,
             gap_s: float, salt: str = "") -> list[tuple[float, dict]]:
    """(arrival offset, body): each system prompt used `per_prompt` times, in random order,
    arriving in bursts of `burst` requests every `gap_s` seconds."""
    systems = [system_prompt(rng, salt) for _ in range(prompts)]
    order = [s for s in systems for _ in range(per_prompt)]
    rng.shuffle(order)
    out = []
    for i, system in enumerate(order):
        at = (i // burst) * gap_s + rng.uniform(0, gap_s / 10)
        question = " ".join(rng.choice(WORDS) for _ in range(6))
        out.append((at, {"model": "tiny", "stream": True, "temperature": 0,
                         "max_tokens": 16, "ignore_eos": True,
                         "stream_options": {"include_usage": True},
                         "messages": [{"role": "system", "content": system},
                                      {"role": "user", "content": f"Question: {question}?"}]}))
    return out


def counters(servers: list[EngineServerProcess]) -> dict[str, float]:
    total: dict[str, float] = {}
    for s in servers:
        for k, v in s.metrics().items():
            total[k] = total.get(k, 0.0) + v
    return total


async def one(m: ReplicaMember, at: float, t0: float, body: dict, run: Run) -> None:
    await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
    sent = time.perf_counter()
    first: float | None = None
    async for payload in m.stream(UpstreamRequest("chat/completions", body, True)):
        data = orjson.loads(payload)
        if first is None and any((c.get("delta") or {}).get("content")
                                 for c in data.get("choices") or []):
            first = time.perf_counter()
        use = data.get("usage")
        if use:
            run.tokens += int(use.get("completion_tokens") or 0)
            if use.get("energy_j") is None or run.energy_j is None:
                run.energy_j = None
            else:
                run.energy_j += float(use["energy_j"])
                run.energy_sources.add(str(use.get("energy_source")))
            url = use["replicas"]["served_by"]
            run.placed[url] = run.placed.get(url, 0) + 1
            for hop in use["replicas"]["hops"]:
                why = str(hop["placed_by"])
                run.placed_by[why] = run.placed_by.get(why, 0) + 1
            run.migrations += len(use["replicas"]["migrations"])
    if first is not None:
        run.ttft_ms.append((first - sent) * 1000)


async def run_policy(policy: str, servers: list[EngineServerProcess],
                     jobs: list[tuple[float, dict]], overload_gap: float | None = None) -> Run:
    cfg = MemberConfig(name="tiny", kind="openai", model="tiny",
                       endpoints=[s.url for s in servers],
                       replicas=ReplicaOptions(policy=policy, scrape_interval_s=0.2,  # type: ignore[arg-type]
                                               **({} if overload_gap is None
                                                  else {"overload_gap": overload_gap})))
    m = ReplicaMember(cfg)
    run = Run(policy)
    before = counters(servers)
    try:
        await m.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(m, at, t0, body, run) for at, body in jobs))
        run.wall_s = time.perf_counter() - t0
        run.ejections = sum(r["ejections"] for r in m.stats()["replicas"])
    finally:
        await m.aclose()
    after = counters(servers)
    run.hit_tokens = (after["greengate_engine_prefix_cache_hit_tokens_total"]
                      - before["greengate_engine_prefix_cache_hit_tokens_total"])
    run.prompt_tokens = (after["greengate_engine_prompt_tokens_total"]
                         - before["greengate_engine_prompt_tokens_total"])
    meter = "greengate_engine_meter_energy_joules_total"
    if meter in after and meter in before:
        # Each server reads the whole device: with both on one GPU, one server's window is
        # the run's total (the other's is the same reading).
        run.window_j = (after[meter] - before[meter]) / len(servers)
    return run


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for policy in POLICIES:
        mine = [r for r in runs if r.policy == policy]
        ttft = [t for r in mine for t in r.ttft_ms]
        tokens = sum(r.tokens for r in mine)
        wall = sum(r.wall_s for r in mine)
        hits = sum(r.hit_tokens for r in mine)
        prompt = sum(r.prompt_tokens for r in mine)
        energy = None if any(r.energy_j is None for r in mine) else sum(
            r.energy_j or 0.0 for r in mine)
        window = None if any(r.window_j is None for r in mine) else sum(
            r.window_j or 0.0 for r in mine)
        rows.append({
            "policy": policy, "requests": len(ttft), "ttft_p50_ms": pct(ttft, 50),
            "ttft_p99_ms": pct(ttft, 99), "tokens_per_s": round(tokens / wall, 2) if wall else
            None, "prefix_hit_rate": round(hits / prompt, 4) if prompt else None,
            "energy_j": energy,
            "energy_source": sorted({s for r in mine for s in r.energy_sources}) or None,
            "meter_window_j": window,
            "energy_vs_window": round(energy / window, 4) if energy and window else None,
            "placed": [r.placed for r in mine],
            "placed_by": [r.placed_by for r in mine],
            "ejections": sum(r.ejections for r in mine),
            "migrations": sum(r.migrations for r in mine)})
    return rows


def per_run(runs: list[Run]) -> list[dict[str, Any]]:
    """Every run on its own (repeat order), so the spread between repeats shows."""
    out = []
    for i, r in enumerate(runs):
        out.append({"repeat": i // len(POLICIES), "policy": r.policy,
                    "ttft_p50_ms": pct(r.ttft_ms, 50), "ttft_p99_ms": pct(r.ttft_ms, 99),
                    "tokens_per_s": round(r.tokens / r.wall_s, 2) if r.wall_s else None,
                    "prefix_hit_rate": round(r.hit_tokens / r.prompt_tokens, 4)
                    if r.prompt_tokens else None, "placed_by": r.placed_by})
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gg-bench-replicas-"))
    ckpt = write_tiny_checkpoint(work / "model", family="llama", size=args.size)
    # Later flags win: on a GPU the servers read NVML.
    extra = ("--device", args.device, "--energy-meter", "auto") if args.device != "cpu" else ()
    servers = [EngineServerProcess(ckpt, work / f"r{i}", kv_cache_gb=args.kv_cache_gb,
                                   max_num_seqs=16, extra=extra) for i in range(2)]
    for s in servers:
        s.start()
    try:
        # Warm both (first forward passes are slow) with a prompt no run shares.
        warm = workload(random.Random(-1), 1, 2, 2, 0.0)
        await run_policy("round_robin", servers, warm)
        runs: list[Run] = []
        for rep in range(args.repeats):
            order = POLICIES[rep % 3:] + POLICIES[:rep % 3]
            for policy in order:
                jobs = workload(random.Random(rep), args.prompts, args.per_prompt, args.burst,
                                args.gap_s, salt=f"{len(runs):03d}-")
                runs.append(await run_policy(policy, servers, jobs, args.overload_gap))
                r = runs[-1]
                hit = r.hit_tokens / r.prompt_tokens if r.prompt_tokens else float("nan")
                print(f"repeat {rep} {policy}: {len(r.ttft_ms)} requests, {r.wall_s:.1f} s, "
                      f"hit rate {hit:.3f}, TTFT p99 {pct(r.ttft_ms, 99)} ms, "
                      f"placed {r.placed} by {r.placed_by}, {r.ejections} ejections, "
                      f"{r.migrations} migrations", flush=True)
    finally:
        for s in servers:
            s.stop()
    rows = summarize(runs)
    by = {r["policy"]: r for r in rows}
    rr, aff = by["round_robin"], by["affinity"]
    ratios = {
        "affinity_vs_round_robin_prefix_hit_rate": round(
            aff["prefix_hit_rate"] / rr["prefix_hit_rate"], 3)
        if aff["prefix_hit_rate"] and rr["prefix_hit_rate"] else None,
        "affinity_vs_round_robin_ttft_p99": round(aff["ttft_p99_ms"] / rr["ttft_p99_ms"], 3)
        if aff["ttft_p99_ms"] and rr["ttft_p99_ms"] else None,
    }
    targets = {
        "prefix_hit_rate_ge_1_5x_round_robin": ratios[
            "affinity_vs_round_robin_prefix_hit_rate"] is not None and ratios[
            "affinity_vs_round_robin_prefix_hit_rate"] >= 1.5,
        "ttft_p99_below_round_robin": ratios["affinity_vs_round_robin_ttft_p99"] is not None
        and ratios["affinity_vs_round_robin_ttft_p99"] < 1.0,
    }
    return {"setup": {"replicas": 2, "model": f"random llama ({args.size})",
                      "device": args.device, "repeats": args.repeats,
                      "system_prompts_per_run": args.prompts,
                      "requests_per_prompt": args.per_prompt, "burst": args.burst,
                      "burst_gap_s": args.gap_s, "max_tokens": 16,
                      "kv_cache_gb": args.kv_cache_gb,
                      "overload_gap": args.overload_gap or ReplicaOptions().overload_gap},
            "rows": rows, "runs": per_run(runs), "ratios": ratios, "targets": targets}


def table(result: dict[str, Any]) -> str:
    lines = ["| policy | TTFT p50 ms | TTFT p99 ms | tokens/s | prefix hit rate |",
             "|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['policy']} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | "
                     f"{r['tokens_per_s']} | {r['prefix_hit_rate']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompts", type=int, default=12,
                   help="system prompts per run (12: more than one replica's KV holds; with 8 "
                   "round robin loses nothing to eviction and 1.5x is out of reach)")
    p.add_argument("--per-prompt", type=int, default=4, help="requests per system prompt")
    p.add_argument("--burst", type=int, default=6)
    p.add_argument("--gap-s", type=float, default=0.5)
    p.add_argument("--size", default="small", choices=["test", "small", "100m"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--kv-cache-gb", type=float, default=0.02,
                   help="per replica: ~3500 tokens of the small model, about 7 system prompts")
    p.add_argument("--overload-gap", type=float, default=None,
                   help="requests above the least loaded replica before affinity yields "
                   "(default: the member's default)")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(json.dumps({"ratios": result["ratios"], "targets": result["targets"]}))


if __name__ == "__main__":
    main()
