"""LoRA adapter weights and their files, in PEFT's layout so adapters trained elsewhere load too.

A folder holds `adapter_config.json` (`r`, `lora_alpha`, `target_modules`) and
`adapter_model.safetensors` with `base_model.model.model.layers.{i}.{self_attn|mlp}.{q_proj|...}
.lora_{A|B}.weight` tensors: A is `[r, in]`, B is `[out, r]`, and the layer's output gains
`scale * B @ A @ x` with `scale = alpha / r`. Here the tensors are kept per (layer, target) with
the engine's short target names (q, k, v, o, gate, up, down).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["LoraWeights", "load_adapter", "save_adapter"]

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_MODULE = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
           "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
           "down": "mlp.down_proj"}
_TARGET = {v.split(".")[1]: k for k, v in _MODULE.items()}
_KEY = re.compile(r"(?:.*\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.weight)?$")


@dataclass
class LoraWeights:
    """`tensors[(layer, target)] = (A [r, in], B [out, r])`."""

    rank: int
    alpha: float
    tensors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    base_model: str = ""

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(sorted({t for _, t in self.tensors}, key=list(_MODULE).index))

    def detached(self) -> LoraWeights:
        """A frozen copy (float32, no grad): what serving reads while training moves on."""
        return LoraWeights(self.rank, self.alpha, {
            k: (a.detach().float().clone(), b.detach().float().clone())
            for k, (a, b) in self.tensors.items()}, self.base_model)


def save_adapter(path: Path, weights: LoraWeights) -> Path:
    """Write the PEFT folder; files are replaced atomically so a crash never leaves half a one."""
    path.mkdir(parents=True, exist_ok=True)
    flat: dict[str, torch.Tensor] = {}
    for (layer, target), (a, b) in weights.tensors.items():
        stem = f"base_model.model.model.layers.{layer}.{_MODULE[target]}"
        flat[f"{stem}.lora_A.weight"] = a.detach().float().contiguous().cpu()
        flat[f"{stem}.lora_B.weight"] = b.detach().float().contiguous().cpu()
    tmp = path / (WEIGHTS + ".tmp")
    save_file(flat, str(tmp))
    tmp.replace(path / WEIGHTS)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": weights.rank,
           "lora_alpha": weights.alpha, "lora_dropout": 0.0, "bias": "none",
           "target_modules": [_MODULE[t].split(".")[1] for t in weights.targets],
           "base_model_name_or_path": weights.base_model}
    tmp_cfg = path / (CONFIG + ".tmp")
    tmp_cfg.write_text(json.dumps(cfg, indent=2))
    tmp_cfg.replace(path / CONFIG)
    return path


def load_adapter(path: Path) -> LoraWeights:
    """Read a PEFT LoRA folder; a clear ValueError for anything this engine can't serve."""
    cfg_file, w_file = path / CONFIG, path / WEIGHTS
    if not cfg_file.is_file() or not w_file.is_file():
        raise ValueError(f"{path}: not a LoRA adapter folder ({CONFIG} and {WEIGHTS} needed)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    rank, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(w_file)).items():
        m = _KEY.match(key)
        if m is None or m.group(2) not in _TARGET:
            raise ValueError(f"{path}: tensor {key!r} is not a LoRA weight this engine serves")
        halves.setdefault((int(m.group(1)), _TARGET[m.group(2)]), {})[m.group(3)] = t.float()
    tensors = {}
    for k, pair in halves.items():
        if set(pair) != {"A", "B"} or pair["A"].shape[0] != rank or pair["B"].shape[1] != rank:
            raise ValueError(f"{path}: layer {k[0]} {k[1]}: lora_A/lora_B missing or not rank "
                             f"{rank}")
        tensors[k] = (pair["A"], pair["B"])
    return LoraWeights(rank, alpha, tensors, str(cfg.get("base_model_name_or_path", "")))
