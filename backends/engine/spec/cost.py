"""Measured cost of a forward pass as a function of how many tokens it carries. No torch.

The adaptive planner asks what a step would cost with more draft tokens in it. A fixed
batch-size table (as vLLM and SGLang use) is right for one machine and one model; this one is
measured at start-up on the engine's own model (`points`), then kept honest by every real step:
the ratio of measured to predicted seconds is tracked, so a shared or throttled machine, or long
contexts, move the whole curve.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


class StepCostModel:
    def __init__(self, points: Sequence[tuple[int, float]]) -> None:
        pts = sorted((int(n), float(s)) for n, s in points if n > 0)
        if not pts:
            raise ValueError("need at least one (tokens, seconds) point")
        # Cost never falls with more tokens: a noisy measurement must not invite bigger steps.
        mono: list[tuple[int, float]] = []
        for n, s in pts:
            mono.append((n, max(s, mono[-1][1] if mono else 0.0)))
        self._n = [n for n, _ in mono]
        self._s = [s for _, s in mono]
        self.scale = 1.0

    @property
    def points(self) -> list[tuple[int, float]]:
        return list(zip(self._n, self._s, strict=True))

    def seconds(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return self.scale * self._raw(tokens)

    def observe(self, tokens: int, seconds: float, weight: float = 0.1) -> None:
        """A real forward of `tokens` took `seconds`."""
        if tokens > 0:
            self.observe_ratio(seconds, self.seconds(tokens), weight)

    def observe_ratio(self, measured: float, predicted: float, weight: float = 0.1) -> None:
        """Something this model predicted at `predicted` seconds took `measured`."""
        if predicted <= 0 or measured <= 0:
            return
        target = min(max(self.scale * measured / predicted, 0.05), 20.0)
        self.scale = (1 - weight) * self.scale + weight * target

    def _raw(self, tokens: int) -> float:
        n, s = self._n, self._s
        if len(n) == 1:
            return s[0] * tokens / n[0] if tokens > n[0] else s[0]
        if tokens <= n[0]:
            return s[0]
        if tokens >= n[-1]:
            # Past the largest measured size: extend the last segment's slope.
            slope = (s[-1] - s[-2]) / (n[-1] - n[-2])
            return s[-1] + slope * (tokens - n[-1])
        i = bisect.bisect_left(n, tokens)
        frac = (tokens - n[i - 1]) / (n[i] - n[i - 1])
        return s[i - 1] + frac * (s[i] - s[i - 1])
