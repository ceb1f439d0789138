"""greengate's bundled engine against `transformers` generate, same checkpoint, same requests.

64 prompts with chat-like input and output lengths (ignore-eos, greedy), all submitted at once.
The engine serves them with continuous batching; transformers gets them as one padded batch and
must run every row to the longest output (it cannot stop rows early), so its throughput counts
only the tokens each request asked for. Each side runs in its own process so peak memory is its
own. On CUDA it also reports batch-1 decode speed against the memory-bandwidth roofline.

    .venv/bin/python bench/engine_throughput.py --out bench/results/engine_throughput.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



def workload(n: int, seed: int, max_in: int, max_out: int,
             vocab: int) -> tuple[list[list[int]], list[int]]:
    """Input and output lengths log-normal like chat traffic (many short, a long tail)."""
    rng = np.random.default_rng(seed)
    ins = np.clip(rng.lognormal(np.log(max_in / 4), 0.8, n), 8, max_in).astype(int)
    outs = np.clip(rng.lognormal(np.log(max_out / 4), 0.8, n), 8, max_out).astype(int)
    # Ids clear of the specials at the start of the vocabulary.
    prompts = [rng.integers(vocab // 16, vocab, size=int(k)).tolist() for k in ins]
    return prompts, [int(o) for o in outs]


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def latency_summary(ttft: list[float], itl: list[float]) -> dict[str, Any]:
    return {"ttft_ms": {f"p{q}": pct(ttft, q) for q in (50, 90, 99)},
            "itl_ms": {f"p{q}": pct(itl, q) for q in (50, 90, 99)}}


def peak_memory(device: str) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ---- the engine -------------------------------------------------------------------------------
def run_engine(ckpt: Path, prompts: list[list[int]], outs: list[int], device: str,
               dtype: str, kv_gb: float, max_num_seqs: int, token_budget: int) -> dict[str, Any]:
    from backends.engine.config import ModelConfig
    from backends.engine.engine import Engine, EngineConfig
    from backends.engine.kv_cache import block_bytes
    from backends.engine.sampler import SamplingParams

    if kv_gb > 0:
        kv_bytes = int(kv_gb * 2**30)
    else:
        # Just enough KV for every request at full length at once, one block of slack each:
        # what a deployment would size for this load, so peak memory compares fairly.
        mc = ModelConfig.from_path(ckpt)
        bs = EngineConfig().block_size
        per_block = block_bytes(mc.num_hidden_layers, bs, mc.num_key_value_heads, mc.head_dim,
                                getattr(torch, dtype))
        blocks = sum((len(p) + o + 2 * bs - 1) // bs for p, o in zip(prompts, outs, strict=True))
        kv_bytes = blocks * per_block
    cfg = EngineConfig(device=device, dtype=dtype, max_num_seqs=max_num_seqs,
                       token_budget=token_budget, cpu_kv_bytes=kv_bytes,
                       max_waiting=len(prompts) + 1)
    engine = Engine.from_checkpoint(ckpt, cfg)
    waste: list[float] = []

    async def one(i: int, t0: float) -> tuple[float, list[float], int]:
        params = SamplingParams(temperature=0.0, max_tokens=outs[i], ignore_eos=True)
        times: list[float] = []
        async for ev in engine.generate(prompts[i], params):
            if ev.token_id is not None:
                times.append(time.perf_counter())
        return times[0] - t0, [b - a for a, b in zip(times, times[1:], strict=False)], len(times)

    async def sample_waste(stop: asyncio.Event) -> None:
        while not stop.is_set():
            s = engine.stats()
            if s["running"]:
                waste.append(s["kv_waste"])
            await asyncio.sleep(0.05)

    async def main() -> tuple[float, list[tuple[float, list[float], int]]]:
        # Warm-up: first calls pay for allocator and kernel set-up on both sides.
        async for _ in engine.generate(prompts[0][:16], SamplingParams(temperature=0.0,
                                                                       max_tokens=4)):
            pass
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_waste(stop))
        t0 = time.perf_counter()
        res = await asyncio.gather(*[one(i, t0) for i in range(len(prompts))])
        wall = time.perf_counter() - t0
        stop.set()
        await sampler
        return wall, res

    wall, res = asyncio.run(main())
    stats = engine.stats()
    engine.shutdown()
    tokens = sum(r[2] for r in res)
    assert tokens == sum(outs), (tokens, sum(outs))
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            **latency_summary([r[0] * 1000 for r in res],
                              [d * 1000 for r in res for d in r[1]]),
            "kv_waste_mean": statistics.fmean(waste) if waste else None,
            "kv_waste_max": max(waste) if waste else None,
            "attention": engine.attention_name, "preemptions": stats.get("preemptions"),
            "kv_cache_mb": kv_bytes / 2**20,
            **peak_memory(device)}


# ---- transformers -----------------------------------------------------------------------------
def run_transformers(ckpt: Path, prompts: list[list[int]], outs: list[int], device: str,
                     dtype: str) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch_dtype).to(device).eval()
    pad = 0
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding, as decoder-only generation needs
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    longest = max(outs)
    stamps: list[float] = []

    class Clock(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if device == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            return scores

    def generate(n: int, rows: slice) -> None:
        model.generate(ids[rows], attention_mask=mask[rows], max_new_tokens=n,
                       min_new_tokens=n, do_sample=False, pad_token_id=pad,
                       logits_processor=LogitsProcessorList([Clock()]))

    with torch.inference_mode():
        generate(4, slice(0, 2))  # warm-up
        stamps.clear()
        t0 = time.perf_counter()
        generate(longest, slice(None))
        wall = time.perf_counter() - t0
    ttft = [(stamps[0] - t0) * 1000] * len(prompts)
    steps = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:], strict=False)]
    # Row i's inter-token gaps are the first outs[i]-1 steps: every row waits on the batch.
    itl = [d for o in outs for d in steps[: o - 1]]
    useful = sum(outs)
    return {"tokens": useful, "generated_incl_padding": longest * len(prompts), "wall_s": wall,
            "tokens_per_s": useful / wall, **latency_summary(ttft, itl), **peak_memory(device)}


# ---- roofline (CUDA) --------------------------------------------------------------------------
def measured_bandwidth_gbs() -> float:
    """Device memory bandwidth from a large on-device copy (reads + writes both count)."""
    x = torch.empty(2**28, dtype=torch.float32, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 4 * 10 / (time.perf_counter() - t0) / 1e9


def run_roofline(ckpt: Path, dtype: str, steps: int = 256) -> dict[str, Any]:
    from backends.engine.engine import Engine, EngineConfig
    from backends.engine.sampler import SamplingParams

    engine = Engine.from_checkpoint(ckpt, EngineConfig(device="cuda", dtype=dtype))
    weight_bytes = sum(p.numel() * p.element_size()
                       for p in engine.runner.model.parameters())  # type: ignore[attr-defined]
    bw = measured_bandwidth_gbs()

    async def one() -> float:
        stamps: list[float] = []
        async for _ev in engine.generate(list(range(100, 132)), SamplingParams(
                temperature=0.0, max_tokens=steps, ignore_eos=True)):
            stamps.append(time.perf_counter())
        return (len(stamps) - 2) / (stamps[-1] - stamps[1])  # decode only

    asyncio.run(one())
    tps = asyncio.run(one())
    engine.shutdown()
    roof = bw * 1e9 / weight_bytes
    return {"batch1_tokens_per_s": tps, "weight_bytes": weight_bytes,
            "measured_bandwidth_gbs": bw, "roofline_tokens_per_s": roof,
            "fraction_of_roofline": tps / roof}


def count_params(ckpt: Path) -> int:
    """From the tensors' shapes, without loading them (sharded checkpoints too)."""
    from safetensors import safe_open

    from backends.engine.loader import safetensor_files

    total = 0
    for file in safetensor_files(ckpt):
        with safe_open(str(file), framework="pt") as st:
            # safe_open is not a mapping: it has keys() but cannot be iterated.
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    return total


