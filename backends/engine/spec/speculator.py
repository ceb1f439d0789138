"""The engine's one handle on speculative decoding: per-request state, the planner the scheduler
consults, proposals for a step's verify items, and the figures the gateway reports."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from backends.engine.sampler import SamplingParams
from backends.engine.spec.adaptive import AdaptivePlanner, RequestSpec, SpecFigures
from backends.engine.spec.config import SpeculativeConfig
from backends.engine.spec.cost import StepCostModel
from backends.engine.spec.proposer import DraftRequest, Proposer
from backends.engine.step import ScheduledItem, SeqOutput

# Until measured, a step is assumed to cost 1 ms plus 0.1 ms a token (only the ratio matters).
DEFAULT_COST = [(1, 1.0e-3), (64, 7.3e-3)]


class Speculator:
    def __init__(self, config: SpeculativeConfig, proposer: Proposer,
                 target_cost: StepCostModel | None = None) -> None:
        self.config = config
        self.proposer = proposer
        self.method = proposer.method
        self.target_cost = target_cost or StepCostModel(DEFAULT_COST)
        self._requests: dict[int, RequestSpec] = {}
        self.planner = AdaptivePlanner(
            self.target_cost, proposer.draft_seconds, self._requests.get,
            max_k=config.max_k, adaptive=config.adaptive)
        self.proposed = 0
        self.accepted = 0
        self.verify_steps = 0
        self.decode_steps = 0

    # --- requests ------------------------------------------------------------------------

    def add(self, seq_id: int, enabled: bool) -> None:
        self._requests[seq_id] = RequestSpec(enabled=enabled)

    def remove(self, seq_id: int) -> None:
        self._requests.pop(seq_id, None)

    def figures(self, seq_id: int) -> SpecFigures | None:
        st = self._requests.get(seq_id)
        return st.figures(self.method) if st is not None and st.enabled else None

    # --- the step ------------------------------------------------------------------------

    def propose(self, items: Sequence[ScheduledItem],
                params: Sequence[SamplingParams]) -> dict[int, torch.Tensor | None]:
        """Fill each verify item's `draft_ids`; returns the draft distributions by seq id."""
        requests = [DraftRequest(it.seq, it.num_draft_slots, p)
                    for it, p in zip(items, params, strict=True)]
        t0 = time.perf_counter()
        proposals = self.proposer.propose(requests)
        batches = [sum(1 for it in items if it.num_draft_slots >= j)
                   for j in range(1, max(it.num_draft_slots for it in items) + 1)]
        self.proposer.observe(batches, time.perf_counter() - t0)
        probs: dict[int, torch.Tensor | None] = {}
        for it, prop in zip(items, proposals, strict=True):
            n = min(len(prop.token_ids), it.num_draft_slots)
            it.draft_ids = list(prop.token_ids[:n])
            probs[it.seq.seq_id] = None if prop.probs is None or n == 0 else prop.probs[:n]
        return probs

    def observe_forward(self, tokens: int, seconds: float) -> None:
        """A decode/verify-only forward pass of `tokens` took `seconds`."""
        self.target_cost.observe(tokens, seconds)

    def record(self, seq_id: int, out: SeqOutput) -> None:
        """One decode step's result for a request (prefill's first token is not one)."""
        st = self._requests.get(seq_id)
        if st is None or not st.enabled:
            return
        st.observe(out.num_draft, out.num_accepted)
        self.decode_steps += 1
        if out.num_draft:
            self.verify_steps += 1
            self.proposed += out.num_draft
            self.accepted += out.num_accepted

    def stats(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "max_k": self.config.max_k,
            "adaptive": self.config.adaptive,
            "proposed_tokens": self.proposed,
            "accepted_tokens": self.accepted,
            "acceptance": self.accepted / self.proposed if self.proposed else None,
            "verify_steps": self.verify_steps,
            "decode_steps": self.decode_steps,
            "mean_k": self.proposed / self.decode_steps if self.decode_steps else 0.0,
            "last_step_cap": self.planner.last_cap,
        }
