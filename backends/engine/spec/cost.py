"""Measured cost of a forward pass as a function of how many tokens it carries. No torch.

The adaptive planner asks what a step would cost with more draft tokens in it. A fixed
batch-size table (as vLLM and SGLang use) is right for one machine and one model; this one is
measured on the engine's own model: a start-up calibration seeds it, and every real step then
updates it, so a shared or throttled machine, or long contexts, move it.

The model is `seconds(n) = a + b * n`: a fixed part (weights read once per pass, kernel
launches, Python) and a per-token part. It is a least-squares fit over decayed observations
rather than an interpolated table, because single timings on a shared machine are noisy and a
table would follow each spike; a line through all of them does not, and it never decreases.
"""

from __future__ import annotations

from collections.abc import Sequence


class StepCostModel:
    def __init__(self, points: Sequence[tuple[int, float]], *, prior_weight: float = 3.0,
                 decay: float = 0.995) -> None:
        pts = [(int(n), float(s)) for n, s in points if n > 0 and s > 0]
        if not pts:
            raise ValueError("need at least one (tokens, seconds) point")
        self.points = sorted(pts)
        self.decay = decay
        self._w = self._sn = self._snn = self._st = self._snt = 0.0
        for n, s in pts:
            self._add(n, s, prior_weight)
        self.scale = 1.0  # from observe_ratio: measured / predicted of composite costs
        self._fit()

    @property
    def fixed_s(self) -> float:
        return self.scale * self._a

    @property
    def per_token_s(self) -> float:
        return self.scale * self._b

    def seconds(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return self.scale * (self._a + self._b * tokens)

    def observe(self, tokens: int, seconds: float) -> None:
        """A real forward of `tokens` took `seconds`."""
        if tokens <= 0 or seconds <= 0:
            return
        for name in ("_w", "_sn", "_snn", "_st", "_snt"):
            setattr(self, name, getattr(self, name) * self.decay)
        self._add(tokens, seconds / self.scale, 1.0)
        self._fit()

    def observe_ratio(self, measured: float, predicted: float, weight: float = 0.1) -> None:
        """Something this model predicted at `predicted` seconds took `measured`."""
        if predicted <= 0 or measured <= 0:
            return
        target = min(max(self.scale * measured / predicted, 0.05), 20.0)
        self.scale = (1 - weight) * self.scale + weight * target

    def _add(self, n: float, s: float, w: float) -> None:
        self._w += w
        self._sn += w * n
        self._snn += w * n * n
        self._st += w * s
        self._snt += w * n * s

    def _fit(self) -> None:
        mean_n, mean_t = self._sn / self._w, self._st / self._w
        var = self._snn / self._w - mean_n**2
        b = (self._snt / self._w - mean_n * mean_t) / var if var > 1e-12 else 0.0
        if b <= 0:
            # No measured growth with tokens (or one size only): charge tokens at the average
            # rate of the observations' fixed-size share, so more tokens never look free.
            b = mean_t / max(mean_n, 1.0) * 0.05
        a = max(mean_t - b * mean_n, 0.0)
        self._a, self._b = a, b