# ---- driver -----------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    vocab = json.loads((args.checkpoint / "config.json").read_text())["vocab_size"]
    prompts, outs = workload(args.requests, args.seed, args.max_input, args.max_output, vocab)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.child == "engine":
        res = run_engine(args.checkpoint, prompts, outs, args.device, args.dtype, args.kv_gb,
                         args.max_num_seqs, args.token_budget)
    elif args.child == "transformers":
        res = run_transformers(args.checkpoint, prompts, outs, args.device, args.dtype)
    else:
        res = run_roofline(args.checkpoint, args.dtype)
    print("RESULT " + json.dumps(res))


def spawn(which: str, argv: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *argv, "--child", which],
                         capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"{which} run failed:\n{out.stdout}\n{out.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="HF folder (default: a random ~100M llama)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-input", type=int, default=512)
    ap.add_argument("--max-output", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None,
                    help="both sides; default: bfloat16 on CUDA, the engine's CPU choice on CPU")
    ap.add_argument("--kv-gb", type=float, default=0.0,
                    help="engine KV cache on the CPU (default: enough for the whole load)")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--token-budget", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=["engine", "transformers", "roofline"],
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dtype is None:
        from backends.engine.loader import preferred_dtype

        # The engine's own choice (bf16 on CPUs with native bf16), given to transformers too.
        args.dtype = "bfloat16" if args.device == "cuda" else str(
            preferred_dtype("cpu", torch.float32)).removeprefix("torch.")
    if args.child:
        child(args)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint is None:
            from backends.engine.checkpoint import write_tiny_checkpoint

            args.checkpoint = Path(tmp) / "bench-llama-100m"
            # ~100M parameters, Llama-shaped (checkpoint.SIZES["100m"]).
            write_tiny_checkpoint(args.checkpoint, family="llama", size="100m")
        argv = ["--checkpoint", str(args.checkpoint), "--device", args.device,
                "--dtype", args.dtype, "--requests", str(args.requests),
                "--max-input", str(args.max_input), "--max-output", str(args.max_output),
                "--seed", str(args.seed), "--kv-gb", str(args.kv_gb),
                "--max-num-seqs", str(args.max_num_seqs),
                "--token-budget", str(args.token_budget), "--threads", str(args.threads)]
        n_params = count_params(args.checkpoint)
        print(f"checkpoint {args.checkpoint.name}: {n_params / 1e6:.1f}M parameters, "
              f"{args.requests} requests, device {args.device}, dtype {args.dtype}")
        eng = spawn("engine", argv)
        ref = spawn("transformers", argv)
        roof = spawn("roofline", argv) if args.device == "cuda" else None
    ratio = eng["tokens_per_s"] / ref["tokens_per_s"]
    rows = [("output tokens/s", "tokens_per_s", "{:.1f}"),
            ("TTFT p50 ms", ("ttft_ms", "p50"), "{:.0f}"),
            ("TTFT p99 ms", ("ttft_ms", "p99"), "{:.0f}"),
            ("ITL p50 ms", ("itl_ms", "p50"), "{:.1f}"),
            ("ITL p99 ms", ("itl_ms", "p99"), "{:.1f}"),
            ("peak RSS MB", "peak_rss_mb", "{:.0f}")]
    print(f"{'':18}{'engine':>12}{'transformers':>14}")
    for label, key, f in rows:
        def get(d: dict[str, Any], key: Any = key) -> Any:
            return d[key[0]][key[1]] if isinstance(key, tuple) else d.get(key)
        print(f"{label:18}{f.format(get(eng)):>12}{f.format(get(ref)):>14}")
    print(f"throughput ratio (engine / transformers): {ratio:.2f}x")
    print(f"KV waste (allocated but unused slots / allocated): mean "
          f"{eng['kv_waste_mean']:.2%}, max {eng['kv_waste_max']:.2%}")
    if roof:
        print(f"batch 1: {roof['batch1_tokens_per_s']:.0f} tok/s = "
              f"{roof['fraction_of_roofline']:.0%} of the roofline "
              f"({roof['roofline_tokens_per_s']:.0f} tok/s at "
              f"{roof['measured_bandwidth_gbs']:.0f} GB/s)")
    result = {"checkpoint_params": n_params, "requests": args.requests, "device": args.device,
              "dtype": args.dtype, "engine_tokens_per_s": eng["tokens_per_s"],
              "transformers_tokens_per_s": ref["tokens_per_s"], "throughput_ratio": ratio,
              "kv_waste": eng["kv_waste_mean"], "kv_waste_max": eng["kv_waste_max"],
              "engine": eng, "transformers": ref, "roofline": roof}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
