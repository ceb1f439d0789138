"""Start-up measurements of forward-pass cost against token count (the planner's cost model)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from backends.engine.runner import RunItem
from backends.engine.spec.cost import StepCostModel


def measure_step_costs(
    run: Callable[[list[RunItem]], torch.Tensor], sizes: Sequence[int], rounds: int = 5
) -> StepCostModel:
    """Seconds of a forward pass of n one-token items, for each n: the best of `rounds`, with
    the sizes interleaved in every round so a burst of load on a shared machine hits them
    alike, after one warm-up pass per size.

    Dummy tokens go to position 0 of block 0, which nothing holds before the engine serves.
    `run(items)` is the runner's run (returns logits)."""
    best = {n: float("inf") for n in sizes}
    for rnd in range(rounds + 1):
        for n in sizes:
            items = [RunItem([0], 0, [0], 1) for _ in range(n)]
            t0 = time.perf_counter()
            run(items).sum().item()
            if rnd:  # round 0 warms up
                best[n] = min(best[n], time.perf_counter() - t0)
    return StepCostModel(sorted(best.items()))


def calibration_sizes(limit: int) -> list[int]:
    sizes, n = [], 1
    while n < limit:
        sizes.append(n)
        n *= 2
    sizes.append(max(1, limit))
    return sorted(set(sizes))
