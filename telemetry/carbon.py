"""Grams of CO2-equivalent for a given energy: energy x grid carbon intensity of the region
where the member runs. The default intensity is the world average of 2023, 480 gCO2e/kWh
(Ember, Global Electricity Review 2024); set per-region figures in the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

WORLD_AVERAGE_G_PER_KWH = 480.0
J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class CarbonIntensity:
    default_g_per_kwh: float = WORLD_AVERAGE_G_PER_KWH
    regions: dict[str, float] = field(default_factory=dict)

    def g_per_kwh(self, region: str | None) -> float:
        if region is not None and region in self.regions:
            return self.regions[region]
        return self.default_g_per_kwh

    def gco2e(self, joules: float | None, region: str | None) -> float | None:
        if joules is None:
            return None
        return joules / J_PER_KWH * self.g_per_kwh(region)
