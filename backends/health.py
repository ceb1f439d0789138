"""Cooldown for members that keep failing: skipped until a probe after the cooldown succeeds.

The breaker counts requests, not attempts: one request's own retries are one failure, so a
single caller whose prompt makes the upstream fail cannot cool a member down for everyone.
It opens when, within a sliding window, enough distinct requests failed and they are a large
enough share of the requests the member saw. A 429 is back-pressure (Retry-After handles it),
so callers do not report it at all. Kept here rather than taken from a library (pybreaker,
aiobreaker) because those count consecutive calls and know nothing of request identity."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MAX_TRACKED = 10_000  # requests remembered per member; older ones fall out of the window


class CircuitBreaker:
    def __init__(
        self,
        failures_to_open: int,
        cooldown_s: float,
        window_s: float = 60.0,
        failure_ratio: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self.window_s = window_s
        self.failure_ratio = failure_ratio
        self._clock = clock
        # request id -> (when, failed); the latest outcome of each request in the window.
        self._outcomes: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self._probing = False  # opened and not yet recovered: one more failure reopens
        self.open_until = 0.0
        self.total_failures = 0
        self.total_successes = 0
        # Told when this breaker opens (seconds of cooldown) or recovers (0): replicas share
        # a member's health through it (gateway.replicas publishes, force_* applies).
        self.on_change: Callable[[float], None] | None = None

    def available(self) -> bool:
        # After the cooldown the member is half-open: the next call is the probe.
        return self._clock() >= self.open_until

    def cooling_down_for(self) -> float:
        return max(0.0, self.open_until - self._clock())

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        while self._outcomes:
            rid, (t, _) = next(iter(self._outcomes.items()))
            if t >= horizon and len(self._outcomes) <= MAX_TRACKED:
                break
            del self._outcomes[rid]

    def _note(self, request_id: str, failed: bool) -> None:
        now = self._clock()
        self._outcomes.pop(request_id, None)
        self._outcomes[request_id] = (now, failed)
        self._prune(now)

    @property
    def failed_requests(self) -> int:
        """Distinct requests whose latest attempt on this member failed, within the window."""
        self._prune(self._clock())
        return sum(1 for _, failed in self._outcomes.values() if failed)

    # Kept under its old name for the admin API: it now counts requests, not attempts.
    consecutive_failures = failed_requests

    def record_success(self, request_id: str = "") -> None:
        self._note(request_id or f"anon-{self.total_successes}-s", False)
        was_open = self._probing
        self._probing = False
        self.open_until = 0.0
        self.total_successes += 1
        if was_open and self.on_change is not None:
            self.on_change(0.0)

    def record_failure(self, request_id: str = "") -> None:
        """A failed attempt by `request_id`; a request counts once however often it retries."""
        self.total_failures += 1
        self._note(request_id or f"anon-{self.total_failures}-f", True)
        if self._probing and self.available():  # the probe after a cooldown failed
            self._open()
            return
        failed = self.failed_requests
        if failed >= self.failures_to_open and failed >= self.failure_ratio * len(self._outcomes):
            self._open()

    def _open(self) -> None:
        self.open_until = self._clock() + self.cooldown_s
        self._probing = True
        if self.on_change is not None:
            self.on_change(self.cooldown_s)

    def force_open(self, for_s: float) -> None:
        """Another replica cooled this member down: skip it here too (no event echoed)."""
        self.open_until = max(self.open_until, self._clock() + for_s)
        self._probing = True

    def force_close(self) -> None:
        """Another replica's probe succeeded: the member is healthy again here too."""
        self._probing = False
        self.open_until = 0.0

    def state(self) -> str:
        if not self.available():
            return "cooldown"
        return "degraded" if self.failed_requests else "healthy"
