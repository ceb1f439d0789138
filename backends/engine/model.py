"""Llama / Qwen2 decoder in plain torch, run over a flat batch of tokens from many sequences.

q/k/v and gate/up projections are fused into one matmul each (the loader concatenates the HF
tensors) because per-layer kernel calls, not FLOPs, dominate small decode batches on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from backends.engine.attention import AttentionMetadata, PagedAttention, TorchPagedAttention
from backends.engine.config import ModelConfig, RopeScaling
from backends.engine.kv_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 like the reference so bf16 weights give the same statistics.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    # Explicitly on CPU: the loader builds the model under the meta device.
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv = 1.0 / (theta**exponents)
    if scaling is None:
        return inv
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the middle band blended.
    old = scaling.original_max_position_embeddings
    low_wavelen = old / scaling.low_freq_factor
    high_wavelen = old / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (old / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `[T, 1, head_dim]` for the step's positions, computed once and shared by layers."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size = self.heads * self.head_dim
        self.kv_size = self.kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, cfg.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, cfg.o_bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer_kv: torch.Tensor,
        meta: AttentionMetadata,
        attn: PagedAttention,
    ) -> torch.Tensor:
        t = x.shape[0]
        qk, v = self.qkv_proj(x).split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        # q and k heads rotate in one call: same positions, half the elementwise kernels.
        qk = apply_rope(qk.view(t, self.heads + self.kv_heads, self.head_dim), cos, sin)
        q, k = qk.split([self.heads, self.kv_heads], dim=1)
        attn.write(layer_kv, k, v.view(t, self.kv_heads, self.head_dim), meta.slot_mapping)
        out = attn.forward(q, layer_kv, meta)
        return self.o_proj(out.reshape(t, self.q_size))

    def forward_dense(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One sequence's chunk attending to `past` (its earlier chunks' rotated K and V) and
        itself, causally, without the paged cache: the training path, where autograd must see
        every K and V the loss depends on."""
        t = x.shape[0]
        qk, v = self.qkv_proj(x).split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        qk = apply_rope(qk.view(t, self.heads + self.kv_heads, self.head_dim), cos, sin)
        q, k = qk.split([self.heads, self.kv_heads], dim=1)
        v = v.view(t, self.kv_heads, self.head_dim)
        if past is not None:
            k, v = torch.cat((past[0], k)), torch.cat((past[1], v))
        n_past = k.shape[0] - t
        rep = self.heads // self.kv_heads
        kk = k.repeat_interleave(rep, dim=1).transpose(0, 1)
        vv = v.repeat_interleave(rep, dim=1).transpose(0, 1)
        allowed = (torch.arange(k.shape[0], device=x.device)[None, :]
                   <= torch.arange(n_past, n_past + t, device=x.device)[:, None])
        out = F.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, attn_mask=allowed)
        return self.o_proj(out.transpose(0, 1).reshape(t, self.q_size)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * self.inter, bias=False)
        self.down_proj = nn.Linear(self.inter, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)


class DecoderModel(nn.Module):
    """`forward(input_ids[T], positions[T], meta, kv) -> hidden[T, H]` (before the final norm;
    `num_layers` stops after the first layers, as self-speculation's draft does);
    `logits(hidden[S, H]) -> [S, V]` float32 applies the final norm and the LM head to only the
    rows that sample, which saves the vocab matmul for every other prefill token."""

    def __init__(self, cfg: ModelConfig, attention: PagedAttention | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.attention = attention or TorchPagedAttention()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # A plain attribute, not a buffer: `.to(bfloat16)` must not round the frequencies.
        self.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv: KVCache,
        num_layers: int | None = None,
    ) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        if self.inv_freq.device != h.device:
            self.inv_freq = self.inv_freq.to(h.device)
        cos, sin = rope_cos_sin(positions, self.inv_freq, h.dtype)
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        for i, layer in enumerate(layers):
            a = layer.self_attn(
                layer.input_layernorm(h), cos, sin, kv.layer(i), meta, self.attention
            )
            h = h + a
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h

    def forward_dense(
        self, input_ids: torch.Tensor, start: int,
        past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Hidden states of one sequence's tokens at positions `[start, start + T)` given the
        earlier positions' per-layer K/V (`past`), and the K/V up to here. Writes no KV cache."""
        h = self.embed_tokens(input_ids)
        if self.inv_freq.device != h.device:
            self.inv_freq = self.inv_freq.to(h.device)
        positions = torch.arange(start, start + input_ids.shape[0], device=h.device)
        cos, sin = rope_cos_sin(positions, self.inv_freq, h.dtype)
        present = []
        for i, layer in enumerate(self.layers):
            a, kv = layer.self_attn.forward_dense(
                layer.input_layernorm(h), cos, sin, None if past is None else past[i])
            present.append(kv)
            h = h + a
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h, present

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden)).float()
