"""Continuous batching: which sequences compute how many tokens in the next step. No torch.

Each step's plan is a `SchedulerOutput` of typed items (`backends.engine.step`). Decoding
sequences (one known token left) go first, one token each, so ongoing streams keep their pace;
a `DraftPlanner` may then grow some of them into VERIFY items with k draft slots each, within
the same token budget and only where blocks are free (speculation never preempts anyone). The
rest of the budget goes to prefill chunks, first of running sequences part-way through their
prompt, then of waiting ones admitted in (priority, arrival) order; a `TrainPlanner` then fills
what is left with fine-tuning tokens (co-serving), which hold no KV blocks. When KV blocks run
out, the running sequence that matters least (highest priority value, latest arrival) is
preempted by recompute: its blocks are freed and it re-enters the waiting queue keeping its
output, to be prefilled again (prompt plus output) later -- usually cheaply, from the prefix
cache.

In-batch prefix caching (SGLang's idea, held across steps): a waiting sequence whose next
blocks after its cached prefix are being computed right now by a sequence prefilling in this
very step (running, or admitted just before it) would compute the same KV twice, and under a
burst of requests sharing a system prompt every one of them would miss. It is passed over for
this step instead (others behind it may go), and admitted once those blocks are committed, as
a prefix hit. The wait is bounded: at most `prefix_wait_steps` steps per sequence, and only
while the prefill it waits for is scheduled in the step; a shared part under
`prefix_wait_min_tokens` is not worth a step.

`complete` takes the step's `StepOutput`: a verify item advances by its accepted tokens only,
and the slots of rejected drafts are released before any block hash is computed, so the prefix
cache only ever holds accepted tokens.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from collections.abc import Sequence as Seq
from typing import Protocol

from backends.engine.block_manager import BlockManager
from backends.engine.sequence import SeqStatus, Sequence
from backends.engine.step import (
    ItemKind,
    ScheduledItem,
    SchedulerOutput,
    StepOutput,
    TrainItem,
)

__all__ = ["DraftPlanner", "QueueFull", "Scheduler", "TrainPlanner"]


class QueueFull(RuntimeError):
    """The waiting queue is at `max_waiting`; the caller should shed load (HTTP 429/503)."""


class DraftPlanner(Protocol):
    """Chooses how many draft tokens each decoding sequence verifies this step."""

    def plan(self, decoding: Seq[Sequence], budget: int) -> Mapping[int, int]: ...


class TrainPlanner(Protocol):
    """Fills what inference left of a step's token budget with training tokens."""

    def plan(self, leftover: int, num_decodes: int) -> list[TrainItem]: ...


