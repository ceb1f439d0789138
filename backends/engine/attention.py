"""Paged attention over the block KV cache, plus the per-step metadata it reads.

Every step's tokens arrive flat (`[T, heads, head_dim]`). Sequences are split in three groups:
single-token decodes, short verify items (speculative decoding's last token plus k drafts, at
most a few query rows each) and multi-token prefill chunks. Each group runs as ONE padded call
per layer with a mask, so a step with 64 decoding sequences costs one kernel call per layer
rather than 64: two batched matmuls for decodes and verify items (few query rows against a long
context), scaled_dot_product_attention for prefill. A verify item kept out of the prefill group
is not padded to the longest prefill chunk. The gather indices and masks are built once per step
(here) and shared by all layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# One layer of the cache: [2 (k, v), n_kv_heads, num_blocks, block_size, head_dim].
LayerKV = torch.Tensor


@dataclass(frozen=True)
class AttentionGroup:
    """Sequences attended together in one padded call."""

    q_index: torch.Tensor  # [B, Q] flat token index per (sequence, query row); pads repeat a row
    valid_rows: torch.Tensor | None  # [N] indices of real rows in the [B*Q] padded output
    tok_index: torch.Tensor  # [N] flat token index of each real row (same order as valid rows)
    key_blocks: torch.Tensor  # [B * nb] block table rows, flattened (pads -> block 0)
    mask: torch.Tensor  # [B, 1, Q, C] bool, True = may attend; C = nb * block_size
    context_lens: torch.Tensor  # [B] tokens of context incl. this step's
    block_tables: torch.Tensor  # [B, max_blocks] int32 (pads 0), for fused kernels
    covers_all: bool  # the group is the whole step in flat order: no scatter needed
    short: bool  # few query rows per sequence: batched matmuls rather than SDPA
    # Per-step memo shared by all layers (folded masks, gather buffers): same shapes every layer.
    scratch: dict[object, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    num_tokens: int
    slot_mapping: torch.Tensor  # [T] cache slot each new token's k/v is written to
    decode: AttentionGroup | None
    prefill: AttentionGroup | None
    block_size: int
    verify: AttentionGroup | None = None

    @property
    def groups(self) -> tuple[tuple[str, AttentionGroup], ...]:
        named = (("decode", self.decode), ("verify", self.verify), ("prefill", self.prefill))
        return tuple((name, g) for name, g in named if g is not None)

    @classmethod
    def build(
        cls,
        seqs: Sequence[tuple[int, int, Sequence[int]]],
        block_size: int,
        device: torch.device | str = "cpu",
        short: Sequence[bool] | None = None,
    ) -> AttentionMetadata:
        """From `(start_pos, n_tokens, block_table)` per sequence, in flat-batch order;
        `short[i]` puts a multi-token sequence in the verify group."""
        if not seqs:
            raise ValueError("empty step")
        offsets, total = [], 0
        for start, n, table in seqs:
            if n < 1:
                raise ValueError("every sequence needs at least one token this step")
            if len(table) * block_size < start + n:
                raise ValueError("block table too short for the context")
            offsets.append(total)
            total += n
        slots = _slot_mapping(seqs, block_size)
        flags = list(short) if short is not None else [False] * len(seqs)
        dec = [i for i, (_, n, _) in enumerate(seqs) if n == 1]
        ver = [i for i, (_, n, _) in enumerate(seqs) if n > 1 and flags[i]]
        pre = [i for i, (_, n, _) in enumerate(seqs) if n > 1 and not flags[i]]
        dev = torch.device(device)
        return cls(
            num_tokens=total,
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            decode=_group(seqs, offsets, dec, block_size, dev, short=True) if dec else None,
            prefill=_group(seqs, offsets, pre, block_size, dev, short=False) if pre else None,
            block_size=block_size,
            verify=_group(seqs, offsets, ver, block_size, dev, short=True) if ver else None,
        )


def _slot_mapping(seqs: Sequence[tuple[int, int, Sequence[int]]], block_size: int) -> list[int]:
    slots: list[int] = []
    for start, n, table in seqs:
        for pos in range(start, start + n):
            slots.append(table[pos // block_size] * block_size + pos % block_size)
    return slots


def _group(
    seqs: Sequence[tuple[int, int, Sequence[int]]],
    offsets: list[int],
    members: list[int],
    block_size: int,
    dev: torch.device,
    *,
    short: bool,
) -> AttentionGroup:
    starts = torch.tensor([seqs[i][0] for i in members], dtype=torch.long)
    lens = torch.tensor([seqs[i][1] for i in members], dtype=torch.long)
    offs = torch.tensor([offsets[i] for i in members], dtype=torch.long)
    ctx = starts + lens
    q_max, c_max = int(lens.max()), int(ctx.max())
    rows = torch.arange(q_max)
    # Pad rows reuse the sequence's last real token so every gathered query is finite.
    q_index = offs[:, None] + torch.minimum(rows[None, :], lens[:, None] - 1)
    valid = rows[None, :] < lens[:, None]
    n_blocks = -(-c_max // block_size)
    tables = torch.zeros((len(members), n_blocks), dtype=torch.long)
    for row, i in enumerate(members):
        table = list(seqs[i][2][:n_blocks])
        tables[row, : len(table)] = torch.tensor(table, dtype=torch.long)
    cols = torch.arange(n_blocks * block_size)
    # Query row r sits at position start + r; it may see every key at or before it.
    mask = cols[None, None, :] <= (starts[:, None] + rows[None, :])[:, :, None]
    padded = bool((~valid).any())
    tok_index = q_index[valid]
    return AttentionGroup(
        q_index=q_index.to(dev),
        valid_rows=valid.reshape(-1).nonzero().squeeze(1).to(dev) if padded else None,
        tok_index=tok_index.to(dev),
        key_blocks=tables.reshape(-1).to(dev),
        mask=mask[:, None].to(dev),
        context_lens=ctx.to(torch.int32).to(dev),
        block_tables=tables.to(torch.int32).to(dev),
        # Members are in flat order, so an unpadded group of every sequence is the identity.
        covers_all=not padded and len(members) == len(seqs),
        short=short,
    )


class PagedAttention:
    """Writes new k/v by slot and attends each query over its sequence's cached context."""

    name = "base"

    def write(
        self, layer_kv: LayerKV, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
    ) -> None:
        slots = layer_kv.view(2, layer_kv.shape[1], -1, layer_kv.shape[4])
        slots[0].index_copy_(1, slot_mapping, k.transpose(0, 1).to(layer_kv.dtype))
        slots[1].index_copy_(1, slot_mapping, v.transpose(0, 1).to(layer_kv.dtype))

    def forward(self, q: torch.Tensor, layer_kv: LayerKV, meta: AttentionMetadata) -> torch.Tensor:
        """q `[T, heads, head_dim]` -> attention output `[T, heads, head_dim]`."""
        out: torch.Tensor | None = None
        for name, group in meta.groups:
            rows = getattr(self, name)(q, layer_kv, group)
            if group.covers_all:
                return rows
            if out is None:
                out = torch.empty_like(q)
            out.index_copy_(0, group.tok_index, rows)
        assert out is not None
        return out

    def decode(self, q: torch.Tensor, layer_kv: LayerKV, group: AttentionGroup) -> torch.Tensor:
        return torch_group_attention(q, layer_kv, group)

    def verify(self, q: torch.Tensor, layer_kv: LayerKV, group: AttentionGroup) -> torch.Tensor:
        return torch_group_attention(q, layer_kv, group)

    def prefill(self, q: torch.Tensor, layer_kv: LayerKV, group: AttentionGroup) -> torch.Tensor:
        return torch_group_attention(q, layer_kv, group)


