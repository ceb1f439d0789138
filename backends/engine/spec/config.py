"""How one engine speculates: the proposer and the bounds of its adaptive draft length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Method = Literal["ngram", "draft", "self"]


@dataclass(frozen=True)
class SpeculativeConfig:
    method: Method
    max_k: int = 8  # draft tokens per request per step, at most
    adaptive: bool = True  # False: always max_k (benchmarks' fixed-k rows)
    # n-gram (prompt lookup): the longest suffix of the context, between these lengths, that
    # occurred earlier proposes the tokens that followed it.
    ngram_min: int = 1
    ngram_max: int = 4
    draft_model: str | None = None  # method "draft": a checkpoint folder sharing the tokenizer
    exit_layer: int | None = None  # method "self": layers before the head (default: a quarter)
    calibrate: bool = True  # measure step costs at start-up (the adaptive planner's model)

    def __post_init__(self) -> None:
        if self.method not in ("ngram", "draft", "self"):
            raise ValueError(f"unknown speculative method {self.method!r}")
        if not 1 <= self.max_k <= 16:
            raise ValueError("speculative max_k must be in 1..16")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError("need 1 <= ngram_min <= ngram_max")
        if self.method == "draft" and not self.draft_model:
            raise ValueError("speculative method 'draft' needs draft_model (a checkpoint folder)")
        if self.exit_layer is not None and self.exit_layer < 1:
            raise ValueError("exit_layer must be >= 1")
