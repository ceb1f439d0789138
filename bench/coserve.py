"""Co-served LoRA fine-tuning in the bundled engine: inference alone, training alone, and both in
the same steps at a light and a heavy inference load; then multi-LoRA serving with 1, 4 and 16
adapters in the batch against the base alone. One engine, one run, cells interleaved.

Inference load is closed-loop: `concurrency` streams, each sending the next request as soon as
its last one ends (48-token prompts, 48 greedy tokens, no early stop). Inter-token latency is
the gap between a stream's consecutive tokens as its consumer sees them. Training throughput is
the trainer's tokens (forward and backward) per second of the cell. Co-served cells run the
same inference load with a job training in the leftover budget under the engine's default
policy (no SLO set: ITL may grow 10% over inference alone, measured as it runs).

On the CPU the training slices run in the engine's worker process; each cell also reports how
the worker spent the cell (seconds per second with a slice in flight, CPU seconds the process
spent on them, the rest resting to keep the co-serving share), the mean share, engine steps per
second and the machine's 1-minute load average before and after.

The model is the engine's built-in tiny checkpoint with random weights (throughput does not
depend on what the weights mean; the fine-tuning tests show learning). Examples are random
token sequences of 64-192 tokens, the loss on their second half.

    .venv/bin/python bench/coserve.py --out bench/results/coserve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.engine.checkpoint import write_tiny_checkpoint  # noqa: E402
from backends.engine.engine import Engine, EngineConfig  # noqa: E402
from backends.engine.finetune.job import (  # noqa: E402
    JobStatus,
    LoraHyperparameters,
    TrainExample,
    TrainingJobSpec,
    TrainingProgress,
)
from backends.engine.lora import LoraWeights, save_adapter, target_shapes  # noqa: E402
from backends.engine.sampler import SamplingParams  # noqa: E402

PROMPT_TOKENS = 48
OUTPUT_TOKENS = 48


@dataclass
class Cell:
    name: str
    concurrency: int
    training: bool
    adapters: int = 0
    tokens: int = 0
    seconds: float = 0.0
    train_tokens: int = 0
    itl: list[float] = field(default_factory=list)
    steps: int = 0
    busy_s: float = 0.0  # a training slice in flight
    cpu_s: float = 0.0  # CPU seconds the training process spent on the cell's slices
    shares: list[float] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before, after


class Quiet:
    """A listener that only notices the end (the bench cancels jobs itself)."""

    def __init__(self) -> None:
        self.ended = threading.Event()

    def on_event(self, job_id: str, level: str, message: str) -> None: ...

    def on_metrics(self, job_id: str, progress: TrainingProgress) -> None: ...

    def on_checkpoint(self, job_id: str, path: Path, progress: TrainingProgress) -> None: ...

    def on_finished(self, job_id: str, status: JobStatus, adapter_path: Path | None,
                    progress: TrainingProgress, error: str | None) -> None:
        if error:
            print(f"  job {job_id} failed: {error}", file=sys.stderr)
        self.ended.set()


def examples(vocab: int, n: int, seed: int) -> list[TrainExample]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        length = rnd.randrange(64, 193)
        ids = [rnd.randrange(vocab) for _ in range(length)]
        out.append(TrainExample(ids, [i >= length // 2 for i in range(length)]))
    return out


async def inference_load(engine: Engine, cell: Cell, seconds: float, vocab: int,
                         adapters: list[str | None]) -> None:
    rnd = random.Random(cell.concurrency)
    params = SamplingParams(max_tokens=OUTPUT_TOKENS, temperature=0.0)
    end = time.perf_counter() + seconds

    async def stream(i: int) -> None:
        while time.perf_counter() < end:
            prompt = [rnd.randrange(vocab) for _ in range(PROMPT_TOKENS)]
            adapter = adapters[i % len(adapters)]
            last = None
            async for _ev in engine.generate(prompt, params, adapter=adapter):
                now = time.perf_counter()
                if last is not None:
                    cell.itl.append(now - last)
                last = now
                cell.tokens += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(stream(i) for i in range(cell.concurrency)))
    cell.seconds = time.perf_counter() - t0


def run_cell(engine: Engine, cell: Cell, seconds: float, vocab: int, adapters: list[str | None],
             work: Path, job_seq: list[int]) -> None:
    handle = None
    listener = Quiet()
    load0 = os.getloadavg()[0]
    before = engine.stats()
    if cell.training:
        job_seq[0] += 1
        spec = TrainingJobSpec(
            f"bench-{job_seq[0]}", f"ft:bench:{job_seq[0]}", examples(vocab, 400, job_seq[0]),
            hyper=LoraHyperparameters(n_epochs=50, batch_size=8, rank=8, checkpoint_every=10**6),
            checkpoint_dir=work / f"job-{job_seq[0]}", resume=False)
        handle = engine.start_training(spec, listener)
    stop = threading.Event()
    sampler = threading.Thread(target=sample_share, args=(engine, cell, stop))
    sampler.start()
    t0 = time.perf_counter()
    if cell.concurrency:
        asyncio.run(inference_load(engine, cell, seconds, vocab, adapters))
    else:
        time.sleep(seconds)
        cell.seconds = time.perf_counter() - t0
    after = engine.stats()
    stop.set()
    sampler.join()
    cell.train_tokens = after["training_tokens"] - before["training_tokens"]
    cell.steps = after["steps"] - before["steps"]
    cell.busy_s = after["training_busy_s"] - before["training_busy_s"]
    cell.cpu_s = (after["training_cpu_s"] or 0.0) - (before["training_cpu_s"] or 0.0)
    cell.load = (load0, os.getloadavg()[0])
    if handle is not None:
        handle.cancel()
        listener.ended.wait(30)


def sample_share(engine: Engine, cell: Cell, stop: threading.Event) -> None:
    while not stop.wait(0.05):
        cell.shares.append(engine.coserve.share)


def figures(cells: list[Cell]) -> dict[str, Any]:
    secs = sum(c.seconds for c in cells)
    itl = np.array([x for c in cells for x in c.itl]) * 1000
    shares = [x for c in cells for x in c.shares]
    training = any(c.training for c in cells)
    worker = {
        "in_flight_s_per_s": round(sum(c.busy_s for c in cells) / secs, 3),
        "cpu_s_per_s": round(sum(c.cpu_s for c in cells) / secs, 3),
        "share_mean": round(float(np.mean(shares)), 3) if shares else None,
    } if training and secs else None
    return {
        "tokens_per_s": round(sum(c.tokens for c in cells) / secs, 1) if secs else None,
        "itl_p50_ms": round(float(np.percentile(itl, 50)), 2) if itl.size else None,
        "itl_p99_ms": round(float(np.percentile(itl, 99)), 2) if itl.size else None,
        "training_tokens_per_s": round(sum(c.train_tokens for c in cells) / secs, 1)
        if secs else None,
        "steps_per_s": round(sum(c.steps for c in cells) / secs, 1) if secs else None,
        "worker": worker,
        "load_1min": [round(min(c.load[0] for c in cells), 2),
                      round(max(c.load[1] for c in cells), 2)] if cells else None,
    }


def random_adapters(engine: Engine, n: int, work: Path) -> list[str]:
    cfg = engine.runner.model.config
    dims = target_shapes(cfg)
    names = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        w = LoraWeights(8, 16.0, {(layer, t): (torch.randn(8, a, generator=g) * 0.01,
                                               torch.randn(b, 8, generator=g) * 0.01)
                                  for layer in range(cfg.num_hidden_layers)
                                  for t, (a, b) in dims.items()})
        name = f"bench-adapter-{i}"
        engine.load_adapter(name, save_adapter(work / name, w))
        names.append(name)
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=8.0, help="per cell")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--light", type=int, default=2, help="concurrent streams, light load")
    ap.add_argument("--heavy", type=int, default=16, help="concurrent streams, heavy load")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="gg-coserve-"))
    ckpt = write_tiny_checkpoint(work / "model", family="llama", size="small")
    engine = Engine.from_checkpoint(ckpt, EngineConfig(device=args.device, max_num_seqs=64,
                                                       max_loras=20))
    engine.eos_token_ids = ()  # every request decodes its full length
    vocab = engine.vocab_size
    names = random_adapters(engine, 16, work)
    job_seq = [0]
    plan = [("inference_alone_light", args.light, False), ("light", args.light, True),
            ("inference_alone_heavy", args.heavy, False), ("heavy", args.heavy, True),
            ("training_alone", 0, True)]
    lora_plan = [0, 1, 4, 16]
    cells: dict[str, list[Cell]] = {}
    # Warm-up: the training process starts, and the co-serving planner measures inference
    # alone per batch size first.
    run_cell(engine, Cell("warm", 0, True), 2.0, vocab, [None], work, job_seq)
    run_cell(engine, Cell("warm", args.heavy, False), 2.0, vocab, [None], work, job_seq)
    run_cell(engine, Cell("warm", args.light, False), 2.0, vocab, [None], work, job_seq)
    for rep in range(args.repeats):
        order = plan[rep % len(plan):] + plan[:rep % len(plan)]
        for name, conc, training in order:
            cell = Cell(name, conc, training)
            run_cell(engine, cell, args.seconds, vocab, [None], work, job_seq)
            cells.setdefault(name, []).append(cell)
            print(f"rep {rep} {name:24s} {figures([cell])}", flush=True)
        for n in lora_plan[rep % 4:] + lora_plan[:rep % 4]:
            adapters: list[str | None] = [None] if n == 0 else list(names[:n])
            cell = Cell(f"lora-{n}", args.heavy, False, adapters=n)
            run_cell(engine, cell, args.seconds / 2, vocab, adapters, work, job_seq)
            cells.setdefault(cell.name, []).append(cell)
            print(f"rep {rep} {cell.name:24s} {figures([cell])}", flush=True)
    engine.shutdown()

    alone_l, alone_h = figures(cells["inference_alone_light"]), figures(
        cells["inference_alone_heavy"])
    train_alone = figures(cells["training_alone"])["training_tokens_per_s"]
    light, heavy = figures(cells["light"]), figures(cells["heavy"])
    inf_keys = ("tokens_per_s", "itl_p50_ms", "itl_p99_ms")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    result = {
        "device": args.device,
        "threads": args.threads,
        "model": "built-in tiny llama (random weights), float32",
        "seconds_per_cell": args.seconds,
        "repeats": args.repeats,
        "per_repeat": {name: [figures([c]) for c in cs] for name, cs in cells.items()},
        "training_alone_tokens_per_s": train_alone,
        "training_alone": figures(cells["training_alone"]),
        "inference_alone": {k: alone_h[k] for k in inf_keys},
        "inference_alone_light": {k: alone_l[k] for k in inf_keys},
        "inference_alone_heavy": {k: alone_h[k] for k in inf_keys},
        "light": {**light, "concurrency": args.light,
                  "training_vs_alone": ratio(light["training_tokens_per_s"], train_alone),
                  "itl_p99_vs_alone": ratio(light["itl_p99_ms"], alone_l["itl_p99_ms"])},
        "heavy": {**heavy, "concurrency": args.heavy,
                  "training_vs_alone": ratio(heavy["training_tokens_per_s"], train_alone),
                  "itl_p99_vs_alone": ratio(heavy["itl_p99_ms"], alone_h["itl_p99_ms"])},
        "multi_lora": [{"adapters": n, **{k: figures(cells[f"lora-{n}"])[k] for k in inf_keys},
                        "vs_base": ratio(figures(cells[f"lora-{n}"])["tokens_per_s"],
                                         figures(cells["lora-0"])["tokens_per_s"])}
                       for n in lora_plan],
    }
    print(json.dumps(result, indent=2))
    print(f"\nco-served training vs alone: light {result['light']['training_vs_alone']}, heavy "
          f"{result['heavy']['training_vs_alone']}; ITL p99 vs alone: light "
          f"{result['light']['itl_p99_vs_alone']}, heavy {result['heavy']['itl_p99_vs_alone']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
