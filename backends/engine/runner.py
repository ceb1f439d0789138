"""One engine step on the model: flat tokens of many sequences in, sampling rows' logits out."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from backends.engine.attention import AttentionMetadata, PagedAttention
from backends.engine.kv_cache import KVCache
from backends.engine.lora.layers import (
    AdapterTensors,
    LoraContext,
    StackedDelta,
    row_groups,
    stack_deltas,
)
from backends.engine.model import DecoderModel

# Above this many rows, gathering per-row adapter weights costs more memory traffic than a
# matmul per adapter group.
GATHER_MAX_ROWS = 64


@dataclass(frozen=True, slots=True)
class RunItem:
    """`token_ids` sit at positions `[start_pos, start_pos + len)`; logits are returned for the
    last `num_logits` of them (0 for a prefill chunk that does not reach the end of the prompt,
    1 for a decode, 1 + k for a verify item of k draft tokens). `short` puts a multi-token item
    in the short-query attention group (verify items) rather than the prefill group."""

    token_ids: Sequence[int]
    start_pos: int
    block_table: Sequence[int]
    num_logits: int
    short: bool = False
    adapter: int | None = None  # a resident LoRA version's key (AdapterRegistry), None: base


class ModelRunner:
    def __init__(
        self, model: DecoderModel, kv: KVCache, attention: PagedAttention | None = None
    ) -> None:
        if attention is not None:
            model.attention = attention
        self.model = model
        self.kv = kv
        self.device = kv.device
        # Set by the engine once LoRA is enabled on the model: the context the wrapped layers
        # read, and how an adapter key becomes its resident tensors.
        self.lora: tuple[LoraContext, Callable[[int], AdapterTensors]] | None = None
        self._stacks: OrderedDict[tuple[int, ...], dict[tuple[int, str], StackedDelta]] = (
            OrderedDict())

    @property
    def attention_name(self) -> str:
        return self.model.attention.name

    def run(
        self, items: Sequence[RunItem], copies: Sequence[tuple[int, int]] = (),
        num_layers: int | None = None,
    ) -> torch.Tensor:
        """Logits `[sum of num_logits, vocab]` float32, in item order. `num_layers` runs only
        the first layers before the head (self-speculation's draft)."""
        with torch.inference_mode():
            # Copy-on-write copies come first: this step may write into the new blocks.
            self.kv.copy_blocks(copies)
            if not items:
                return torch.empty((0, self.model.config.vocab_size), device=self.device)
            ids: list[int] = []
            positions: list[int] = []
            last: list[int] = []
            for item in items:
                n = len(item.token_ids)
                ids.extend(item.token_ids)
                positions.extend(range(item.start_pos, item.start_pos + n))
                if item.num_logits:
                    last.extend(range(len(ids) - item.num_logits, len(ids)))
            meta = AttentionMetadata.build(
                [(it.start_pos, len(it.token_ids), it.block_table) for it in items],
                self.kv.block_size,
                self.device,
                short=[it.short for it in items],
            )
            dev = self.device
            ctx = self._lora_groups(items)
            try:
                hidden = self.model(
                    torch.tensor(ids, dtype=torch.long, device=dev),
                    torch.tensor(positions, dtype=torch.long, device=dev),
                    meta,
                    self.kv,
                    num_layers=num_layers,
                )
            finally:
                if ctx is not None:
                    ctx.groups = []
                    ctx.gathered = None
            rows = torch.tensor(last, dtype=torch.long, device=dev)
            return self.model.logits(hidden.index_select(0, rows))

    def _lora_groups(self, items: Sequence[RunItem]) -> LoraContext | None:
        if self.lora is None or all(it.adapter is None for it in items):
            return None
        ctx, lookup = self.lora
        lengths = [len(it.token_ids) for it in items]
        distinct = sorted({it.adapter for it in items if it.adapter is not None})
        if len(distinct) > 1 and sum(lengths) <= GATHER_MAX_ROWS:
            slot = {key: i for i, key in enumerate(distinct, start=1)}
            rows = [slot.get(it.adapter, 0) for it, n in zip(items, lengths, strict=True)
                    for _ in range(n)]
            ctx.gathered = (self._stacked(tuple(distinct), lookup),
                            torch.tensor(rows, dtype=torch.long, device=self.device))
        else:
            ctx.groups = row_groups([it.adapter for it in items], lengths, lookup, self.device)
        return ctx

    def _stacked(self, keys: tuple[int, ...], lookup: Callable[[int], AdapterTensors]
                 ) -> dict[tuple[int, str], StackedDelta]:
        """Stacks for this set of adapter versions; keys are never reused, so a cached stack
        never goes stale (a few kept: batches keep their adapter mix for many steps)."""
        stack = self._stacks.get(keys)
        if stack is None:
            stack = self._stacks[keys] = stack_deltas([lookup(k) for k in keys])
            while len(self._stacks) > 4:
                self._stacks.popitem(last=False)
        self._stacks.move_to_end(keys)
        return stack
