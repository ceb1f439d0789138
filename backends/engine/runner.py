"""One engine step on the model: flat tokens of many sequences in, sampling rows' logits out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from backends.engine.attention import AttentionMetadata, PagedAttention
from backends.engine.kv_cache import KVCache
from backends.engine.lora.layers import AdapterTensors, LoraContext, row_groups
from backends.engine.model import DecoderModel


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
            rows = torch.tensor(last, dtype=torch.long, device=dev)
            return self.model.logits(hidden.index_select(0, rows))

    def _lora_groups(self, items: Sequence[RunItem]) -> LoraContext | None:
        if self.lora is None or all(it.adapter is None for it in items):
            return None
        ctx, lookup = self.lora
        ctx.groups = row_groups([it.adapter for it in items],
                                [len(it.token_ids) for it in items], lookup, self.device)
        return ctx