class TorchPagedAttention(PagedAttention):
    """Gather by block table, then one masked SDPA call per group. Runs on CPU and CUDA."""

    name = "torch-sdpa"


def torch_group_attention(
    q: torch.Tensor, layer_kv: LayerKV, group: AttentionGroup
) -> torch.Tensor:
    """Real rows of the group's padded attention, `[N, heads, head_dim]` in tok_index order."""
    b, q_len = group.q_index.shape
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = layer_kv.shape[1]
    per_kv = heads // kv_heads
    # Whole blocks are gathered (16 slots per index, not 1) into a buffer reused by every layer:
    # fewer, larger copies and no fresh page faults per layer.
    buf = group.scratch.get(layer_kv.dtype)
    if buf is None:
        shape = (2, kv_heads, group.key_blocks.numel(), *layer_kv.shape[3:])
        buf = torch.empty(shape, dtype=layer_kv.dtype, device=layer_kv.device)
        group.scratch[layer_kv.dtype] = buf
    torch.index_select(layer_kv, 2, group.key_blocks, out=buf)
    ctx = buf.view(2, kv_heads, b, -1, head_dim)  # [2, KV, B, C, D]
    if ctx.dtype != q.dtype:
        ctx = ctx.to(q.dtype)
    qg = q[group.q_index].view(b, q_len, kv_heads, per_kv, head_dim)
    if group.short:
        rows = _bmm_attention(qg, ctx, group).reshape(b * q_len, heads, head_dim)
        return rows if group.valid_rows is None else rows.index_select(0, group.valid_rows)
    # GQA by folding each kv head's query heads into the query axis: [B, KV, per_kv * Q, D].
    # It never materialises repeated K/V, and beats enable_gqa=True on CPU (5x in bf16).
    qf = qg.permute(0, 2, 3, 1, 4).reshape(b, kv_heads, per_kv * q_len, head_dim)
    k, v = ctx[0].transpose(0, 1), ctx[1].transpose(0, 1)
    out = F.scaled_dot_product_attention(qf, k, v, attn_mask=_folded_mask(group, per_kv))
    rows = out.view(b, kv_heads, per_kv, q_len, head_dim).permute(0, 3, 1, 2, 4)
    rows = rows.reshape(b * q_len, heads, head_dim)
    return rows if group.valid_rows is None else rows.index_select(0, group.valid_rows)


