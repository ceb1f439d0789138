"""Hardware energy meters (NVML, RAPL) behind one interface, plus per-window attribution.

Nothing here touches hardware at import time: `pynvml` is imported and initialised only when an
`NvmlMeter` is built, and sysfs is read only when a `RaplMeter` is built. Use `detect_meter()`
to get the best meter the machine offers; it never raises for missing hardware.

Reading a span of time::

    meter = detect_meter()
    w = meter.window()
    ...                      # serve the request
    energy = w.stop()        # EnergyWindow, or None when nothing was measured

`Window.stop()` returns None (never a 0 J figure) when there is nothing to report: the meter is a
`NullMeter`, the meter failed during the window, or the window was shorter than the counter's
update period and no average power was known yet. Callers must store None as "not measured".

Short windows: hardware counters refresh every `update_period_s`, so a window shorter than that
sees either no movement or a whole refresh step. Both are misleading, and replacing only the
zero readings with an estimate would bias sums upwards, so every short window is estimated as
recent average power x window seconds (`interpolated=True`) whenever the meter has enough
history. Without history, a moved counter is reported as measured and a still one as None: we
never block a request to take extra samples.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, ClassVar

log = logging.getLogger(__name__)

SOURCE_NVML = "measured:nvml"
SOURCE_RAPL = "measured:rapl"
SOURCE_NONE = "none"
PREFERENCES = ("auto", "nvml", "rapl", "none")

DEFAULT_RAPL_ROOT = Path("/sys/class/powercap")
# NVML does not document the refresh rate of the total-energy counter; ~100 ms is what it is
# observed to do on Volta..Hopper. RAPL's MSRs refresh about every millisecond.
NVML_COUNTER_PERIOD_S = 0.1
RAPL_COUNTER_PERIOD_S = 0.001
HISTORY_S = 5.0

Clock = Callable[[], float]


class MeterUnavailable(RuntimeError):
    """The hardware (or the permission to read it) is missing; raised only by constructors."""


class MeterError(RuntimeError):
    """A meter that worked failed while being read (GPU lost, sysfs vanished, ...)."""


@dataclass(frozen=True)
class EnergyWindow:
    """Energy over a time window. `interpolated` is True when the window was shorter than the
    counter's update period and the figure is recent average power x `seconds`."""

    joules: float
    source: str
    seconds: float
    interpolated: bool


class _History:
    """Recent (time, joules) samples, to know the average power over the last few seconds."""

    # Reads closer together than this overwrite the newest sample, so a burst of requests
    # doesn't grow the deque while the span it covers stays the same.
    _MIN_GAP_S = 0.01

    def __init__(self, horizon_s: float) -> None:
        self._horizon_s = horizon_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, joules: float) -> None:
        s = self._samples
        if len(s) >= 2 and t - s[-2][0] < self._MIN_GAP_S:
            s[-1] = (t, joules)
        else:
            s.append((t, joules))
        # Keep one sample older than the horizon so the span covers the whole horizon.
        while len(s) > 2 and s[1][0] <= t - self._horizon_s:
            s.popleft()

    def average_power_w(self, min_span_s: float) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, j0), (t1, j1) = self._samples[0], self._samples[-1]
        # A span of only a couple of refresh steps is dominated by the counter's quantisation.
        if t1 - t0 < min_span_s or j1 <= j0:
            return None
        return (j1 - j0) / (t1 - t0)


