"""Grid carbon intensity over time, for scheduling deferrable work (batches) into clean hours.

Three sources behind one small interface (`intensity_at(t)` in gCO2e/kWh, `source`):
- a static daily profile (24 hourly figures, from greengate.yaml's `carbon:` section or the
  built-in one), the default: no account, no network, and the shape of most grids' day;
- an HTTP forecast such as the GB National Grid carbon-intensity API
  (`{"data": [{"from": ISO, "to": ISO, "intensity": {"forecast": g}}]}`; a plain number for
  `intensity` works too), refreshed every `refresh_s`, falling back to the profile when it
  does not answer (and saying so in `source`);
- any callable in tests.

The built-in profile is illustrative, not measured for a place: a solar-rich grid's day (clean
around noon, dirtiest in the evening peak), varying 2x between its lowest and highest hour."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger("greengate.carbon")

# gCO2e/kWh by UTC hour: 2.0x between the cleanest (12:00) and dirtiest (19:00) hour.
DEFAULT_PROFILE = (
    420.0, 400.0, 390.0, 385.0, 390.0, 410.0, 440.0, 430.0, 380.0, 320.0, 270.0, 240.0,
    230.0, 235.0, 255.0, 290.0, 340.0, 400.0, 450.0, 460.0, 455.0, 445.0, 435.0, 425.0,
)


class CarbonFeedConfig(BaseModel):
    """greengate.yaml `carbon:` section."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["static", "http"] = "static"
    profile: list[float] = Field(default_factory=lambda: list(DEFAULT_PROFILE),
                                 description="24 hourly gCO2e/kWh figures, hour 0 first.")
    utc_offset_h: float = Field(0.0, ge=-14, le=14,
                                description="The profile's hours are local time at this offset.")
    label: str = Field("static daily profile (illustrative)",
                       description="Where the profile's figures come from, shown with them.")
    url: str | None = Field(None, description="HTTP forecast (source: http).")
    refresh_s: float = Field(1800.0, gt=0)

    @field_validator("profile")
    @classmethod
    def _hours(cls, v: list[float]) -> list[float]:
        if len(v) != 24 or any(x <= 0 for x in v):
            raise ValueError("profile must list 24 positive gCO2e/kWh figures (hour 0 first)")
        return v


class CarbonFeed(Protocol):
    source: str

    def intensity_at(self, t: datetime) -> float: ...


class StaticProfile:
    def __init__(self, profile: list[float] | tuple[float, ...] = DEFAULT_PROFILE,
                 utc_offset_h: float = 0.0,
                 label: str = "static daily profile (illustrative)") -> None:
        self.profile = tuple(profile)
        self.offset = timedelta(hours=utc_offset_h)
        self.source = label

    def intensity_at(self, t: datetime) -> float:
        """Linear between hourly figures, so a schedule does not jump at hour boundaries."""
        local = t.astimezone(UTC) + self.offset
        h = local.hour + local.minute / 60 + local.second / 3600
        lo = int(h) % 24
        frac = h - int(h)
        return self.profile[lo] * (1 - frac) + self.profile[(lo + 1) % 24] * frac


class FunctionFeed:
    """A feed from a callable (tests, benchmarks)."""

    def __init__(self, fn: Callable[[datetime], float], source: str = "fake") -> None:
        self.fn = fn
        self.source = source

    def intensity_at(self, t: datetime) -> float:
        return float(self.fn(t))


def _parse_time(s: str) -> datetime:
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_forecast(data: Any) -> list[tuple[datetime, datetime, float]]:
    """[(from, to, g/kWh)] from a carbon-intensity API answer."""
    rows = data.get("data") if isinstance(data, dict) else data
    out = []
    for r in rows or []:
        value = r.get("intensity")
        if isinstance(value, dict):
            value = value.get("forecast", value.get("actual"))
        if isinstance(value, (int, float)) and value > 0:
            out.append((_parse_time(r["from"]), _parse_time(r["to"]), float(value)))
    return sorted(out)


class HttpForecast:
    """An HTTP forecast, read at most every refresh_s (in the caller's thread: the batch
    scheduler runs off the event loop); the profile answers where the forecast has no figure
    or the source is away."""

    def __init__(self, url: str, fallback: StaticProfile, refresh_s: float = 1800.0,
                 timeout_s: float = 5.0) -> None:
        self.url = url
        self.fallback = fallback
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._rows: list[tuple[datetime, datetime, float]] = []
        self._read_at = -float("inf")
        self._ok = False
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        return f"http forecast {self.url}" if self._ok else (
            f"{self.fallback.source} (http forecast {self.url} unavailable)")

    def _refresh(self) -> None:
        import httpx

        with self._lock:
            if time.monotonic() - self._read_at < self.refresh_s:
                return
            self._read_at = time.monotonic()
            try:
                r = httpx.get(self.url, timeout=self.timeout_s,
                              headers={"accept": "application/json"})
                r.raise_for_status()
                rows = parse_forecast(r.json())
            except Exception as e:  # any failure: the profile answers
                log.warning("carbon forecast %s unavailable (%s); using the profile",
                            self.url, type(e).__name__)
                self._ok = False
                return
            self._rows, self._ok = rows, bool(rows)

    def intensity_at(self, t: datetime) -> float:
        self._refresh()
        for start, end, value in self._rows:
            if start <= t < end:
                return value
        return self.fallback.intensity_at(t)


def make_feed(cfg: CarbonFeedConfig | None) -> CarbonFeed:
    cfg = cfg or CarbonFeedConfig()
    profile = StaticProfile(cfg.profile, cfg.utc_offset_h, cfg.label)
    if cfg.source == "http":
        if not cfg.url:
            raise ValueError("carbon.source http needs carbon.url")
        return HttpForecast(cfg.url, profile, cfg.refresh_s)
    return profile
