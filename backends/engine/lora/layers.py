"""Multi-LoRA on the decoder's fused linear layers: one batch, many adapters (and the base).

The model fuses q/k/v and gate/up into one matmul each, so an adapter's per-target A matrices
are stacked (`[n*r, in]`) and its B matrices laid block-diagonally (`[out, n*r]`): one adapter's
delta on a fused layer is two matmuls however many of its targets sit in it. A step's tokens are
grouped by adapter (one batched matmul per adapter group: what pays for long prefill rows)
and each group's delta is added to its rows of the base output; a step of few rows under many
adapters instead gathers each row's adapter from a stack (Punica's BGMV, two batched matmuls
however many adapters), since per-group calls are what cost on the CPU. Tokens of
the base model pay one Python check per layer and nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backends.engine.lora.weights import LoraWeights

__all__ = ["AdapterTensors", "FusedDelta", "LoraContext", "LoraLinear", "StackedDelta",
           "enable_lora", "module_slices", "row_groups", "stack_deltas", "target_shapes"]


@dataclass(frozen=True, slots=True)
class FusedDelta:
    a: torch.Tensor  # [n*r, in]
    b: torch.Tensor  # [out, n*r], block-diagonal over the fused layer's output slices, scaled

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.a.t()) @ self.b.t()


@dataclass(frozen=True, slots=True)
class StackedDelta:
    """Several adapters' deltas for one fused layer, stacked for a per-token gather (Punica's
    BGMV as two batched matmuls): slot 0 is zeros, for the base's rows. Ranks are padded to the
    largest, which adds zeros, not error."""

    a: torch.Tensor  # [S + 1, R, in]
    b: torch.Tensor  # [S + 1, out, R]

    def apply(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        u = torch.bmm(x.unsqueeze(1), self.a.index_select(0, slots).transpose(1, 2))
        return torch.bmm(u, self.b.index_select(0, slots).transpose(1, 2)).squeeze(1)


def stack_deltas(adapters: Sequence[AdapterTensors]) -> dict[tuple[int, str], StackedDelta]:
    keys = {k for ad in adapters for k in ad.deltas}
    out = {}
    for key in keys:
        present = [ad.deltas.get(key) for ad in adapters]
        ref = next(d for d in present if d is not None)
        rank = max(d.a.shape[0] for d in present if d is not None)
        a = ref.a.new_zeros((len(adapters) + 1, rank, ref.a.shape[1]))
        b = ref.b.new_zeros((len(adapters) + 1, ref.b.shape[0], rank))
        for i, d in enumerate(present, start=1):
            if d is not None:
                a[i, :d.a.shape[0]] = d.a
                b[i, :, :d.b.shape[1]] = d.b
        out[key] = StackedDelta(a, b)
    return out


@dataclass
class AdapterTensors:
    """An adapter's deltas by (layer, fused module), on the model's device and dtype."""

    deltas: dict[tuple[int, str], FusedDelta]

    @classmethod
    def build(cls, weights: LoraWeights, slices: dict[str, list[tuple[str, int, int]]],
              num_layers: int, device: torch.device, dtype: torch.dtype) -> AdapterTensors:
        """Fuse per-target tensors; differentiable, so a trainer builds this from its params
        each forward and gradients reach the per-target A and B."""
        deltas: dict[tuple[int, str], FusedDelta] = {}
        for layer in range(num_layers):
            for module, parts in slices.items():
                out = parts[-1][2]
                a_list, b_cols = [], []
                for target, start, end in parts:
                    pair = weights.tensors.get((layer, target))
                    if pair is None:
                        continue
                    a, b = pair
                    if b.shape[0] != end - start:
                        raise ValueError(f"adapter layer {layer} {target}: B has {b.shape[0]} "
                                         f"rows, the model's layer has {end - start}")
                    a_list.append(a)
                    b_cols.append(F.pad(b, (0, 0, start, out - end)))
                if a_list:
                    deltas[(layer, module)] = FusedDelta(
                        torch.cat(a_list).to(device, dtype),
                        (torch.cat(b_cols, 1) * weights.scale).to(device, dtype))
        return cls(deltas)


class LoraContext:
    """What the wrapped layers read during one forward pass: per adapter, the rows of the flat
    batch it applies to (None: every row). Set by the runner or the trainer, cleared after;
    per thread, since a trainer may run its slice on a thread beside the inference forward (the
    engine's fallback on the CPU when shared memory cannot hold the weights for its process)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def groups(self) -> list[tuple[AdapterTensors, torch.Tensor | None]]:
        return getattr(self._local, "groups", _NONE)

    @groups.setter
    def groups(self, value: list[tuple[AdapterTensors, torch.Tensor | None]]) -> None:
        self._local.groups = value

    @property
    def gathered(self) -> tuple[dict[tuple[int, str], StackedDelta], torch.Tensor] | None:
        """Instead of groups: stacked deltas and each row's slot (many adapters, few rows)."""
        return getattr(self._local, "gathered", None)

    @gathered.setter
    def gathered(self, value: tuple[dict[tuple[int, str], StackedDelta], torch.Tensor] | None
                 ) -> None:
        self._local.gathered = value


_NONE: list = []


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, module: str, layer: int, ctx: LoraContext) -> None:
        super().__init__()
        self.base = base
        self.module = module
        self.layer = layer
        self.ctx = ctx

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        gathered = self.ctx.gathered
        if gathered is not None:
            stacked = gathered[0].get((self.layer, self.module))
            return y if stacked is None else y.add_(stacked.apply(x, gathered[1]))
        if not self.ctx.groups:
            return y
        key = (self.layer, self.module)
        inplace = not torch.is_grad_enabled()
        for adapter, rows in self.ctx.groups:
            d = adapter.deltas.get(key)
            if d is None:
                continue
            if rows is None:
                y = y.add_(d.apply(x)) if inplace else y + d.apply(x)
            elif inplace:
                y.index_add_(0, rows, d.apply(x.index_select(0, rows)))
            else:
                y = y.index_add(0, rows, d.apply(x.index_select(0, rows)))
        return y