class _Poller:
    """Daemon thread that calls `fn` every `interval_s` until stopped."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object]) -> None:
        if interval_s <= 0:
            raise ValueError(f"poll interval must be positive, got {interval_s}")
        self._interval_s = interval_s
        self._fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._interval_s):
            try:
                self._fn()
                failing = False
            except Exception:
                # Log once per outage rather than every tick; keep polling in case it recovers.
                if not failing:
                    log.warning("%s: poll failed", self._thread.name, exc_info=True)
                failing = True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)


class _Counter:
    """Turns a raw hardware counter into a monotonic total since the first reading.

    `wrap_at` is the value after which the counter restarts at 0 (RAPL's max_energy_range_uj).
    Without it, a backwards step means the counter was reset (e.g. driver reload) and restarted
    from 0, so the new reading itself is the energy since the reset.
    """

    def __init__(self, first: int, wrap_at: int | None = None) -> None:
        self._last = first
        self._wrap_at = wrap_at
        self.total = 0

    def update(self, raw: int) -> int:
        if raw >= self._last:
            self.total += raw - self._last
        elif self._wrap_at is not None:
            self.total += self._wrap_at - self._last + raw
        else:
            self.total += raw
        self._last = raw
        return self.total


class EnergyMeter(ABC):
    """A monotonic joules counter starting at 0 when the meter is built. Thread-safe."""

    source: ClassVar[str]

    def __init__(self, *, clock: Clock = time.monotonic, history_s: float = HISTORY_S) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._history = _History(history_s)
        self._poller: _Poller | None = None
        self._closed = False

    @property
    @abstractmethod
    def update_period_s(self) -> float:
        """How often the underlying counter refreshes; windows shorter than this interpolate."""

    @abstractmethod
    def _read_joules(self) -> float:
        """Joules since the meter started. Called with the meter's lock held."""

    def _close(self) -> None:  # noqa: B027 - optional hook, most meters hold nothing
        """Release hardware handles. Called once, after any poller stopped."""

    @property
    def measures(self) -> bool:
        """False for the NullMeter: its figures mean "not measured", never 0 J."""
        return self.source != SOURCE_NONE

    def sample(self) -> tuple[float, float]:
        """(clock time, joules) read together, so windows pair them consistently."""
        with self._lock:
            joules = self._read_joules()
            now = self._clock()
            self._history.add(now, joules)
            return now, joules

    def read(self) -> float:
        """Joules since the meter started; never decreases. Raises MeterError if the hardware
        fails after construction."""
        return self.sample()[1]

    def average_power_w(self) -> float | None:
        """Average power over the last few seconds of reads, or None if not known yet."""
        with self._lock:
            return self._history.average_power_w(min_span_s=2 * self.update_period_s)

    def window(self) -> Window:
        return Window(self)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._poller is not None:
            self._poller.stop()
        self._close()

    def _start_poller(self, interval_s: float, fn: Callable[[], object]) -> None:
        self._poller = _Poller(f"{type(self).__name__}-poll", interval_s, fn)

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r})"


class Window:
    """Energy over a span: `w = meter.window(); ...; w.stop()`. Also a context manager, with
    the figure in `result` afterwards. A meter failure yields None rather than an exception so
    measuring can never fail a request."""

    def __init__(self, meter: EnergyMeter) -> None:
        self._meter = meter
        self._start: tuple[float, float] | None = None
        self._stopped = False
        self.result: EnergyWindow | None = None
        if meter.measures:
            try:
                self._start = meter.sample()
            except MeterError:
                log.warning("energy meter failed at window start", exc_info=True)

    def stop(self) -> EnergyWindow | None:
        """The window's energy, or None when nothing trustworthy was measured. Idempotent."""
        if not self._stopped:
            self._stopped = True
            self.result = self._measure()
        return self.result

    def _measure(self) -> EnergyWindow | None:
        if self._start is None:
            return None
        try:
            t1, j1 = self._meter.sample()
        except MeterError:
            log.warning("energy meter failed at window stop", exc_info=True)
            return None
        t0, j0 = self._start
        seconds, delta = t1 - t0, j1 - j0
        source = self._meter.source
        if seconds >= self._meter.update_period_s:
            return EnergyWindow(delta, source, seconds, interpolated=False)
        power = self._meter.average_power_w()
        if power is not None:
            return EnergyWindow(power * seconds, source, seconds, interpolated=True)
        if delta > 0:
            return EnergyWindow(delta, source, seconds, interpolated=False)
        return None

    def __enter__(self) -> Window:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class NullMeter(EnergyMeter):
    """No hardware: read() is 0.0 and windows stop() as None, so no one stores 0 J as measured."""

    source = SOURCE_NONE

    @property
    def update_period_s(self) -> float:
        return 0.0

    def _read_joules(self) -> float:
        return 0.0


