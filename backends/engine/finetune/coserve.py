"""How many training tokens join each step (co-serving, FlexLLM's hybrid token scheduler).

Inference is planned first; training gets what the step's token budget leaves, scaled by a
share that backs off multiplicatively when the measured inter-token latency of steps carrying
decodes goes past the target and grows additively while it is under (AIMD, as congestion
control does, so it settles just under the target without a model of the hardware). The target
is the member's ITL SLO when one is set, otherwise (1 + slack) times the ITL the same number of
decodes had in recent steps without training. With no inference in a step, training takes the
whole budget. Pure logic: the engine feeds it step timings.

The check is made once per window of steps carrying training, on the window's median step
time over its target, and the baseline is the median of the latest steps without training: a
single step's time varies by far more than the 10% slack on a shared CPU, and its outliers
(the OS scheduling another process) moved a smoothed mean by as much. Judged step by step on
smoothed means, the planner halved the share on noise, so co-served training ran at about half
of what the target allowed (measured: 0.42x training alone where 0.82x held the ITL p99 within
10%). Until the first window over the target the share doubles per window
(TCP's slow start): from the initial quarter, additive steps alone took longer than a
benchmark cell to reach what the target allowed.

A window a little over the derived target (under `clear_over` times it) backs the share off
only when `confirm` windows in a row are over, unless the share backed off within the last
`recent` windows (then one is enough: the planner is probing a level it already found too
high). An explicit SLO is a fixed bound, so one window over it always is. Why: a trace of the
planner at light load on a shared 2-core CPU (2026-12-08) had the machine's speed swing by up
to 2x within a second, for inference alone as much as for inference beside training; single
windows crossed 1.1x on that noise and each back-off cost 30% of the share. In a simulation
of the rule (windows over at random, or whenever the share passes a real limit),
confirmation kept the share at 0.80-0.99 where the plain rule held 0.64-0.92 on noise alone,
and the `recent` exemption kept the part of windows over a real limit at 0.28-0.50 (the plain
rule: 0.26-0.50), where confirmation alone let it rise to 0.42-0.67
(tests/test_engine_lora.py, `_simulate`). "In a row" and "within" count judged windows, not
time: a pause in training does not reset them.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

__all__ = ["CoServeConfig", "CoServePlanner"]


@dataclass(frozen=True)
class CoServeConfig:
    itl_slo_s: float | None = None  # the member's inter-token latency SLO, when it has one
    slack: float = 0.10  # without an SLO: allowed ITL growth over inference alone
    # A training token costs about three inference tokens (forward, then backward's two
    # matmuls per weight): budget units per training token.
    train_cost: float = 3.0
    min_share: float = 0.02
    increase: float = 0.1  # per window under the target
    decrease: float = 0.7  # per back-off
    baseline_steps: int = 64  # latest steps without training whose median is the baseline
    window: int = 32  # steps with training judged together (their median time over the target)
    confirm: int = 2  # windows over the target in a row before a back-off (no SLO set)...
    clear_over: float = 1.3  # ...unless one is this far over...
    recent: int = 4  # ...or a back-off came within this many windows (then at once)
    refresh_every: int = 16  # every so many decode steps, one runs alone to re-measure
    # Run training slices in a worker process beside the step instead of inside it: on the
    # CPU the resource is cores, not a GPU's kernel slots, so a slice on another core costs
    # inference little, where the same tokens inside the step add their time to the ITL.
    # None: on for the CPU, off for CUDA.
    overlap: bool | None = None
    worker_threads: int = 1  # torch threads of the training process
    # Added to the training process's nice value: where it and inference want the same core,
    # the kernel runs inference first (on an idle core training runs at full speed anyway).
    worker_nice: int = 19


class CoServePlanner:
    def __init__(self, config: CoServeConfig | None = None) -> None:
        self.config = config or CoServeConfig()
        self.share = 0.25
        # decode-count bucket -> the latest step times without training
        self._baseline: dict[int, deque[float]] = {}
        self._baseline_median: dict[int, float] = {}
        self.last_target_s: float | None = None
        self._decode_steps = 0
        self._window: list[float] = []  # this window's step times over their targets
        self._slow_start = True  # doubling until the first window over the target
        self._overs = 0  # windows over the target in a row
        # windows judged since the latest back-off (none yet: longer ago than `recent`)
        self._since_back_off = self.config.recent + 1

    def tokens(self, leftover: int, num_decodes: int, paced: bool = False) -> int:
        """Training tokens for this step, given the budget inference left and its decodes.
        `paced`: the share paces how often a slice runs (a worker beside the step), not its
        size; a smaller slice would pay the same per-slice overhead for fewer tokens."""
        if leftover <= 0:
            return 0
        if num_decodes and self.config.itl_slo_s is None:
            self._decode_steps += 1
            if (_bucket(num_decodes) not in self._baseline
                    or self._decode_steps % self.config.refresh_every == 0):
                return 0  # measure inference alone first (and now and then again)
        units = leftover if num_decodes == 0 or paced else leftover * self.share
        return max(0, math.floor(units / self.config.train_cost))

    def observe(self, seconds: float, num_decodes: int, train_tokens: int) -> None:
        """A finished step: its wall time, its decode items, the training tokens it carried."""
        if num_decodes == 0:
            return
        bucket = _bucket(num_decodes)
        if train_tokens == 0:
            times = self._baseline.setdefault(bucket, deque(maxlen=self.config.baseline_steps))
            times.append(seconds)
            self._baseline_median[bucket] = statistics.median(times)
            return
        target = self.target(num_decodes)
        if target is None:
            return
        self.last_target_s = target
        # Normalised by each step's own target, so steps with different batch sizes share one
        # window.
        self._window.append(seconds / target)
        if len(self._window) < self.config.window:
            return
        ratio = statistics.median(self._window)
        self._window.clear()
        self._since_back_off += 1
        if ratio <= 1.0:
            self._overs = 0
            if self._slow_start:
                self.share = min(1.0, self.share * 2)
            else:
                self.share = min(1.0, self.share + self.config.increase)
            return
        self._slow_start = False
        self._overs += 1
        at_once = (self.config.itl_slo_s is not None or ratio > self.config.clear_over
                   or self._since_back_off <= self.config.recent)
        if at_once or self._overs >= self.config.confirm:
            self._overs = 0
            self._since_back_off = 0
            self.share = max(self.config.min_share, self.share * self.config.decrease)

    def target(self, num_decodes: int) -> float | None:
        if self.config.itl_slo_s is not None:
            return self.config.itl_slo_s
        base = self._baseline_median.get(_bucket(num_decodes))
        return None if base is None else base * (1 + self.config.slack)


def _bucket(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