class Scheduler:
    def __init__(
        self, blocks: BlockManager, *, max_num_seqs: int, token_budget: int, max_waiting: int,
        chunked_prefill: bool = True, prefix_wait_steps: int = 4,
        prefix_wait_min_tokens: int = 32,
    ) -> None:
        if max_num_seqs < 1 or token_budget < 1 or max_waiting < 0:
            raise ValueError("max_num_seqs and token_budget must be >= 1, max_waiting >= 0")
        if prefix_wait_steps < 0 or prefix_wait_min_tokens < 1:
            raise ValueError("prefix_wait_steps must be >= 0, prefix_wait_min_tokens >= 1")
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.token_budget = token_budget
        self.max_waiting = max_waiting
        self.chunked_prefill = chunked_prefill
        self.prefix_wait_steps = prefix_wait_steps
        self.prefix_wait_min_tokens = prefix_wait_min_tokens
        self._waits: dict[int, int] = {}  # seq_id -> steps it was passed over for a prefix
        self.num_prefix_waits = 0
        self._running: list[Sequence] = []
        self._waiting: list[Sequence] = []  # kept sorted by Sequence.sort_key
        self.num_preemptions = 0

    @property
    def running(self) -> Seq[Sequence]:
        return tuple(self._running)

    @property
    def waiting(self) -> Seq[Sequence]:
        return tuple(self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def add(self, seq: Sequence) -> None:
        if len(self._waiting) >= self.max_waiting:
            raise QueueFull(f"waiting queue is full ({self.max_waiting})")
        # A sequence that can't fit even alone would be preempted forever.
        needed = self.blocks.blocks_needed(seq.num_tokens + seq.max_tokens - len(seq.output_ids))
        if needed > self.blocks.num_blocks:
            raise ValueError(f"sequence needs {needed} KV blocks, the cache has "
                             f"{self.blocks.num_blocks}")
        if not self.chunked_prefill and seq.num_tokens > self.token_budget:
            raise ValueError(f"prompt of {seq.num_tokens} tokens exceeds the token budget "
                             f"{self.token_budget} and chunked prefill is off")
        seq.status = SeqStatus.WAITING
        self._enqueue(seq)

    def abort(self, seq_id: int) -> Sequence | None:
        for seq in (*self._running, *self._waiting):
            if seq.seq_id == seq_id:
                self.finish(seq, "abort")
                return seq
        return None

    def finish(self, seq: Sequence, reason: str) -> None:
        self.blocks.free(seq)
        self._waits.pop(seq.seq_id, None)
        if seq.status is SeqStatus.RUNNING:
            self._running.remove(seq)
        elif seq.status is SeqStatus.WAITING and seq in self._waiting:
            self._waiting.remove(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason

    def schedule(self, planner: DraftPlanner | None = None,
                 trainer: TrainPlanner | None = None) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.token_budget
        scheduled: set[int] = set()
        order = sorted(self._running, key=Sequence.sort_key)
        decoding = [s for s in order if s.num_remaining == 1]
        prefilling = [s for s in order if s.num_remaining > 1]
        for kind, group in ((ItemKind.DECODE, decoding), (ItemKind.PREFILL, prefilling)):
            if kind is ItemKind.PREFILL and planner is not None:
                budget = self._add_drafts(out, planner, budget)
            for seq in group:
                if budget == 0:
                    break
                if seq.status is not SeqStatus.RUNNING:
                    continue  # preempted earlier in this step
                n = min(seq.num_remaining, budget)
                if not self._make_room(seq, n, scheduled, out):
                    continue
                out.copies.extend(self.blocks.allocate(seq, n))
                out.items.append(ScheduledItem(seq, kind, n))
                scheduled.add(seq.seq_id)
                budget -= n
        # Admitting while preempting would just thrash the cache.
        if not out.preempted:
            budget = self._admit(out, budget)
        if trainer is not None and budget > 0:
            out.train = trainer.plan(budget, out.num_decodes)
        return out

    def complete(self, out: SchedulerOutput, result: StepOutput) -> None:
        """Record a step's results: each sampling item's accepted drafts and sampled token."""
        for item in out.items:
            seq = item.seq
            if seq.status is not SeqStatus.RUNNING:
                continue  # finished (aborted) between schedule and complete
            gained = result.outputs.get(seq.seq_id)
            seq.num_computed += item.num_tokens
            if gained is not None:
                seq.num_computed += gained.num_accepted
                seq.output_ids.extend(gained.token_ids)
            if item.num_draft_slots:
                self.blocks.trim(seq)
            seq.num_draft_computed = min(seq.num_draft_computed, seq.num_computed)
            self.blocks.commit(seq)

    # --- internals -----------------------------------------------------------------------

    def _add_drafts(self, out: SchedulerOutput, planner: DraftPlanner, budget: int) -> int:
        decodes = [it for it in out.items if it.kind is ItemKind.DECODE]
        if not decodes or budget == 0:
            return budget
        wanted = planner.plan([it.seq for it in decodes], budget)
        for item in decodes:
            seq = item.seq
            # The last token sampled must stay within max_tokens (the context bound is in it).
            k = min(wanted.get(seq.seq_id, 0), budget, seq.max_tokens - len(seq.output_ids) - 1)
            while k > 0 and not self.blocks.can_allocate(seq, 1 + k):
                k -= 1
            if k <= 0:
                continue
            out.copies.extend(self.blocks.allocate(seq, 1 + k))
            item.kind = ItemKind.VERIFY
            item.num_draft_slots = k
            budget -= k
        return budget

    def _admit(self, plan: SchedulerOutput, budget: int) -> int:
        # Sequences prefilling in this step: the only ones whose pending blocks will be
        # committed when it completes, so the only ones worth waiting for.
        prefilling = {it.seq.seq_id for it in plan.items if it.kind is ItemKind.PREFILL}
        i = 0
        while i < len(self._waiting) and budget > 0 and len(self._running) < self.max_num_seqs:
            seq = self._waiting[i]
            if self._waits_for_prefix(seq, prefilling):
                i += 1
                continue
            remaining = seq.num_tokens - self.blocks.cached_prefix_tokens(seq)
            # A preempted sequence (it has outputs) may exceed any budget on recompute; it is
            # chunked regardless, or it would wait forever and block the queue behind it.
            if remaining > budget and not self.chunked_prefill and not seq.output_ids:
                break
            n = min(remaining, budget)
            # Strict FCFS: a head that doesn't fit blocks the ones behind it, so long prompts
            # can't be starved by a stream of short ones.
            if not self.blocks.can_allocate(seq, n):
                break
            self._waiting.pop(i)
            self._waits.pop(seq.seq_id, None)
            plan.copies.extend(self.blocks.allocate(seq, n))
            seq.status = SeqStatus.RUNNING
            self._running.append(seq)
            plan.items.append(ScheduledItem(seq, ItemKind.PREFILL, n))
            prefilling.add(seq.seq_id)
            budget -= n
        return budget

    def _waits_for_prefix(self, seq: Sequence, prefilling: set[int]) -> bool:
        """Pass `seq` over this step: the blocks after its cached prefix are being computed in
        this step by another sequence, and it has not used up its waits."""
        waited = self._waits.get(seq.seq_id, 0)
        if waited >= self.prefix_wait_steps or not prefilling:
            return False
        status = self.blocks.prefix_status(seq, prefilling)
        if status.pending_tokens < self.prefix_wait_min_tokens:
            return False
        self._waits[seq.seq_id] = waited + 1
        self.num_prefix_waits += 1
        return True

    def _make_room(
        self, seq: Sequence, n: int, scheduled: set[int], plan: SchedulerOutput
    ) -> bool:
        """Preempt until `seq` can get blocks for n tokens; False if `seq` itself went."""
        while not self.blocks.can_allocate(seq, n):
            candidates = [s for s in self._running if s.seq_id not in scheduled]
            victim = max(candidates, key=Sequence.sort_key)
            self._preempt(victim)
            plan.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.free(seq)
        seq.num_computed = 0
        self._running.remove(seq)
        seq.status = SeqStatus.WAITING
        self._enqueue(seq)
        self.num_preemptions += 1

    def _enqueue(self, seq: Sequence) -> None:
        bisect.insort(self._waiting, seq, key=Sequence.sort_key)