class _PowerIntegrator:
    """Trapezoid integral of summed board power, for GPUs without an energy counter."""

    def __init__(self, read_mw: Callable[[], int], clock: Clock) -> None:
        self._read_mw = read_mw
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, float] = (clock(), read_mw() / 1000.0)
        self._joules = 0.0

    def sample(self) -> None:
        watts = self._read_mw() / 1000.0
        now = self._clock()
        with self._lock:
            t0, w0 = self._last
            self._joules += (w0 + watts) / 2.0 * max(0.0, now - t0)
            self._last = (now, watts)

    @property
    def joules(self) -> float:
        with self._lock:
            return self._joules


class NvmlMeter(EnergyMeter):
    """Energy of the selected GPUs (all by default), summed.

    Volta and newer: the driver's total-energy counter (mJ), read on demand. Older GPUs (the
    counter raises NotSupported): board power (mW) sampled every `sample_interval_s` by a daemon
    thread and integrated, so their figure refreshes at that interval. `poll_interval_s` reads
    the meter in the background to keep the average-power history warm for short windows;
    None disables it (power sampling, when needed, still runs).
    """

    source = SOURCE_NVML

    def __init__(
        self,
        device_indices: Sequence[int] | None = None,
        *,
        sample_interval_s: float = 0.05,
        poll_interval_s: float | None = 1.0,
        counter_period_s: float = NVML_COUNTER_PERIOD_S,
        clock: Clock = time.monotonic,
        history_s: float = HISTORY_S,
    ) -> None:
        super().__init__(clock=clock, history_s=history_s)
        try:
            import pynvml
        except ImportError as e:
            raise MeterUnavailable("pynvml is not installed") from e
        self._nvml: ModuleType = pynvml
        self._counter_period_s = counter_period_s
        self._sample_interval_s = sample_interval_s
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise MeterUnavailable(f"NVML did not initialise: {e}") from e
        try:
            self._setup(device_indices)
        except BaseException:
            pynvml.nvmlShutdown()
            raise
        self.read()  # first history sample, so short windows can interpolate sooner
        self._start_pollers(poll_interval_s)

    def _setup(self, device_indices: Sequence[int] | None) -> None:
        nvml = self._nvml
        indices = [] if device_indices is None else list(device_indices)
        try:
            if device_indices is None:
                indices = list(range(nvml.nvmlDeviceGetCount()))
            if not indices:
                raise MeterUnavailable("NVML sees no GPU")
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self._counters: list[tuple[Any, _Counter]] = []
            power_handles: list[Any] = []
            for handle in handles:
                first = self._energy_mj(handle)
                if first is None:
                    power_handles.append(handle)
                else:
                    self._counters.append((handle, _Counter(first)))
            self._power_handles = power_handles
            self._integrator = (
                _PowerIntegrator(self._power_mw, self._clock) if power_handles else None
            )
        except nvml.NVMLError as e:
            raise MeterUnavailable(f"NVML cannot measure GPUs {indices!r}: {e}") from e
        self.device_indices = tuple(indices)
        log.debug(
            "NVML meter on GPUs %s (%d energy counters, %d power-sampled)",
            indices, len(self._counters), len(power_handles),
        )

    def _energy_mj(self, handle: Any) -> int | None:
        """Total-energy counter, or None on GPUs that lack it (pre-Volta, old drivers)."""
        nvml = self._nvml
        try:
            return int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
            return None

    def _power_mw(self) -> int:
        return sum(int(self._nvml.nvmlDeviceGetPowerUsage(h)) for h in self._power_handles)

    def _start_pollers(self, poll_interval_s: float | None) -> None:
        if self._integrator is not None:
            # Sampling must run regardless of poll_interval_s: it *is* the measurement.
            integrator = self._integrator

            def poll() -> None:
                integrator.sample()
                self.read()

            self._start_poller(self._sample_interval_s, poll)
        elif poll_interval_s is not None:
            self._start_poller(poll_interval_s, self.read)

    @property
    def update_period_s(self) -> float:
        periods = [self._counter_period_s] if self._counters else []
        if self._integrator is not None:
            periods.append(self._sample_interval_s)
        return max(periods)

    def _read_joules(self) -> float:
        nvml = self._nvml
        try:
            mj = sum(c.update(int(nvml.nvmlDeviceGetTotalEnergyConsumption(h)))
                     for h, c in self._counters)
        except nvml.NVMLError as e:
            raise MeterError(f"NVML read failed: {e}") from e
        integrated = self._integrator.joules if self._integrator is not None else 0.0
        return mj / 1000.0 + integrated

    def _close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            log.debug("nvmlShutdown failed", exc_info=True)


