"""Triton paged-attention decode kernel (imported only when triton is installed).

Grid: (decode sequences, kv heads). Each program loads the query heads that share one kv head,
then streams the sequence's blocks through the block table with an online softmax. Block size,
head dim and the query group are padded to powers of two for `tl.arange`; padded lanes are
masked. The first block always holds a real key, so the running max is finite before any
fully masked block is seen. Element-wise products (not tl.dot) keep it valid for any group
size, block size or head dim (tl.dot needs every dimension >= 16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from backends.engine.attention import AttentionGroup, LayerKV


@triton.jit
def _paged_decode_kernel(
    q_ptr,
    kv_ptr,
    out_ptr,
    tok_ptr,
    tables_ptr,
    lens_ptr,
    scale,
    stride_qt,
    stride_qh,
    stride_kv,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_tb,
    stride_ob,
    stride_oh,
    max_blocks,
    GROUP: tl.constexpr,
    GROUP_P2: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_P2: tl.constexpr,
    DIM: tl.constexpr,
    DIM_P2: tl.constexpr,
):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    tok = tl.load(tok_ptr + seq)
    ctx = tl.load(lens_ptr + seq)
    g = tl.arange(0, GROUP_P2)
    d = tl.arange(0, DIM_P2)
    s = tl.arange(0, BLOCK_P2)
    g_ok = g < GROUP
    d_ok = d < DIM
    heads = kvh * GROUP + g
    q = tl.load(
        q_ptr + tok * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=g_ok[:, None] & d_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    m = tl.full((GROUP_P2,), float("-inf"), tl.float32)
    denom = tl.zeros((GROUP_P2,), tl.float32)
    acc = tl.zeros((GROUP_P2, DIM_P2), tl.float32)
    # Bounded by the group's widest table (not this sequence's length) so the loop bound is a
    # plain argument; blocks past the context are fully masked and cost no memory traffic.
    for i in range(0, max_blocks):
        blk = tl.load(tables_ptr + seq * stride_tb + i).to(tl.int64)
        pos_ok = (i * BLOCK + s < ctx) & (s < BLOCK)
        offs = blk * stride_kb + s[:, None] * stride_ks + kvh * stride_kh + d[None, :]
        kv_mask = pos_ok[:, None] & d_ok[None, :]
        k = tl.load(kv_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(kv_ptr + stride_kv + offs, mask=kv_mask, other=0.0).to(tl.float32)
        scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # [G, S]
        scores = tl.where(pos_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m - m_new)
        denom = denom * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m = m_new
    out = acc / denom[:, None]
    tl.store(
        out_ptr + seq * stride_ob + heads[:, None] * stride_oh + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=g_ok[:, None] & d_ok[None, :],
    )


def paged_decode(q: torch.Tensor, layer_kv: LayerKV, group: AttentionGroup) -> torch.Tensor:
    """Decode rows `[B, heads, head_dim]` for a group whose sequences each have one query."""
    b = group.q_index.shape[0]
    heads, dim = q.shape[1], q.shape[2]
    kv_heads, block = layer_kv.shape[1], layer_kv.shape[3]
    per_kv = heads // kv_heads
    out = torch.empty((b, heads, dim), dtype=q.dtype, device=q.device)
    tables = group.block_tables
    _paged_decode_kernel[(b, kv_heads)](
        q,
        layer_kv,
        out,
        group.q_index.view(-1),
        tables,
        group.context_lens,
        dim**-0.5,
        q.stride(0),
        q.stride(1),
        layer_kv.stride(0),  # k -> v
        layer_kv.stride(2),  # block
        layer_kv.stride(3),  # slot in block
        layer_kv.stride(1),  # kv head
        tables.stride(0),
        out.stride(0),
        out.stride(1),
        tables.shape[1],
        GROUP=per_kv,
        GROUP_P2=triton.next_power_of_2(per_kv),
        BLOCK=block,
        BLOCK_P2=triton.next_power_of_2(block),
        DIM=dim,
        DIM_P2=triton.next_power_of_2(dim),
    )
    return out
