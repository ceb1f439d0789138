"""Self-speculation: the target's first `exit_layer` layers plus its own final norm and head
draft the tokens (LayerSkip / Draft & Verify), so no second checkpoint is needed.

The draft's KV is the target's: layers below the exit compute exactly what the target computes
for the same tokens at the same positions, so the draft reads the target's cache for everything
already accepted and needs no catch-up or KV of its own. What it writes for draft positions
(lower layers only) sits in slots the verify pass rewrites with the target's own values in the
same step, before any of it is read. Acceptance depends on how well the model's early layers
predict its output: models trained with an early-exit loss (as LayerSkip trains them, and as the
benchmark's target is) do well; others propose poorly, and the adaptive planner then stops
drafting for them.
"""

from __future__ import annotations

from backends.engine.runner import ModelRunner
from backends.engine.sequence import Sequence as Seq
from backends.engine.spec.draft_model import DraftModelProposer


class SelfSpecProposer(DraftModelProposer):
    method = "self"

    def __init__(self, runner: ModelRunner, exit_layer: int) -> None:
        layers = runner.model.config.num_hidden_layers
        if not 1 <= exit_layer < layers:
            raise ValueError(f"exit_layer must be in 1..{layers - 1} for a {layers}-layer model")
        super().__init__(runner, num_layers=exit_layer)

    def _start(self, seq: Seq) -> int:
        return seq.num_computed

    def _ran(self, seq: Seq, end: int) -> None:
        pass  # the target's KV is the draft's: nothing of its own to track
