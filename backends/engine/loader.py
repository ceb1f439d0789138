"""Load a Hugging Face llama/qwen2 folder (config.json + safetensors, sharded or not)."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch
from safetensors import safe_open

from backends.engine.attention import PagedAttention
from backends.engine.config import ModelConfig
from backends.engine.model import DecoderModel


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 avx512_bf16 / AMX, arm bf16)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set(info.replace(":", " ").split())
    native = {"avx512_bf16", "amx_bf16"} if platform.machine() in ("x86_64", "AMD64") else {"bf16"}
    return bool(flags & native)


def preferred_dtype(device: torch.device | str, checkpoint: torch.dtype) -> torch.dtype:
    """Forward dtype when none is configured: the checkpoint's on CUDA; on CPU bf16 where the
    hardware has bf16 dot products (measured 2.2x faster decode and 2x faster prefill than fp32
    for a 100M llama on an avx512_bf16 EPYC), else float32 (emulated bf16 is slower)."""
    if torch.device(device).type == "cuda":
        return checkpoint
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def safetensor_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / name for name in shards]
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"no model.safetensors or index in {path}")


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for file in safetensor_files(path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, f.get_tensor(name)


def hf_to_engine(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename HF tensors and fuse q/k/v and gate/up the way DecoderModel lays them out."""
    out: dict[str, torch.Tensor] = {}
    t = {k.removeprefix("model."): v for k, v in tensors.items()}
    out["embed_tokens.weight"] = t["embed_tokens.weight"]
    out["norm.weight"] = t["norm.weight"]
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = t["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."
        out[p + "input_layernorm.weight"] = t[p + "input_layernorm.weight"]
        out[p + "post_attention_layernorm.weight"] = t[p + "post_attention_layernorm.weight"]
        out[attn + "qkv_proj.weight"] = torch.cat(
            [t[f"{attn}{n}_proj.weight"] for n in "qkv"], dim=0
        )
        if cfg.qkv_bias:
            out[attn + "qkv_proj.bias"] = torch.cat(
                [t[f"{attn}{n}_proj.bias"] for n in "qkv"], dim=0
            )
        out[attn + "o_proj.weight"] = t[attn + "o_proj.weight"]
        if cfg.o_bias:
            out[attn + "o_proj.bias"] = t[attn + "o_proj.bias"]
        out[mlp + "gate_up_proj.weight"] = torch.cat(
            [t[mlp + "gate_proj.weight"], t[mlp + "up_proj.weight"]], dim=0
        )
        out[mlp + "down_proj.weight"] = t[mlp + "down_proj.weight"]
    return out


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    attention: PagedAttention | None = None,
) -> DecoderModel:
    """Model in eval mode on `device`, weights cast to `dtype` (default: the checkpoint's)."""
    folder = Path(path)
    cfg = ModelConfig.from_path(folder)
    # Build on the meta device so no time is spent on random init that is overwritten anyway.
    with torch.device("meta"):
        model = DecoderModel(cfg, attention)
    model = model.to_empty(device=device).to(dtype or cfg.dtype)
    state = hf_to_engine(dict(iter_tensors(folder)), cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied head appears as missing under its own name; it shares embed_tokens' storage.
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"checkpoint mismatch: missing={missing} unexpected={unexpected}")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.inv_freq = model.inv_freq.to(device)
    return model.eval()
