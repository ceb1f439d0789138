"""Builds the proposer a `SpeculativeConfig` names, for an engine's target runner."""

from __future__ import annotations

from pathlib import Path

import torch

from backends.engine.attention import PagedAttention
from backends.engine.config import ModelConfig
from backends.engine.kv_cache import KVCache, block_bytes
from backends.engine.loader import load_model
from backends.engine.model import DecoderModel
from backends.engine.runner import ModelRunner
from backends.engine.spec.calibrate import calibration_sizes
from backends.engine.spec.config import SpeculativeConfig
from backends.engine.spec.draft_model import DraftModelProposer
from backends.engine.spec.ngram import NgramProposer
from backends.engine.spec.proposer import Proposer
from backends.engine.spec.self_spec import SelfSpecProposer


def load_draft_model(
    folder: Path, target: ModelConfig, *, dtype: torch.dtype, device: torch.device,
    attention: PagedAttention | None = None,
) -> DecoderModel:
    if not (folder / "config.json").is_file():
        raise ValueError(f"speculative draft_model {folder}: not a checkpoint folder")
    cfg = ModelConfig.from_path(folder)
    if cfg.vocab_size != target.vocab_size:
        raise ValueError(f"draft model {folder.name} has a vocabulary of {cfg.vocab_size}, the "
                         f"target {target.vocab_size}: they must share the tokenizer")
    return load_model(folder, dtype=dtype, device=device, attention=attention)


def draft_block_bytes(draft: DecoderModel, block_size: int, dtype: torch.dtype) -> int:
    c = draft.config
    return block_bytes(c.num_hidden_layers, block_size, c.num_key_value_heads, c.head_dim, dtype)


def build_proposer(
    spec: SpeculativeConfig, target: ModelRunner, draft: DecoderModel | None, *,
    max_num_seqs: int,
) -> Proposer:
    if spec.method == "ngram":
        return NgramProposer(spec.ngram_min, spec.ngram_max)
    proposer: DraftModelProposer
    if spec.method == "self":
        layers = target.model.config.num_hidden_layers
        proposer = SelfSpecProposer(target, spec.exit_layer or max(1, layers // 4))
    else:
        if draft is None:
            raise ValueError("speculative method 'draft' needs its draft model loaded")
        c = draft.config
        kv = KVCache(num_layers=c.num_hidden_layers, num_blocks=target.kv.num_blocks,
                     block_size=target.kv.block_size, n_kv_heads=c.num_key_value_heads,
                     head_dim=c.head_dim, dtype=target.kv.dtype, device=target.kv.device)
        proposer = DraftModelProposer(ModelRunner(draft, kv))
    if spec.calibrate:
        proposer.calibrate(calibration_sizes(max_num_seqs))
    return proposer
