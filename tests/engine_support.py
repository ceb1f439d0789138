"""Shared helpers for the engine tests: tiny checkpoints, the transformers reference, a pager.

Checkpoints are written once per test session into a temporary folder (removed at exit); both
the engine and `transformers` load the same folder, so every comparison uses identical weights
and tokenizer files. Nothing is downloaded.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

from backends.engine.attention import PagedAttention
from backends.engine.checkpoint import Family, write_tiny_checkpoint
from backends.engine.kv_cache import KVCache
from backends.engine.loader import load_model
from backends.engine.runner import ModelRunner, RunItem
from telemetry.meters import EnergyMeter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FAMILIES: tuple[Family, ...] = ("llama", "qwen2")
ATOL = 1e-4  # float32 logits vs transformers; observed differences are ~1e-5 or below


@cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="gg-engine-ckpt-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@cache
def checkpoint(family: Family, size: str = "test", seed: int = 0) -> Path:
    """Path of a random `family` checkpoint (written on first use, shared by the session)."""
    return write_tiny_checkpoint(_root() / f"{family}-{size}-{seed}", family, size=size, seed=seed)


@cache
def reference_model(path: Path) -> Any:
    """transformers' own implementation of the same folder, float32, eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def reference_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def reference_logits(path: Path, ids: Sequence[int]) -> torch.Tensor:
    """`[len(ids), V]` logits of the reference model over one unpadded sequence."""
    with torch.inference_mode():
        return reference_model(path)(torch.tensor([list(ids)])).logits[0].float()


def reference_greedy(path: Path, ids: Sequence[int], max_new_tokens: int) -> list[int]:
    model = reference_model(path)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([list(ids)]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.config.eos_token_id[0],
        )
    return out[0, len(ids) :].tolist()


def make_runner(
    path: Path,
    *,
    num_blocks: int = 256,
    block_size: int = 4,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    attention: PagedAttention | None = None,
) -> ModelRunner:
    model = load_model(path, dtype=dtype, device=device, attention=attention)
    cfg = model.config
    kv = KVCache(
        cfg.num_hidden_layers,
        num_blocks,
        block_size,
        cfg.num_key_value_heads,
        cfg.head_dim,
        dtype,
        device,
    )
    return ModelRunner(model, kv)


class Pager:
    """Hands out blocks in a shuffled order so block tables are never contiguous."""

    def __init__(self, num_blocks: int, block_size: int, seed: int = 0) -> None:
        self.block_size = block_size
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)
        self.tables: dict[int, list[int]] = {}

    def table(self, seq: int, length: int) -> list[int]:
        """The block table of `seq`, grown to hold `length` tokens."""
        table = self.tables.setdefault(seq, [])
        while len(table) * self.block_size < length:
            table.append(self.free.pop())
        return table


def random_prompt(length: int, vocab: int, seed: int) -> list[int]:
    gen = random.Random(seed)
    return [gen.randrange(vocab) for _ in range(length)]


def greedy_generate(
    runner: ModelRunner,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
    *,
    pager: Pager | None = None,
) -> list[list[int]]:
    """Batched greedy decoding through the runner: one flat prefill step, then one step per
    token with every unfinished sequence decoding together."""
    pager = pager or Pager(runner.kv.num_blocks, runner.kv.block_size)
    outputs: list[list[int]] = [[] for _ in prompts]
    pending = [(i, list(p), 0) for i, p in enumerate(prompts)]  # (seq, new tokens, start)
    while pending:
        items = [
            RunItem(toks, start, pager.table(i, start + len(toks)), 1)
            for i, toks, start in pending
        ]
        next_ids = runner.run(items).argmax(dim=-1).tolist()
        still: list[tuple[int, list[int], int]] = []
        for (i, toks, start), tok in zip(pending, next_ids, strict=True):
            outputs[i].append(tok)
            if tok not in eos_token_ids and len(outputs[i]) < max_new_tokens:
                still.append((i, [tok], start + len(toks)))
        pending = still
    return outputs


class StepMeter(EnergyMeter):
    """Every read advances `per_read` joules, so each engine step (read before, read after)
    measures exactly that much."""

    source = "measured:test"

    def __init__(self, per_read: float = 0.25) -> None:
        super().__init__()
        self.per_read = per_read
        self.joules = 0.0

    @property
    def update_period_s(self) -> float:
        return 0.0

    def _read_joules(self) -> float:
        self.joules += self.per_read
        return self.joules
