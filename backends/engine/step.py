"""The typed records one engine step passes between scheduler, proposer, runner and sampler.

As vLLM v1 pairs `SchedulerOutput` with `ModelRunnerOutput`: the scheduler says which sequences
compute which tokens (`ScheduledItem`s of a kind), and the step answers with the tokens each
sequence gained (`SeqOutput`: accepted draft tokens, then one sampled token, and how many
drafts were rejected). No torch here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from backends.engine.sequence import Sequence


class ItemKind(enum.Enum):
    PREFILL = "prefill"  # a chunk of known tokens whose KV is missing (prompt, or a recompute)
    DECODE = "decode"  # the one known token whose KV is missing; samples one token
    VERIFY = "verify"  # that token plus k draft tokens, scored together; samples 1..k+1 tokens
    TRAIN = "train"  # tokens of a fine-tuning job's example: forward (+ backward), no KV cache


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    logprob: float  # of the sampled token
    top: list[tuple[int, float]] = field(default_factory=list)  # best first


@dataclass(eq=False, slots=True)
class ScheduledItem:
    """One sequence's share of a step. `num_tokens` known tokens are computed from
    `seq.num_computed`; a VERIFY item also holds KV slots for `num_draft_slots` draft tokens,
    which the proposer fills into `draft_ids` (possibly fewer) before the forward pass."""

    seq: Sequence
    kind: ItemKind
    num_tokens: int
    num_draft_slots: int = 0
    draft_ids: list[int] = field(default_factory=list)
    adapter_id: int | None = None
    # Fixed when scheduled (after the allocation's prefix hits), so they still describe the
    # step once `complete` has moved the sequence on.
    start: int = field(init=False)
    samples: bool = field(init=False)  # reaches the last known token, so yields logits

    def __post_init__(self) -> None:
        self.start = self.seq.num_computed
        self.samples = self.start + self.num_tokens == self.seq.num_tokens

    @property
    def query_tokens(self) -> list[int]:
        return self.seq.tokens(self.start, self.start + self.num_tokens) + self.draft_ids

    @property
    def num_logits(self) -> int:
        """Logits rows the item needs: its last known token and every draft token."""
        return 1 + len(self.draft_ids) if self.samples else 0

    @property
    def num_query_tokens(self) -> int:
        """Tokens the forward pass computes for the item: known ones plus filled drafts."""
        return self.num_tokens + len(self.draft_ids)

    @property
    def budget_tokens(self) -> int:
        """What the item costs of the step's token budget (its reserved draft slots too)."""
        return self.num_tokens + self.num_draft_slots


@dataclass(frozen=True, slots=True)
class TrainItem:
    """A training job's share of a step: `num_tokens` tokens of its current example (it has no
    KV sequence; the trainer keeps its own state). The next training kind (the speculative
    draft model learning from accepted tokens) is another job behind the same record."""

    job_id: str
    num_tokens: int
    kind: ItemKind = ItemKind.TRAIN


@dataclass
class SchedulerOutput:
    items: list[ScheduledItem] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst)
    preempted: list[Sequence] = field(default_factory=list)
    train: list[TrainItem] = field(default_factory=list)  # after every inference item

    @property
    def num_tokens(self) -> int:
        """Inference tokens of the step's budget (training takes what is left of it)."""
        return sum(it.budget_tokens for it in self.items)

    @property
    def is_empty(self) -> bool:
        return not self.items and not self.train

    @property
    def num_decodes(self) -> int:
        return sum(it.kind is not ItemKind.PREFILL for it in self.items)

    def sampling(self) -> list[ScheduledItem]:
        """Items that yield logits, in item order (the order of the logits rows)."""
        return [it for it in self.items if it.samples]

    def verifying(self) -> list[ScheduledItem]:
        return [it for it in self.items if it.kind is ItemKind.VERIFY]


@dataclass(frozen=True, slots=True)
class SeqOutput:
    """What one sequence gained in a step: `token_ids` is the accepted draft tokens followed by
    one token sampled from the target (a correction, or the bonus when every draft held)."""

    token_ids: list[int]
    num_draft: int = 0
    num_rejected: int = 0
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)

    @property
    def num_accepted(self) -> int:
        return self.num_draft - self.num_rejected


@dataclass
class StepOutput:
    """The step's results by sequence id; sequences absent from it gained no token."""

    outputs: dict[int, SeqOutput] = field(default_factory=dict)
