"""Cooldown for members that keep failing: skipped until a probe after the cooldown succeeds."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self,
        failures_to_open: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.consecutive_failures = 0
        self.open_until = 0.0
        self.total_failures = 0
        self.total_successes = 0

    def available(self) -> bool:
        # After the cooldown the member is half-open: the next call is the probe.
        return self._clock() >= self.open_until

    def cooling_down_for(self) -> float:
        return max(0.0, self.open_until - self._clock())

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.open_until = 0.0
        self.total_successes += 1

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        self.total_failures += 1
        if self.consecutive_failures >= self.failures_to_open:
            self.open_until = self._clock() + self.cooldown_s

    def state(self) -> str:
        if not self.available():
            return "cooldown"
        return "degraded" if self.consecutive_failures else "healthy"
