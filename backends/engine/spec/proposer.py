"""What every proposer takes and returns: draft tokens for sequences about to be verified."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from backends.engine.sampler import SamplingParams
from backends.engine.sequence import Sequence as Seq


@dataclass(frozen=True, slots=True)
class DraftRequest:
    """Propose up to `k` tokens to follow `seq.token_ids`; the KV slots for them are held."""

    seq: Seq
    k: int
    params: SamplingParams


@dataclass(frozen=True, slots=True)
class Proposal:
    """`token_ids` (at most k, maybe none). `probs` `[len, vocab]` is the distribution each
    token was sampled from; None means the tokens were chosen deterministically (a lookup, or a
    greedy draft), which the acceptance rule treats as a one-hot draft distribution."""

    token_ids: list[int]
    probs: torch.Tensor | None = None


class Proposer(Protocol):
    method: str

    def propose(self, requests: Sequence[DraftRequest]) -> list[Proposal]:
        """One proposal per request, in order.

        Verify items never carry copy-on-write copies of their own blocks (a decoding
        sequence's unfinished block is always private), so proposers need none."""
        ...

    def draft_seconds(self, batches: Sequence[int]) -> float:
        """Expected seconds to draft when iteration j runs over `batches[j]` sequences."""
        ...

    def observe(self, batches: Sequence[int], seconds: float) -> None:
        """A step's drafting over these iterations took `seconds` (keeps the estimate true)."""
        ...
