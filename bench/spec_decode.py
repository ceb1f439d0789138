"""Speculative decoding in the bundled engine: off, n-gram, draft model, self-speculation and the
upper bound (draft = target), same target and prompts, in one run, interleaved.

The pair is trained here first (bench/spec_pair.py, cached under .greengate/models/spec-pair/):
random weights would make acceptance meaningless. Prompts are held-out RouterBench / RouterDC
questions ("chat") and, for prompt lookup, requests whose answer copies the input ("copy": a
held-out answer to repeat). Every request decodes the same number of tokens greedily
(ignore_eos), so tokens/s compare like for like; the greedy output of every proposer is checked
token for token against "off" on every run.

Cells are interleaved (for each repeat, every configuration runs the same cell in turn, the
order rotated), so the shared machine's noise hits all configurations alike. Inter-token latency
counts each token's share of the wait before it arrived: tokens that arrive together in one
verify step split that step's gap.

    .venv/bin/python bench/spec_decode.py --out bench/results/spec_decode.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from spec_pair import EXIT_LAYER, PAIR_DIR, ensure_pair, heldout_prompts, render  # noqa: E402

from backends.engine.engine import Engine, EngineConfig  # noqa: E402
from backends.engine.sampler import SamplingParams  # noqa: E402
from backends.engine.spec import SpeculativeConfig  # noqa: E402
from backends.engine.tokenizer import Tokenizer  # noqa: E402


@dataclass
class Cell:
    proposer: str
    workload: str
    concurrency: int
    tokens: int = 0
    seconds: float = 0.0
    itl: list[float] = field(default_factory=list)
    outputs: dict[int, list[int]] = field(default_factory=dict)
    proposed: int = 0
    accepted: int = 0
    verify_steps: int = 0
    decode_steps: int = 0


def configs(pair: Path, max_k: int) -> dict[str, SpeculativeConfig | None]:
    return {
        "off": None,
        "ngram": SpeculativeConfig("ngram", max_k=max_k, ngram_min=2, ngram_max=4),
        "draft": SpeculativeConfig("draft", max_k=max_k, draft_model=str(pair / "draft")),
        "self": SpeculativeConfig("self", max_k=max_k, exit_layer=EXIT_LAYER),
        # Draft = target: acceptance's upper bound (fixed k: it can never be faster).
        "upper_bound": SpeculativeConfig("draft", max_k=max_k, adaptive=False,
                                         draft_model=str(pair / "target")),
    }


def workloads(tok: Tokenizer, n: int) -> dict[str, list[list[int]]]:
    bos = [tok.bos_token_id] if getattr(tok, "bos_token_id", None) is not None else []
    chat = [bos + tok.encode(render(p), add_special_tokens=False)
            for _, p in heldout_prompts(n, seed=1, max_chars=500, exclude=("copy",))]
    copy = [bos + tok.encode(render(p), add_special_tokens=False)
            for _, p in heldout_prompts(n, seed=2, max_chars=600, families=("copy",))]
    return {"chat": chat, "copy": copy}


async def run_cell(engine: Engine, prompts: list[list[int]], concurrency: int,
                   params: SamplingParams, cell: Cell) -> None:
    sem = asyncio.Semaphore(concurrency)
    before = dict(engine.stats().get("speculative") or {})

    async def one(i: int, prompt: list[int]) -> None:
        async with sem:
            tokens: list[int] = []
            arrivals: list[float] = []
            async for ev in engine.generate(prompt, params):
                if ev.token_id is not None:
                    tokens.append(ev.token_id)
                    arrivals.append(time.perf_counter())
            cell.outputs[i] = tokens
            cell.itl.extend(inter_token_latencies(arrivals))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    cell.seconds += time.perf_counter() - t0
    cell.tokens += sum(len(t) for t in cell.outputs.values())
    after = engine.stats().get("speculative") or {}
    for key, attr in (("proposed_tokens", "proposed"), ("accepted_tokens", "accepted"),
                      ("verify_steps", "verify_steps"), ("decode_steps", "decode_steps")):
        setattr(cell, attr, getattr(cell, attr) + int(after.get(key, 0)) - int(before.get(key, 0)))


def inter_token_latencies(arrivals: list[float], same_step_s: float = 5e-4) -> list[float]:
    """Each token's share of the wait before it arrived (the first token, TTFT, excluded).
    Tokens of one verify step arrive back to back (under `same_step_s` apart) and split it."""
    groups: list[list[float]] = []
    for t in arrivals:
        if groups and t - groups[-1][-1] < same_step_s:
            groups[-1].append(t)
        else:
            groups.append([t])
    out: list[float] = []
    for prev, group in zip(groups, groups[1:], strict=False):
        gap = group[0] - prev[-1]
        out.extend([gap / len(group)] * len(group))
    if groups and len(groups[0]) > 1:  # tokens that came with the first one
        out.extend([0.0] * (len(groups[0]) - 1))
    return out


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--max-k", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default); on a shared machine more than 1 "
                    "spins against the other processes' load")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    pair_info = ensure_pair()
    tok = Tokenizer(PAIR_DIR / "target")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    loads = workloads(tok, max(concurrencies))
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    engines: dict[str, Engine] = {}
    for name, spec in configs(PAIR_DIR, args.max_k).items():
        cfg = EngineConfig(device=args.device, dtype=args.dtype, max_num_seqs=64,
                           token_budget=512, max_waiting=512, cpu_kv_bytes=1 << 30,
                           speculative=spec)
        engines[name] = Engine.from_checkpoint(PAIR_DIR / "target", cfg)
        print(f"loaded {name}", flush=True)

    plan: list[tuple[str, int]] = [("chat", c) for c in concurrencies] + [("copy", 1)]
    cells: dict[tuple[str, str, int], Cell] = {}
    step_cost: dict[str, float] = {}
    for workload, conc in plan:
        n = {1: 4, 8: 16}.get(conc, conc)
        prompts = loads[workload][:n]
        names = list(engines) if workload == "chat" else ["off", "ngram", "upper_bound"]
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                cell = cells.setdefault((name, workload, conc), Cell(name, workload, conc))
                asyncio.run(run_cell(engines[name], prompts, conc, params, cell))
            done = [cells[(nm, workload, conc)] for nm in names]
            print(f"{workload} c={conc} rep {rep}: " + ", ".join(
                f"{c.proposer} {c.tokens / c.seconds:.1f} tok/s" for c in done), flush=True)
    for name, eng in engines.items():
        if eng.spec is not None:
            step_cost[name] = eng.spec.target_cost.seconds(1)
        eng.shutdown()

    rows, mismatches = [], []
    for (name, workload, conc), cell in cells.items():
        ref = cells[("off", workload, conc)]
        for i, toks in cell.outputs.items():
            if toks != ref.outputs.get(i):
                pairs = enumerate(zip(toks, ref.outputs[i], strict=False))
                first = next((j for j, (a, b) in pairs if a != b),
                             min(len(toks), len(ref.outputs[i])))
                mismatches.append({"proposer": name, "workload": workload, "concurrency": conc,
                                   "request": i, "first_difference_at": first})
        tps = cell.tokens / cell.seconds if cell.seconds else 0.0
        rows.append({
            "proposer": name, "workload": workload, "concurrency": conc,
            "tokens_per_s": round(tps, 2),
            "speedup_vs_off": round(tps / (ref.tokens / ref.seconds), 3),
            "itl_p50_ms": pct(cell.itl, 50), "itl_p99_ms": pct(cell.itl, 99),
            "acceptance": cell.accepted / cell.proposed if cell.proposed else None,
            "mean_accepted_len": (cell.accepted / cell.verify_steps + 1
                                  if cell.verify_steps else None),
            "mean_k": cell.proposed / cell.decode_steps if cell.decode_steps else 0.0,
        })
    result = {
        "greedy_identical": not mismatches,
        "mismatches": mismatches,
        "pair": {
            "target_params": pair_info["target"]["params"],
            "draft_params": pair_info["draft"]["params"],
            "target_training_tokens": pair_info["target"]["tokens"],
            "target_training_minutes": round(pair_info["target"]["minutes"], 1),
            "draft_training_tokens": pair_info["draft"]["tokens"],
            "draft_training_minutes": round(pair_info["draft"]["minutes"], 1),
            "target_final_loss": round(pair_info["target"]["final_loss"], 3),
            "draft_final_loss": round(pair_info["draft"]["final_loss"], 3),
            "exit_layer": pair_info["target"]["exit_layer"],
        },
        "device": args.device, "dtype": args.dtype, "max_tokens": args.max_tokens,
        "max_k": args.max_k, "repeats": args.repeats,
        "measured_step_s_at_1_token": step_cost,
        "rows": sorted(rows, key=lambda r: (r["workload"], r["concurrency"], r["proposer"])),
    }
    print(f"\ngreedy identical: {result['greedy_identical']}  pair: {result['pair']}")
    print(f"{'workload':8} {'c':>3} {'proposer':12} {'tok/s':>8} {'x off':>6} {'ITL p50':>8} "
          f"{'p99':>8} {'accept':>7} {'len':>5} {'mean k':>6}")
    for r in result["rows"]:
        def f(v: Any, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)
        print(f"{r['workload']:8} {r['concurrency']:>3} {r['proposer']:12} "
              f"{r['tokens_per_s']:>8.1f} {r['speedup_vs_off']:>6.2f} "
              f"{f(r['itl_p50_ms'], '8.1f')} {f(r['itl_p99_ms'], '8.1f')} "
              f"{f(r['acceptance'], '7.2f')} {f(r['mean_accepted_len'], '5.2f')} "
              f"{r['mean_k']:>6.2f}")
    best1 = max((r["speedup_vs_off"] for r in result["rows"]
                 if r["concurrency"] == 1 and r["workload"] == "chat"
                 and r["proposer"] not in ("off", "upper_bound")), default=None)
    worst32 = min((r["speedup_vs_off"] for r in result["rows"]
                   if r["concurrency"] == max(concurrencies) and r["proposer"] != "off"
                   and r["proposer"] != "upper_bound"), default=None)
    result["targets"] = {"best_speedup_c1": best1, "worst_ratio_at_max_concurrency": worst32}
    print(f"best proposer at c=1: {best1}x (target >= 1.8); worst at "
          f"c={max(concurrencies)}: {worst32}x (target >= 0.97)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
