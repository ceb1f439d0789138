"""Block-paged KV cache: one tensor holds every layer's keys and values.

Layout `[layers, 2, n_kv_heads, num_blocks, block_size, head_dim]`: a block copy moves all
layers in one indexing op, a flat slot view per kv head is free, and a gather of B sequences'
blocks lands as `[n_kv_heads * B, context, head_dim]`, the exact operand of a batched matmul, so
decode attention needs no copy beyond the gather itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The cache is zero-filled on purpose: padded attention reads unused slots under a mask, and a
# masked NaN still poisons softmax @ V (0 * NaN), so garbage memory is not acceptable.


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.data = torch.zeros(
            (num_layers, 2, n_kv_heads, num_blocks, block_size, head_dim),
            dtype=dtype,
            device=self.device,
        )

    def layer(self, index: int) -> torch.Tensor:
        """One layer's `[2 (k, v), n_kv_heads, num_blocks, block_size, head_dim]` (a view)."""
        return self.data[index]

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy every layer's KV of block src into block dst (copy-on-write of shared blocks)."""
        if not pairs:
            return
        src = torch.tensor([s for s, _ in pairs], dtype=torch.long, device=self.device)
        dst = torch.tensor([d for _, d in pairs], dtype=torch.long, device=self.device)
        self.data[:, :, :, dst] = self.data[:, :, :, src]

    def bytes_per_block(self) -> int:
        return block_bytes(
            self.num_layers, self.block_size, self.n_kv_heads, self.head_dim, self.dtype
        )

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    @classmethod
    def from_budget(
        cls,
        budget_bytes: int,
        *,
        num_layers: int,
        block_size: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        max_blocks: int | None = None,
    ) -> KVCache:
        """As many blocks as fit in `budget_bytes` (at least one, at most `max_blocks`)."""
        per_block = block_bytes(num_layers, block_size, n_kv_heads, head_dim, dtype)
        blocks = budget_bytes // per_block
        if blocks < 1:
            raise ValueError(
                f"KV budget {budget_bytes} B is smaller than one block ({per_block} B)"
            )
        if max_blocks is not None:
            blocks = min(blocks, max_blocks)
        return cls(num_layers, int(blocks), block_size, n_kv_heads, head_dim, dtype, device)


def block_bytes(
    num_layers: int, block_size: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * n_kv_heads * head_dim * itemsize


def kv_budget_bytes(
    device: torch.device | str, *, gpu_fraction: float = 0.9, cpu_bytes: int = 1 << 30
) -> int:
    """KV memory to allocate: on CUDA a fraction of what is free once weights are loaded (call
    after loading the model), on CPU the configured byte count (free RAM is not a safe signal)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return int(cpu_bytes)
    if not 0.0 < gpu_fraction <= 1.0:
        raise ValueError("gpu_fraction must be in (0, 1]")
    free, _total = torch.cuda.mem_get_info(dev)
    return int(free * gpu_fraction)