@dataclass(frozen=True)
class _RaplDomain:
    path: Path
    name: str
    max_range_uj: int


class RaplMeter(EnergyMeter):
    """CPU package + DRAM energy from Linux powercap (intel-rapl; AMD exposes it there too).

    Sums every top-level `package-*` domain and each one's `dram` subdomain. Core/uncore
    subdomains are already inside their package, and `psys` covers the whole platform, so they
    are left out to avoid double counting.

    The counters wrap at `max_energy_range_uj` (~262 kJ: minutes at a few hundred watts). A
    wrap is only detectable if the meter reads each domain at least once per wrap period, so a
    daemon thread reads it every `poll_interval_s` (default 2 s). Pass None only if something
    else calls read() often enough.

    Since Linux 5.10 `energy_uj` is readable only by root; unreadable files make the meter
    unavailable (MeterUnavailable) rather than silently reporting 0.
    """

    source = SOURCE_RAPL

    def __init__(
        self,
        root: str | Path = DEFAULT_RAPL_ROOT,
        *,
        poll_interval_s: float | None = 2.0,
        counter_period_s: float = RAPL_COUNTER_PERIOD_S,
        clock: Clock = time.monotonic,
        history_s: float = HISTORY_S,
    ) -> None:
        super().__init__(clock=clock, history_s=history_s)
        self._counter_period_s = counter_period_s
        try:
            self.domains = _discover_rapl(Path(root))
            self._counters = [
                _Counter(_read_uj(d.path / "energy_uj"), d.max_range_uj) for d in self.domains
            ]
        except (OSError, ValueError) as e:
            raise MeterUnavailable(f"RAPL not readable under {root}: {e}") from e
        log.debug("RAPL meter on %s", ", ".join(f"{d.path.name}({d.name})" for d in self.domains))
        self.read()  # first history sample, so short windows can interpolate sooner
        if poll_interval_s is not None:
            self._start_poller(poll_interval_s, self.read)

    @property
    def update_period_s(self) -> float:
        return self._counter_period_s

    def _read_joules(self) -> float:
        try:
            uj = sum(
                c.update(_read_uj(d.path / "energy_uj"))
                for d, c in zip(self.domains, self._counters, strict=True)
            )
        except (OSError, ValueError) as e:
            raise MeterError(f"RAPL read failed: {e}") from e
        return uj / 1e6


_PACKAGE_RE = re.compile(r"intel-rapl:(\d+)")
_SUBDOMAIN_RE = re.compile(r"intel-rapl:(\d+):(\d+)")


def _read_uj(path: Path) -> int:
    return int(path.read_text().strip())


