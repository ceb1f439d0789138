"""Latency of the per-request query features (FeatureExtractor.extract), embedding included.

Prompts are real ones from ../shared/data (RouterBench + RouterDC: code, math, knowledge,
commonsense and Chinese questions, mixed at random) when that folder exists, else built-in
samples. Measures:

* sequential: one request at a time (what a lightly loaded gateway sees), with a breakdown
  into the embedding alone and everything else;
* concurrent: a closed loop of `--concurrency` clients (32), each sending its next request as
  soon as the previous one is answered, so the micro-batcher always has a queue;
* burst: `--concurrency` requests fired at the same instant, repeated.

    python bench/features_latency.py --out bench/results/features_latency.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from routing.features import FeatureExtractor  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"

BUILTIN = [
    "Write a python function to check whether a number is a perfect square.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Which of the following best explains why the Moon has phases?\nA) Earth's shadow\n"
    "B) the Moon's orbit around Earth\nC) clouds\nD) the Sun's rotation",
    "What is the capital of Australia?",
    "Explain the difference between TCP and UDP in detail, with examples of when to use each.",
    "下列哪个城市是中国的首都？\nA. 上海\nB. 北京\nC. 广州\nD. 深圳\n答案：",
    "The trophy doesn't fit into the brown suitcase because the _ is too large.\nA) trophy\n"
    "B) suitcase",
    "Summarise the main arguments for and against a four-day working week.",
    'def fib(n):\n    """Return the n-th Fibonacci number."""\n',
    "Solve for x: 3x + 7 = 22.",
    "Can you recommend three science fiction novels for a teenager who liked Dune?",
    "Translate 'where is the train station' into French and German.",
]


def load_prompts(n: int, seed: int, data: Path | None) -> tuple[list[str], str]:
    dirs = [
        d for d in ((data or SHARED) / "routerbench", (data or SHARED) / "routerdc7") if d.is_dir()
    ]
    if dirs:
        from train.task_classifier import load_labelled

        rows = load_labelled(dirs)
        rng = random.Random(seed)
        rng.shuffle(rows)
        return [r[0] for r in rows[:n]], "shared data: " + ", ".join(str(d) for d in dirs)
    reps = (n + len(BUILTIN) - 1) // len(BUILTIN)
    return (BUILTIN * reps)[:n], "built-in samples"


def body(prompt: str) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": prompt}]}


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p90_ms": round(float(np.percentile(a, 90)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "max_ms": round(float(a.max()), 2),
    }


class _FixedBatcher:
    """Answers every text with a fixed embedding: times everything but the model."""

    def __init__(self, emb: np.ndarray) -> None:
        self._emb = emb

    async def embed(self, text: str) -> np.ndarray:
        return self._emb


async def run(args: argparse.Namespace) -> dict:
    prompts, source = load_prompts(args.n, args.seed, args.data)
    t0 = time.perf_counter()
    fx = FeatureExtractor.default(
        args.clusters, max_wait_ms=args.max_wait_ms, max_batch=args.max_batch
    )
    if args.precision:
        fx.embedder.requested_precision = args.precision
    if args.threads:
        fx.embedder.num_threads = args.threads
    if args.max_seq_length:  # (the shipped classifier was trained at the artifact's length)
        fx.embedder.max_seq_length = args.max_seq_length
    fx.load()
    load_s = time.perf_counter() - t0
    tok_lens = [len(ids) for ids in fx.embedder.token_ids(prompts)]

    for p in prompts[:20]:  # warm-up
        await fx.extract(body(p))

    # Sequential, with a breakdown.
    seq, emb_only, rest = [], [], []
    fixed = FeatureExtractor(
        fx.embedder, fx.classifier, fx.kmeans, _FixedBatcher(np.full(384, 0.05, np.float32))
    )  # type: ignore[arg-type]
    for p in prompts:
        t = time.perf_counter()
        await fx.extract(body(p))
        seq.append((time.perf_counter() - t) * 1000)
    for p in prompts:
        t = time.perf_counter()
        fx.embedder.encode([p])
        emb_only.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        await fixed.extract(body(p), update_clusters=False)
        rest.append((time.perf_counter() - t) * 1000)

    # Closed loop with `concurrency` clients.
    b0, i0 = fx.batcher.batches, fx.batcher.items
    queue = list(prompts) * max(1, (args.requests + len(prompts) - 1) // len(prompts))
    queue = queue[: args.requests]
    it = iter(queue)
    conc: list[float] = []

    async def client() -> None:
        for p in it:
            t = time.perf_counter()
            await fx.extract(body(p))
            conc.append((time.perf_counter() - t) * 1000)

    t = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    wall = time.perf_counter() - t
    conc_batches = fx.batcher.batches - b0
    conc_mean_batch = (fx.batcher.items - i0) / max(1, conc_batches)

    # Bursts: `concurrency` requests at once.
    burst: list[float] = []
    rng = random.Random(args.seed + 1)

    async def one(p: str) -> None:
        t = time.perf_counter()
        await fx.extract(body(p))
        burst.append((time.perf_counter() - t) * 1000)

    b1 = fx.batcher.batches
    for _ in range(args.bursts):
        await asyncio.gather(*(one(rng.choice(prompts)) for _ in range(args.concurrency)))
        await asyncio.sleep(0.05)
    burst_batches = fx.batcher.batches - b1
    await fx.aclose()

    import torch

    return {
        "prompts": {
            "source": source,
            "n": len(prompts),
            "embedded_tokens_p50": float(np.percentile(tok_lens, 50)),
            "embedded_tokens_p90": float(np.percentile(tok_lens, 90)),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
        },
        "embedder": fx.embedder.config(),
        "batcher": {"max_wait_ms": args.max_wait_ms, "max_batch": args.max_batch},
        "load_s": round(load_s, 2),
        "sequential": stats(seq),
        "sequential_embedding_only": stats(emb_only),
        "sequential_without_embedding": stats(rest),
        f"concurrent_{args.concurrency}": {
            **stats(conc),
            "throughput_rps": round(len(conc) / wall, 1),
            "encode_calls": conc_batches,
            "mean_batch": round(conc_mean_batch, 2),
        },
        f"burst_{args.concurrency}": {
            **stats(burst),
            "bursts": args.bursts,
            "encode_calls_per_burst": round(burst_batches / max(1, args.bursts), 2),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="distinct prompts (sequential runs)")
    ap.add_argument("--requests", type=int, default=960, help="requests in the closed loop")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--bursts", type=int, default=20)
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--max-wait-ms", type=float, default=0.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"))
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--max-seq-length", type=int, help="override the artifact's setting")
    ap.add_argument("--data", type=Path, help=f"shared data folder (default {SHARED})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    res = asyncio.run(run(args))

    rows = [(k, v) for k, v in res.items() if isinstance(v, dict) and "p50_ms" in v]
    print(
        f"prompts: {res['prompts']['source']} (n={res['prompts']['n']}, embedded tokens "
        f"p50 {res['prompts']['embedded_tokens_p50']:.0f}, "
        f"p90 {res['prompts']['embedded_tokens_p90']:.0f})"
    )
    print(
        f"embedder: {res['embedder']['precision']}, max_seq_length "
        f"{res['embedder']['max_seq_length']}, torch threads "
        f"{res['machine']['torch_threads']}; load {res['load_s']} s"
    )
    print(
        f"{'scenario':34s} {'n':>5s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} "
        f"{'mean ms':>8s}  extra"
    )
    for k, v in rows:
        extra = ""
        if "throughput_rps" in v:
            extra = f"{v['throughput_rps']} req/s, mean batch {v['mean_batch']}"
        elif "encode_calls_per_burst" in v:
            extra = f"{v['encode_calls_per_burst']} encode calls per burst"
        print(
            f"{k:34s} {v['n']:5d} {v['p50_ms']:8.2f} {v['p90_ms']:8.2f} {v['p99_ms']:8.2f} "
            f"{v['mean_ms']:8.2f}  {extra}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
