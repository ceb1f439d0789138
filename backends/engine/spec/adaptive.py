"""Adaptive draft length, per request and per step. No torch, no clock: pure decisions.

Per request (FASER's idea): each request keeps a running estimate of its per-token acceptance
rate, alpha, from what its verify steps accepted (a truncated-geometric count: accepted tokens
are successes, a rejection ends the run). Its preferred k is the one that maximises expected
tokens per second for it alone: (1 - alpha^(k+1)) / (1 - alpha) tokens for the cost of a step
with 1 + k tokens plus k drafting iterations. A request whose acceptance is low prefers k = 0;
its estimate then drifts back toward the prior while it does not speculate, so it probes again
later instead of never trying.

Per step: the batch shares one forward pass, so draft tokens compete. The planner evaluates a
cap K = 0..max_k on every request's preferred k against the measured cost model of the step
(`StepCostModel`: seconds for T tokens) plus the proposer's drafting cost, and keeps the K with
the most expected tokens per second. When the step is compute-bound (a larger batch, where each
extra token costs about as much as the tokens already in it), K = 0 wins and speculation turns
itself off; a K > 0 must win by a margin, so model noise does not buy a slowdown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from backends.engine.sequence import Sequence
from backends.engine.spec.cost import StepCostModel

PRIOR_ACCEPTED = 1.5  # pseudo-counts: a new request starts at alpha = 0.6
PRIOR_REJECTED = 1.0
DECAY = 0.8  # per verify step: the estimate follows the last few steps
IDLE_DECAY = 0.95  # per step without speculation: back toward the prior, to probe again
MARGIN = 1.03  # a plan with drafts must beat plain decoding by 3% in expectation
ALPHA_GRID = 20
PREF_EVERY = 16


@dataclass(frozen=True, slots=True)
class SpecFigures:
    """A request's speculation, as the decision row and the usage block report it."""

    method: str
    proposed: int
    accepted: int
    mean_k: float
    steps: int  # decode steps of the request (with or without drafts)

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, "proposed": self.proposed, "accepted": self.accepted,
                "mean_k": round(self.mean_k, 3), "acceptance": self.acceptance}


@dataclass(slots=True)
class RequestSpec:
    enabled: bool
    proposed: int = 0
    accepted: int = 0
    decode_steps: int = 0
    k_sum: int = 0
    _succ: float = 0.0
    _fail: float = 0.0

    @property
    def alpha(self) -> float:
        return (self._succ + PRIOR_ACCEPTED) / (
            self._succ + self._fail + PRIOR_ACCEPTED + PRIOR_REJECTED)

    def observe(self, proposed: int, accepted: int) -> None:
        """One decode step of this request; `proposed` drafts of which `accepted` held."""
        self.decode_steps += 1
        self.k_sum += proposed
        self.proposed += proposed
        self.accepted += accepted
        if proposed:
            self._succ = DECAY * self._succ + accepted
            self._fail = DECAY * self._fail + (1.0 if accepted < proposed else 0.0)
        else:
            self._succ *= IDLE_DECAY
            self._fail *= IDLE_DECAY

    def figures(self, method: str) -> SpecFigures:
        mean_k = self.k_sum / self.decode_steps if self.decode_steps else 0.0
        return SpecFigures(method, self.proposed, self.accepted, mean_k, self.decode_steps)


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a verify step of k drafts yields on average: accepted drafts plus the one
    sampled token (the correction or the bonus)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


class AdaptivePlanner:
    """The scheduler's `DraftPlanner`: k per decoding sequence for the next step."""

    def __init__(
        self,
        target_cost: StepCostModel,
        draft_seconds: Callable[[Seq[int]], float],
        state: Callable[[int], RequestSpec | None],
        *,
        max_k: int,
        adaptive: bool = True,
    ) -> None:
        self.target_cost = target_cost
        self.draft_seconds = draft_seconds
        self.state = state
        self.max_k = max_k
        self.adaptive = adaptive
        self.last_cap = 0  # the K of the last plan (for /metrics)
        # The per-alpha preferences move only as slowly as the cost model: recomputed every
        # PREF_EVERY plans rather than on every step (the planner runs on every step).
        self._prefs: list[int] | None = None
        self._plans = 0

    def plan(self, decoding: Seq[Sequence], budget: int) -> Mapping[int, int]:
        states = [(s, self.state(s.seq_id)) for s in decoding]
        active = [(s, st) for s, st in states if st is not None and st.enabled]
        if not active or budget <= 0:
            self.last_cap = 0
            return {}
        if not self.adaptive:
            self.last_cap = self.max_k
            return {s.seq_id: self.max_k for s, _ in active}
        if self._prefs is None or self._plans % PREF_EVERY == 0:
            self._prefs = self._preferences()
        self._plans += 1
        prefs = self._prefs
        alphas = [st.alpha for _, st in active]
        want = [prefs[self._bucket(a)] for a in alphas]
        batch = len(decoding)
        best_cap, best_rate = 0, batch / max(self.target_cost.seconds(batch), 1e-9)
        for cap in range(1, self.max_k + 1):
            ks = [min(cap, w) for w in want]
            extra = sum(ks)
            if extra > budget:
                break
            tokens = batch - len(ks) + sum(
                expected_tokens(a, k) for a, k in zip(alphas, ks, strict=True))
            batches = [sum(1 for k in ks if k >= j) for j in range(1, cap + 1)]
            seconds = self.target_cost.seconds(batch + extra) + self.draft_seconds(batches)
            rate = tokens / max(seconds, 1e-9)
            if rate <= best_rate * (MARGIN if best_cap == 0 else 1.0):
                # Each deeper draft yields alpha^j more for about the same cost: once a level
                # does not pay, none deeper does (and a compute-bound step stops at once).
                break
            best_cap, best_rate = cap, rate
        self.last_cap = best_cap
        return {s.seq_id: min(best_cap, w) for (s, _), w in zip(active, want, strict=True)
                if min(best_cap, w) > 0}

    def _bucket(self, alpha: float) -> int:
        return min(ALPHA_GRID, max(0, round(alpha * ALPHA_GRID)))

    def _preferences(self) -> list[int]:
        """Each alpha bucket's best k for a request alone (batch of one)."""
        base = self.target_cost.seconds(1)
        prefs = []
        for b in range(ALPHA_GRID + 1):
            alpha = min(b / ALPHA_GRID, 0.99)
            best_k, best = 0, 1.0 / max(base, 1e-9)
            for k in range(1, self.max_k + 1):
                seconds = self.target_cost.seconds(1 + k) + self.draft_seconds([1] * k)
                rate = expected_tokens(alpha, k) / max(seconds, 1e-9)
                if rate > best:
                    best_k, best = k, rate
            prefs.append(best_k)
        return prefs
