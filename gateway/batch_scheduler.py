"""When to run a batch: the start, within its completion window, whose hours have the lowest
grid carbon intensity, weighted by how loaded the pool already is then (other batches planned
into the same hours). Pure: a clock value, a feed and a load function in, a plan out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from telemetry import CarbonFeed

STEP_S = 900.0  # candidate starts every 15 minutes
LOAD_WEIGHT = 0.5  # a fully loaded slot counts as 1.5x its carbon intensity


@dataclass(frozen=True, slots=True)
class Plan:
    start: datetime
    expected_g_per_kwh: float  # mean intensity over the planned run
    submission_g_per_kwh: float  # mean intensity had it started at once
    best_g_per_kwh: float  # the cleanest start in the window (what waiting would give)
    run_s: float  # the run's estimated length
    margin_s: float  # kept free before the deadline
    reason: str
    source: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = int(self.start.timestamp())
        return d


def mean_intensity(feed: CarbonFeed, start: datetime, run_s: float) -> float:
    n = max(1, int(run_s // STEP_S) + 1)
    step = run_s / n if n > 1 else 0.0
    return sum(feed.intensity_at(start + timedelta(seconds=step * i)) for i in range(n)) / n


def margin_for(run_s: float, window_s: float) -> float:
    """Time kept free before the deadline, so retries and a slow pool still finish inside the
    window: the run's own length again, at least 10 minutes, at most half the window."""
    return min(max(run_s, 600.0), window_s / 2)


def plan(now: datetime, deadline: datetime, run_s: float, feed: CarbonFeed,
         load: Callable[[datetime, float], float] | None = None, run_now: bool = False) -> Plan:
    """The start minimising intensity x (1 + LOAD_WEIGHT x load) over the run; the earliest of
    equals. `load(start, run_s)` is the pool's planned load then, 0 (idle) to 1 (full)."""
    window_s = (deadline - now).total_seconds()
    margin = margin_for(run_s, window_s)
    latest = deadline - timedelta(seconds=run_s + margin)
    submission = mean_intensity(feed, now, run_s)
    starts = [now]
    t = now + timedelta(seconds=STEP_S)
    while t <= latest:
        starts.append(t)
        t += timedelta(seconds=STEP_S)
    scored = []
    for s in starts:
        g = mean_intensity(feed, s, run_s)
        busy = min(1.0, max(0.0, load(s, run_s))) if load is not None else 0.0
        scored.append((g * (1 + LOAD_WEIGHT * busy), s, g))
    best_score, best_start, best_g = min(scored, key=lambda x: (x[0], x[1]))
    if run_now:
        return Plan(now, submission, submission, best_g, run_s, margin,
                    "metadata.schedule is 'now': run at once", feed.source)
    if best_start == now:
        reason = "now is already the cleanest time in the window"
    else:
        reason = (f"waits {(best_start - now).total_seconds() / 3600:.1f} h for "
                  f"{best_g:.0f} gCO2e/kWh instead of {submission:.0f} now")
    return Plan(best_start, best_g, submission, best_g, run_s, margin, reason, feed.source)