def _discover_rapl(root: Path) -> list[_RaplDomain]:
    """Package domains and their DRAM subdomains. Raises OSError (ValueError for garbage in a
    counter file) when they can't be read."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist")
    packages = sorted(
        (p for p in root.iterdir() if _PACKAGE_RE.fullmatch(p.name)),
        key=lambda p: int(p.name.split(":")[1]),
    )
    domains: list[_RaplDomain] = []
    for pkg in packages:
        name = (pkg / "name").read_text().strip()
        if not name.startswith("package"):
            continue
        domains.append(_domain(pkg, name))
        # sysfs lists subdomains both beside the package (symlinks) and inside it; dedupe.
        subs = {
            p.name: p
            for p in [*root.iterdir(), *pkg.iterdir()]
            if (m := _SUBDOMAIN_RE.fullmatch(p.name)) and m.group(1) == pkg.name.split(":")[1]
        }
        for sub_name in sorted(subs, key=lambda n: int(n.rsplit(":", 1)[1])):
            sub = subs[sub_name]
            if (sub / "name").read_text().strip() == "dram":
                domains.append(_domain(sub, "dram"))
    if not domains:
        raise FileNotFoundError(f"no RAPL package domain under {root}")
    return domains


def _domain(path: Path, name: str) -> _RaplDomain:
    return _RaplDomain(path, name, _read_uj(path / "max_energy_range_uj"))


def detect_meter(
    prefer: str = "auto",
    *,
    rapl_root: str | Path = DEFAULT_RAPL_ROOT,
    nvml_devices: Sequence[int] | None = None,
) -> EnergyMeter:
    """The best available meter: NVML if it initialises and sees a GPU, else RAPL if readable
    package domains exist, else a NullMeter. Never raises for missing hardware.

    `prefer` "nvml" or "rapl" tries only that meter and falls back to NullMeter, not to the
    other one: GPU and CPU energy are different quantities and mustn't be swapped silently.
    `nvml_devices` selects GPUs by index (default: all).
    """
    if prefer not in PREFERENCES:
        raise ValueError(f"prefer must be one of {PREFERENCES}, got {prefer!r}")
    builders: dict[str, Callable[[], EnergyMeter]] = {
        "nvml": lambda: NvmlMeter(nvml_devices),
        "rapl": lambda: RaplMeter(rapl_root),
    }
    order = {"auto": ["nvml", "rapl"], "nvml": ["nvml"], "rapl": ["rapl"], "none": []}[prefer]
    reasons: list[str] = []
    for kind in order:
        try:
            meter = builders[kind]()
        except MeterUnavailable as e:
            reasons.append(f"{kind}: {e}")
            continue
        log.info("energy meter: %r", meter)
        return meter
    if prefer == "none":
        log.info("energy meter: none (disabled by configuration)")
    else:
        log.warning("energy meter: none, energy will be estimated (%s)", "; ".join(reasons))
    return NullMeter()


def share_by_tokens(joules: float, tokens: Mapping[str, int]) -> dict[str, float]:
    """Split one step's energy among participants in proportion to their tokens.

    Zero-token participants get exactly 0; if everyone has 0 tokens the split is equal. The
    shares add up to `joules` exactly, in any order and with plain `sum()`: each share is a
    whole number of ulp(joules) (a power of two), handed out by largest remainder, so every
    partial sum is representable. The price is a resolution of ~1e-16 relative, far below
    any meter's.
    """
    if not math.isfinite(joules):
        raise ValueError(f"joules must be finite, got {joules}")
    if any(n < 0 for n in tokens.values()):
        raise ValueError(f"token counts must be non-negative: {dict(tokens)}")
    if not tokens:
        return {}
    weights = dict(tokens) if sum(tokens.values()) > 0 else dict.fromkeys(tokens, 1)
    wsum = sum(weights.values())
    quantum = math.ulp(abs(joules))
    units = round(abs(joules) / quantum)  # exact: |joules| is a multiple of its own ulp
    counts = {k: units * w // wsum for k, w in weights.items()}
    leftover = units - sum(counts.values())
    by_remainder = sorted(weights, key=lambda k: units * weights[k] % wsum, reverse=True)
    for k in by_remainder[:leftover]:
        counts[k] += 1
    return {k: math.copysign(n * quantum, joules) if n else 0.0 for k, n in counts.items()}
