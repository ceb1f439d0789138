"""Multi-LoRA serving for the bundled engine: adapter files, fused deltas, a resident registry."""

from backends.engine.lora.layers import (
    AdapterTensors,
    FusedDelta,
    LoraContext,
    LoraLinear,
    enable_lora,
    module_slices,
    row_groups,
    target_shapes,
)
from backends.engine.lora.registry import AdapterRegistry, UnknownAdapter
from backends.engine.lora.weights import LoraWeights, load_adapter, save_adapter

__all__ = [
    "AdapterRegistry", "AdapterTensors", "FusedDelta", "LoraContext", "LoraLinear",
    "LoraWeights", "UnknownAdapter", "enable_lora", "load_adapter", "module_slices", "row_groups",
    "save_adapter", "target_shapes",
]
