"""Energy meters. NVML is faked at pynvml's functions (the hardware boundary); RAPL runs against
a sysfs-shaped temporary tree. No GPU or RAPL access is needed."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

import telemetry.meters as meters_module
from telemetry.meters import (
    SOURCE_NONE,
    SOURCE_NVML,
    SOURCE_RAPL,
    EnergyMeter,
    EnergyWindow,
    MeterError,
    MeterUnavailable,
    NullMeter,
    NvmlMeter,
    RaplMeter,
    _PowerIntegrator,
    detect_meter,
    share_by_tokens,
)


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeGpus:
    """What pynvml would report for some GPUs: energy counters (mJ) or, when `energy_mj` is
    None for a device, NotSupported for the counter and a board power (mW)."""

    def __init__(self, energy_mj: list[int | None], power_mw: list[int] | None = None) -> None:
        self.energy_mj = energy_mj
        self.power_mw = power_mw or [0] * len(energy_mj)
        self.shutdowns = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeGpus:
        monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlShutdown", self._shutdown)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: len(self.energy_mj))
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", self._handle)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", self._energy)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", lambda h: self.power_mw[h])
        return self

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def _handle(self, index: int) -> int:
        if not 0 <= index < len(self.energy_mj):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def _energy(self, handle: int) -> int:
        value = self.energy_mj[handle]
        if value is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value


def wait_for(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Background threads get a deadline, not a fixed sleep, so a loaded machine doesn't flake."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the meter's thread"
        time.sleep(0.005)


def nvml_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)


@pytest.fixture
def meters() -> Iterator[list[EnergyMeter]]:
    """Collects meters so their threads stop even when a test fails."""
    made: list[EnergyMeter] = []
    yield made
    for m in made:
        m.close()


# --- NVML ---------------------------------------------------------------------------------


def test_nvml_energy_counter_deltas_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = FakeGpus([5_000_000]).install(monkeypatch)
    meter = NvmlMeter(poll_interval_s=None)
    assert meter.source == SOURCE_NVML
    assert meter.read() == 0.0
    gpus.energy_mj[0] += 1234
    assert meter.read() == 1.234
    gpus.energy_mj[0] += 766
    assert meter.read() == 2.0
    assert meter.update_period_s == pytest.approx(0.1)
    meter.close()
    meter.close()
    assert gpus.shutdowns == 1


def test_nvml_sums_devices_and_honours_selection(
    monkeypatch: pytest.MonkeyPatch, meters: list[EnergyMeter]
) -> None:
    gpus = FakeGpus([1_000, 50_000, 7]).install(monkeypatch)
    every = NvmlMeter(poll_interval_s=None)
    second = NvmlMeter([1], poll_interval_s=None)
    meters += [every, second]
    gpus.energy_mj = [1_500, 52_000, 10]
    assert every.read() == pytest.approx(2.503, abs=1e-12)
    assert second.read() == pytest.approx(2.0, abs=1e-12)
    assert second.device_indices == (1,)


def test_nvml_counter_reset_stays_monotonic(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = FakeGpus([9_000]).install(monkeypatch)
    with NvmlMeter(poll_interval_s=None) as meter:
        gpus.energy_mj[0] = 10_000
        assert meter.read() == 1.0
        gpus.energy_mj[0] = 300  # driver reload restarted the counter at 0
        assert meter.read() == 1.3


def test_nvml_power_sampling_thread_integrates_constant_power(
    monkeypatch: pytest.MonkeyPatch, meters: list[EnergyMeter]
) -> None:
    FakeGpus([None, None], power_mw=[100_000, 50_000]).install(monkeypatch)
    meter = NvmlMeter(sample_interval_s=0.01)
    meters.append(meter)
    assert meter.update_period_s == 0.01
    t0, j0 = meter.sample()
    time.sleep(0.25)
    t1, j1 = meter.sample()
    # The counter lags real time by up to one sample interval at each end (plus scheduling).
    assert j1 - j0 == pytest.approx(150.0 * (t1 - t0), rel=0.25)


def test_power_integrator_uses_trapezoid() -> None:
    clock = FakeClock(0.0)
    watts = iter([100_000, 200_000, 200_000])  # mW at t = 0, 1, 3
    integrator = _PowerIntegrator(lambda: next(watts), clock)
    clock.t = 1.0
    integrator.sample()
    clock.t = 3.0
    integrator.sample()
    assert integrator.joules == 150.0 + 400.0


def test_nvml_mixes_energy_counters_and_power_sampling(
    monkeypatch: pytest.MonkeyPatch, meters: list[EnergyMeter]
) -> None:
    gpus = FakeGpus([1_000, None], power_mw=[0, 80_000]).install(monkeypatch)
    meter = NvmlMeter(sample_interval_s=0.01, counter_period_s=0.1)
    meters.append(meter)
    assert meter.update_period_s == 0.1
    gpus.energy_mj[0] += 20_000
    started = time.monotonic()
    wait_for(lambda: meter.read() > 20.0)  # 20 J from the counter plus sampled 80 W
    assert meter.read() < 20.0 + 80 * (time.monotonic() - started + 0.05)


def test_nvml_unavailable_when_init_fails_or_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml_unavailable(monkeypatch)
    with pytest.raises(MeterUnavailable, match="did not initialise"):
        NvmlMeter()
    gpus = FakeGpus([]).install(monkeypatch)
    with pytest.raises(MeterUnavailable, match="no GPU"):
        NvmlMeter()
    assert gpus.shutdowns == 1  # init succeeded, so it is balanced by a shutdown


def test_nvml_unavailable_when_gpu_cannot_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = FakeGpus([None]).install(monkeypatch)

    def no_power(handle: int) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", no_power)
    with pytest.raises(MeterUnavailable):
        NvmlMeter()
    with pytest.raises(MeterUnavailable):
        NvmlMeter([3])  # no such GPU
    assert gpus.shutdowns == 2


def test_nvml_read_failure_is_a_meter_error(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = FakeGpus([0]).install(monkeypatch)
    with NvmlMeter(poll_interval_s=None) as meter:
        w = meter.window()

        def lost(handle: int) -> int:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

        monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", lost)
        with pytest.raises(MeterError):
            meter.read()
        assert w.stop() is None  # a failing meter never fails the request
    assert gpus.shutdowns == 1


def test_reads_are_thread_safe_and_monotonic(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(0, 3)
    FakeGpus([0]).install(monkeypatch)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", lambda h: next(ticks))
    meter = NvmlMeter(poll_interval_s=None)
    failures: list[str] = []

    def reader() -> None:
        last = -1.0
        for _ in range(300):
            value = meter.read()
            if value < last:
                failures.append(f"{value} < {last}")
            last = value

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    meter.close()
    assert failures == []


# --- RAPL ---------------------------------------------------------------------------------


def write_atomic(path: Path, value: int | str) -> None:
    # sysfs reads are atomic; a plain write_text could be seen half-done by the poll thread.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def make_domain(path: Path, name: str, energy_uj: int, max_uj: int = 10_000_000) -> Path:
    path.mkdir(parents=True)
    write_atomic(path / "name", name)
    write_atomic(path / "energy_uj", energy_uj)
    write_atomic(path / "max_energy_range_uj", max_uj)
    return path / "energy_uj"


@pytest.fixture
def rapl(tmp_path: Path) -> dict[str, Path]:
    """Two packages with DRAM, plus domains that must not be counted (core, psys). Like the
    kernel's tree, package 1's DRAM lives inside it and is also linked beside it."""
    root = tmp_path / "powercap"
    files = {
        "pkg0": make_domain(root / "intel-rapl:0", "package-0", 1_000_000),
        "dram0": make_domain(root / "intel-rapl:0:0", "dram", 20_000),
        "core0": make_domain(root / "intel-rapl:0:1", "core", 30_000),
        "pkg1": make_domain(root / "intel-rapl:1", "package-1", 2_000_000),
        "dram1": make_domain(root / "intel-rapl:1" / "intel-rapl:1:0", "dram", 40_000),
        "psys": make_domain(root / "intel-rapl:2", "psys", 5_000_000),
    }
    (root / "intel-rapl:1:0").symlink_to(root / "intel-rapl:1" / "intel-rapl:1:0")
    (root / "intel-rapl").mkdir()  # the control-type directory, not a domain
    return {"root": root, **files}


def bump(path: Path, by: int) -> None:
    write_atomic(path, int(path.read_text()) + by)


def test_rapl_sums_packages_and_dram_only(rapl: dict[str, Path]) -> None:
    with RaplMeter(rapl["root"], poll_interval_s=None) as meter:
        assert meter.source == SOURCE_RAPL
        assert [(d.path.name, d.name) for d in meter.domains] == [
            ("intel-rapl:0", "package-0"),
            ("intel-rapl:0:0", "dram"),
            ("intel-rapl:1", "package-1"),
            ("intel-rapl:1:0", "dram"),
        ]
        assert meter.read() == 0.0
        for key, by in [("pkg0", 1_000_000), ("dram0", 250_000), ("pkg1", 3_000_000),
                        ("dram1", 500_000), ("core0", 999_999), ("psys", 999_999)]:
            bump(rapl[key], by)
        assert meter.read() == 4.75


def test_rapl_wraparound_is_exact(rapl: dict[str, Path]) -> None:
    write_atomic(rapl["pkg0"], 9_999_000)
    with RaplMeter(rapl["root"], poll_interval_s=None) as meter:
        write_atomic(rapl["pkg0"], 500)  # wrapped at max_energy_range_uj = 10_000_000
        assert meter.read() == (10_000_000 - 9_999_000 + 500) / 1e6
        write_atomic(rapl["pkg0"], 2_500)
        assert meter.read() == 3_500 / 1e6


def test_rapl_poll_thread_catches_wraps_between_reads(
    rapl: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_read_uj = meters_module._read_uj

    def spy(path: Path) -> int:
        value = real_read_uj(path)
        if path == rapl["pkg0"]:
            seen.append(value)
        return value

    monkeypatch.setattr(meters_module, "_read_uj", spy)
    with RaplMeter(rapl["root"], poll_interval_s=0.01) as meter:
        # Two full wraps between the caller's reads: only the poller can see them.
        for value in (6_000_000, 1_000_000, 6_000_000, 1_000_000):
            write_atomic(rapl["pkg0"], value)
            wait_for(lambda v=value: seen[-1] == v)
        assert meter.read() == 20.0


def test_rapl_unavailable_when_unreadable(
    rapl: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root (as these tests may run) reads any file, so the denial is injected at the read.
    real_read_text = Path.read_text

    def guarded(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.parent.name == "intel-rapl:1:0" and self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", guarded)
    with pytest.raises(MeterUnavailable, match="Permission denied"):
        RaplMeter(rapl["root"], poll_interval_s=None)
    nvml_unavailable(monkeypatch)
    assert isinstance(detect_meter(rapl_root=rapl["root"]), NullMeter)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_rapl_unavailable_with_root_only_counters(rapl: dict[str, Path]) -> None:
    rapl["pkg1"].chmod(0o000)  # like Linux >= 5.10's root-only energy_uj, seen by non-root
    with pytest.raises(MeterUnavailable):
        RaplMeter(rapl["root"], poll_interval_s=None)


def test_rapl_unavailable_without_packages(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable):
        RaplMeter(tmp_path / "missing", poll_interval_s=None)
    make_domain(tmp_path / "intel-rapl:0", "psys", 0)
    with pytest.raises(MeterUnavailable, match="no RAPL package"):
        RaplMeter(tmp_path, poll_interval_s=None)


def test_rapl_read_failure_is_a_meter_error(rapl: dict[str, Path]) -> None:
    with RaplMeter(rapl["root"], poll_interval_s=None) as meter:
        rapl["pkg0"].unlink()
        with pytest.raises(MeterError):
            meter.read()


# --- null meter and detection ---------------------------------------------------------------


def test_null_meter_windows_are_not_measurements() -> None:
    meter = NullMeter()
    assert meter.source == SOURCE_NONE
    assert not meter.measures
    assert meter.read() == 0.0
    w = meter.window()
    assert w.stop() is None
    with meter.window() as w2:
        pass
    assert w2.result is None


def test_detect_falls_back_when_nvml_fails(
    rapl: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    meters: list[EnergyMeter],
) -> None:
    nvml_unavailable(monkeypatch)
    meters.append(detect_meter(rapl_root=rapl["root"]))
    assert isinstance(meters[-1], RaplMeter)
    # An explicit preference does not swap in a different kind of energy.
    assert isinstance(detect_meter("nvml", rapl_root=rapl["root"]), NullMeter)
    assert isinstance(detect_meter(rapl_root=tmp_path / "none"), NullMeter)


def test_detect_prefers_nvml_and_obeys_preference(
    rapl: dict[str, Path], monkeypatch: pytest.MonkeyPatch, meters: list[EnergyMeter]
) -> None:
    FakeGpus([0]).install(monkeypatch)
    meters.append(detect_meter(rapl_root=rapl["root"]))
    assert isinstance(meters[-1], NvmlMeter)
    meters.append(detect_meter("rapl", rapl_root=rapl["root"]))
    assert isinstance(meters[-1], RaplMeter)
    assert isinstance(detect_meter("none", rapl_root=rapl["root"]), NullMeter)
    with pytest.raises(ValueError):
        detect_meter("gpu")


def _machine_has_gpu() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


def _machine_has_rapl(root: Path = Path("/sys/class/powercap")) -> bool:
    for pkg in root.glob("intel-rapl:*"):
        try:
            if (pkg / "name").read_text().startswith("package"):
                int((pkg / "energy_uj").read_text())
                return True
        except (OSError, ValueError):
            continue
    return False


def test_detect_on_this_machine_matches_its_hardware() -> None:
    meter = detect_meter()
    try:
        if _machine_has_gpu():
            expected = SOURCE_NVML
        elif _machine_has_rapl():
            expected = SOURCE_RAPL
        else:
            expected = SOURCE_NONE
        assert meter.source == expected
    finally:
        meter.close()


def test_import_touches_no_hardware() -> None:
    code = "import sys, telemetry.meters; assert 'pynvml' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# --- windows --------------------------------------------------------------------------------


def clocked_rapl(root: Path, clock: FakeClock, period: float = 0.1) -> RaplMeter:
    return RaplMeter(root, poll_interval_s=None, counter_period_s=period, clock=clock)


def test_short_still_window_is_interpolated_from_average_power(rapl: dict[str, Path]) -> None:
    clock = FakeClock()
    with clocked_rapl(rapl["root"], clock) as meter:
        clock.t += 2.0
        bump(rapl["pkg0"], 200_000_000)  # 100 W over the last 2 s
        meter.read()
        w = meter.window()
        clock.t += 0.05  # half an update period; the counter does not move
        energy = w.stop()
    # Average power spans the whole history, the still window included: 200 J over 2.05 s.
    assert energy == EnergyWindow(joules=pytest.approx(200 / 2.05 * 0.05), source=SOURCE_RAPL,
                                  seconds=pytest.approx(0.05), interpolated=True)
    assert energy is not None and energy.joules > 0


def test_short_moved_window_is_interpolated_too(rapl: dict[str, Path]) -> None:
    # Keeping a whole refresh step here while estimating the still windows would over-count.
    clock = FakeClock()
    with clocked_rapl(rapl["root"], clock) as meter:
        clock.t += 2.0
        bump(rapl["pkg0"], 200_000_000)
        w = meter.window()
        clock.t += 0.01
        bump(rapl["pkg0"], 10_000_000)  # one 100 ms step landed inside a 10 ms window
        energy = w.stop()
    assert energy is not None and energy.interpolated
    assert energy.joules == pytest.approx(210.0 / 2.01 * 0.01)


def test_short_window_without_history(rapl: dict[str, Path]) -> None:
    clock = FakeClock()
    with clocked_rapl(rapl["root"], clock) as meter:
        w = meter.window()
        clock.t += 0.05
        assert w.stop() is None  # unknown, never a fake 0 J
        w = meter.window()
        clock.t += 0.05
        bump(rapl["pkg0"], 3_000_000)
        assert w.stop() == EnergyWindow(3.0, SOURCE_RAPL, pytest.approx(0.05), False)


def test_long_window_reports_the_counter_delta(rapl: dict[str, Path]) -> None:
    clock = FakeClock()
    with clocked_rapl(rapl["root"], clock) as meter:
        with meter.window() as w:
            clock.t += 0.5
            bump(rapl["dram0"], 1_250_000)
        assert w.result == EnergyWindow(1.25, SOURCE_RAPL, 0.5, False)
        assert w.stop() is w.result
        w = meter.window()
        clock.t += 0.5
        assert w.stop() == EnergyWindow(0.0, SOURCE_RAPL, 0.5, False)  # measured idle


def test_average_power_covers_only_recent_history(rapl: dict[str, Path]) -> None:
    clock = FakeClock()
    with clocked_rapl(rapl["root"], clock) as meter:
        for second in range(1, 16):
            clock.t += 1.0
            bump(rapl["pkg0"], 100_000_000 if second <= 10 else 300_000_000)
            meter.read()
        assert meter.average_power_w() == pytest.approx(300.0)


# --- sharing --------------------------------------------------------------------------------


def test_share_by_tokens_is_proportional_and_sums_exactly() -> None:
    shares = share_by_tokens(1.0, {"a": 1, "b": 1, "c": 1, "idle": 0})
    assert sum(shares.values()) == 1.0
    assert shares["idle"] == 0.0
    assert all(shares[k] == pytest.approx(1 / 3) for k in "abc")
    for joules in (0.1, 123.456, 7e-9, 98765.4321):
        tokens = {"x": 17, "y": 5, "z": 3, "w": 0}
        shares = share_by_tokens(joules, tokens)
        assert sum(shares.values()) == joules
        assert math.fsum(reversed(list(shares.values()))) == joules
        assert shares["x"] == pytest.approx(joules * 17 / 25)
        assert shares["w"] == 0.0


def test_share_by_tokens_edge_cases() -> None:
    assert share_by_tokens(9.0, {"a": 0, "b": 0, "c": 0}) == {"a": 3.0, "b": 3.0, "c": 3.0}
    assert share_by_tokens(5.0, {}) == {}
    assert share_by_tokens(0.0, {"a": 4}) == {"a": 0.0}
    with pytest.raises(ValueError):
        share_by_tokens(1.0, {"a": -1})
