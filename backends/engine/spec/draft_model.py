"""Draft-model proposals: a smaller checkpoint with the same tokenizer drafts k tokens.

The draft runs in the same engine over the same block tables as the target: its KV cache is a
second tensor with the same number of blocks, indexed by the same block ids, so block i holds
both models' KV for the same positions. Its memory is part of every block's size, hence counted
in KV use, and freeing, preempting or trimming a sequence's blocks frees the draft's KV with the
target's, with no second allocator to keep in step.

`seq.num_draft_computed` says how far the draft's KV is valid. Each step the draft first catches
up on what it has not seen (the last accepted token; after a step that accepted every draft,
also the last draft token, which the draft proposed but never ran), then proposes one token per
iteration. After verification the scheduler clamps `num_draft_computed` to the accepted length,
which rolls back the KV of rejected drafts (their slots are rewritten next time). A sequence
that gained its blocks from the prefix cache has no draft KV for them (`num_draft_computed` is 0
after any allocation), so the draft prefills the whole context once; the values it writes into a
shared block are the same draft KV every sharer would compute for those tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from backends.engine.runner import ModelRunner, RunItem
from backends.engine.sampler import filtered_probs, race
from backends.engine.sequence import Sequence as Seq
from backends.engine.spec.calibrate import measure_step_costs
from backends.engine.spec.cost import StepCostModel
from backends.engine.spec.proposer import DraftRequest, Proposal

DRAFT_STREAM = 1  # a seeded request's generator stream for the draft's own sampling


class DraftModelProposer:
    method = "draft"

    def __init__(self, runner: ModelRunner, *, num_layers: int | None = None) -> None:
        self.runner = runner
        self.num_layers = num_layers
        self.cost = StepCostModel([(1, 1e-3)])

    def calibrate(self, sizes: Sequence[int]) -> None:
        """Measure one drafting iteration at these batch sizes."""
        self.cost = measure_step_costs(
            lambda items: self.runner.run(items, num_layers=self.num_layers), sizes)

    def _start(self, seq: Seq) -> int:
        return seq.num_draft_computed

    def _ran(self, seq: Seq, end: int) -> None:
        seq.num_draft_computed = end

    def propose(self, requests: Sequence[DraftRequest]) -> list[Proposal]:
        if not requests:
            return []
        dev = self.runner.device
        drafts: list[list[int]] = [[] for _ in requests]
        probs: list[list[torch.Tensor]] = [[] for _ in requests]
        tables = [list(r.seq.block_table) for r in requests]
        items = []
        for r, table in zip(requests, tables, strict=True):
            start = self._start(r.seq)
            items.append(RunItem(r.seq.tokens(start, r.seq.num_tokens), start, table, 1))
        live = list(range(len(requests)))
        depth = 0
        while True:
            logits = self.runner.run(items, num_layers=self.num_layers)
            for row, i in enumerate(live):
                r = requests[i]
                token, dist = _pick(logits[row], r, len(r.seq.output_ids) + depth, dev)
                drafts[i].append(token)
                if dist is not None:
                    probs[i].append(dist)
            depth += 1
            live = [i for i in live if requests[i].k > depth]
            if not live:
                break
            # Draft token `depth` sits at position num_tokens - 1 + depth.
            items = [RunItem([drafts[i][-1]], requests[i].seq.num_tokens - 1 + depth,
                             tables[i], 1) for i in live]
        out = []
        for i, r in enumerate(requests):
            self._ran(r.seq, r.seq.num_tokens + r.k - 1)
            dist = torch.stack(probs[i]) if probs[i] else None
            out.append(Proposal(drafts[i], dist))
        return out

    def draft_seconds(self, batches: Sequence[int]) -> float:
        return sum(self.cost.seconds(b) for b in batches if b > 0)

    def observe(self, batches: Sequence[int], seconds: float) -> None:
        self.cost.observe_ratio(seconds, self.draft_seconds(batches))


def _pick(
    row: torch.Tensor, r: DraftRequest, index: int, dev: torch.device
) -> tuple[int, torch.Tensor | None]:
    """The draft's token for output position `index`: argmax for greedy requests, else a
    sample from its own (temperature, top-k, top-p filtered) distribution, returned with it."""
    if r.params.greedy:
        return int(row.argmax()), None
    dist = filtered_probs(row[None].float(), [r.params])
    gen = r.params.make_generator(dev, index, DRAFT_STREAM)
    return int(race(dist, [gen])[0]), dist[0]