def _bmm_attention(q: torch.Tensor, ctx: torch.Tensor, group: AttentionGroup) -> torch.Tensor:
    """q `[B, Q, KV, per_kv, D]`, ctx `[2, KV, B, C, D]` -> `[B, Q, heads, D]`, for few query
    rows per sequence (decodes: Q = 1; verify items: Q = 1 + k).

    Two batched matmuls over (kv head, sequence) beat CPU flash SDPA 3-4x for one query row per
    sequence (64 seqs x 176 keys, fp32 and bf16), and the gathered K/V are already in bmm layout.
    Softmax runs in float32 like the reference's eager path.
    """
    b, q_len, kv_heads, per_kv, head_dim = q.shape
    c = ctx.shape[3]
    bias = group.scratch.get("bias")
    if bias is None:
        bias = torch.zeros((1, b, 1, q_len, c), dtype=torch.float32, device=q.device)
        bias = bias.masked_fill_(~group.mask.view(1, b, 1, q_len, c), float("-inf"))
        group.scratch["bias"] = bias
    rows = per_kv * q_len
    qb = q.permute(2, 0, 3, 1, 4).reshape(kv_heads * b, rows, head_dim)
    k = ctx[0].view(kv_heads * b, c, head_dim)
    v = ctx[1].view(kv_heads * b, c, head_dim)
    scores = torch.bmm(qb, k.transpose(1, 2)).float().view(kv_heads, b, per_kv, q_len, c)
    probs = scores.mul_(head_dim**-0.5).add_(bias).softmax(dim=-1).to(v.dtype)
    out = torch.bmm(probs.view(kv_heads * b, rows, c), v)
    return out.view(kv_heads, b, per_kv, q_len, head_dim).permute(1, 3, 0, 2, 4).reshape(
        b, q_len, kv_heads * per_kv, head_dim)


def _folded_mask(group: AttentionGroup, per_kv: int) -> torch.Tensor:
    b, _, q_len, c = group.mask.shape
    if q_len == 1:
        return group.mask  # broadcasts over the folded query axis as is
    key = ("mask", per_kv)
    mask = group.scratch.get(key)
    if mask is None:
        mask = group.mask.expand(b, per_kv, q_len, c).reshape(b, 1, per_kv * q_len, c)
        group.scratch[key] = mask
    return mask
