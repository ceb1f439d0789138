"""CUDA decode paths for paged attention: a Triton kernel, else flash-attn, else none.

Only single-token decodes use these kernels (the step that repeats once per generated token);
prefill chunks keep the torch SDPA path, which dispatches to fused CUDA kernels by itself, and
speculative verify items (1 + k query rows) the torch short-query path. `select_attention` lives
here, beside the kernels it picks, so `attention.py` never imports back up from them.
Nothing is imported until `cuda_attention()` is called, so CPU-only installs never touch
triton or flash_attn.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from backends.engine.attention import (
    AttentionGroup,
    LayerKV,
    PagedAttention,
    TorchPagedAttention,
    torch_group_attention,
)


def select_attention(device: torch.device | str) -> PagedAttention:
    """Fastest available implementation for the device; its `name` says which was picked."""
    dev = torch.device(device)
    if dev.type == "cuda":
        picked = cuda_attention()
        if picked is not None:
            return picked
    return TorchPagedAttention()


def cuda_attention() -> PagedAttention | None:
    if importlib.util.find_spec("triton") is not None:
        return TritonPagedAttention()
    if importlib.util.find_spec("flash_attn") is not None:
        return FlashAttnPagedAttention()
    return None


class TritonPagedAttention(PagedAttention):
    """Decode: one program per (sequence, kv head) walks the block table with an online
    softmax, reading K/V straight from the cache (no gather copy)."""

    name = "triton-paged-decode"

    def decode(self, q: torch.Tensor, layer_kv: LayerKV, group: AttentionGroup) -> torch.Tensor:
        from backends.engine.triton_decode import paged_decode

        return paged_decode(q, layer_kv, group)


class FlashAttnPagedAttention(PagedAttention):
    """Decode via flash_attn_with_kvcache. Its paged mode needs blocks of a multiple of 256
    tokens, so smaller blocks quietly use the torch path."""

    name = "flash-attn-kvcache"

    def __init__(self) -> None:
        from flash_attn import flash_attn_with_kvcache

        self._fn: Any = flash_attn_with_kvcache

    def decode(self, q: torch.Tensor, layer_kv: LayerKV, group: AttentionGroup) -> torch.Tensor:
        if layer_kv.shape[3] % 256 or q.dtype not in (torch.float16, torch.bfloat16):
            return torch_group_attention(q, layer_kv, group)
        b = group.q_index.shape[0]
        out = self._fn(
            q[group.q_index.view(-1)].unsqueeze(1),  # [B, 1, H, D]
            layer_kv[0].permute(1, 2, 0, 3),  # flash wants [blocks, block_size, kv_heads, dim]
            layer_kv[1].permute(1, 2, 0, 3),
            cache_seqlens=group.context_lens,
            block_table=group.block_tables,
            causal=True,
        )
        return out.view(b, q.shape[1], q.shape[2])
