"""One request's token state as the scheduler and block manager see it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Identity-compared (eq=False) so sequences can key dicts and sets while they mutate."""

    seq_id: int
    prompt_ids: list[int]
    max_tokens: int
    priority: int = 0
    adapter_id: int | None = None  # a LoRA adapter's KV differs from the base's: part of the hash
    arrival: float = 0.0
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached: int = 0
    # Positions whose KV a separate draft model holds (speculative decoding); reset with the KV.
    num_draft_computed: int = 0
    block_table: list[int] = field(default_factory=list)
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a sequence needs at least one prompt token")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def tokens(self, start: int, end: int) -> list[int]:
        """`token_ids[start:end]` without building the whole list (hot in every step)."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p:end - p]
        if end <= p:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[:end - p]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_remaining(self) -> int:
        """Known tokens whose KV is not in the cache yet (>= 1 for a live sequence)."""
        return self.num_tokens - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    def sort_key(self) -> tuple[int, float, int]:
        """Service order: priority, then arrival (FCFS), then id for a total order."""
        return (self.priority, self.arrival, self.seq_id)