def module_slices(q_size: int, kv_size: int, hidden: int, inter: int
                  ) -> dict[str, list[tuple[str, int, int]]]:
    """Each fused module's output slices, by target (the loader's concatenation order)."""
    return {
        "qkv": [("q", 0, q_size), ("k", q_size, q_size + kv_size),
                ("v", q_size + kv_size, q_size + 2 * kv_size)],
        "o": [("o", 0, hidden)],
        "gate_up": [("gate", 0, inter), ("up", inter, 2 * inter)],
        "down": [("down", 0, hidden)],
    }


def target_shapes(cfg: object) -> dict[str, tuple[int, int]]:
    """Each LoRA target's (in, out) features for a decoder config: A is [r, in], B [out, r]."""
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    h, inter = cfg.hidden_size, cfg.intermediate_size
    return {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "gate": (h, inter),
            "up": (h, inter), "down": (inter, h)}


def enable_lora(model: nn.Module, ctx: LoraContext) -> dict[str, list[tuple[str, int, int]]]:
    """Wrap the decoder's linear layers (idempotent); returns the slices for `AdapterTensors`."""
    cfg = model.config
    for i, layer in enumerate(model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        for owner, attr, name in ((attn, "qkv_proj", "qkv"), (attn, "o_proj", "o"),
                                  (mlp, "gate_up_proj", "gate_up"), (mlp, "down_proj", "down")):
            mod = getattr(owner, attr)
            if not isinstance(mod, LoraLinear):
                setattr(owner, attr, LoraLinear(mod, name, i, ctx))
    return module_slices(cfg.num_attention_heads * cfg.head_dim,
                         cfg.num_key_value_heads * cfg.head_dim, cfg.hidden_size,
                         cfg.intermediate_size)


def row_groups(adapters: Sequence[int | None], lengths: Sequence[int],
               lookup: Callable[[int], AdapterTensors], device: torch.device
               ) -> list[tuple[AdapterTensors, torch.Tensor | None]]:
    """Group a flat batch's rows by adapter key (items in order, `lengths` tokens each)."""
    rows: dict[int, list[int]] = {}
    pos = 0
    for key, n in zip(adapters, lengths, strict=True):
        if key is not None:
            rows.setdefault(key, []).extend(range(pos, pos + n))
        pos += n
    total = pos
    return [(lookup(key), None if len(r) == total else
             torch.tensor(r, dtype=torch.long, device=device)) for key, r in rows.items()]
