"""Energy (measured or estimated, always labelled), cost, carbon, budgets, metrics and usage
reports. Imports only `store` (the decision table) and `extras` of ours; other packages import
these names from `telemetry`, not from its modules."""

from telemetry.budgets import (
    BudgetRule,
    Budgets,
    CounterStore,
    Exceeded,
    MemoryCounters,
    RedisCounters,
    period_bounds,
)
from telemetry.carbon import J_PER_KWH, CarbonIntensity
from telemetry.carbon_feed import CarbonFeed, CarbonFeedConfig, make_feed
from telemetry.cost import Prices, litellm_context_window, litellm_prices
from telemetry.energy import EnergyReading, estimate_from_declared, estimate_from_params
from telemetry.meters import EnergyMeter, MeterError, NullMeter, detect_meter, share_by_tokens
from telemetry.metrics import Metrics
from telemetry.reports import (
    GROUP_KEYS,
    SQLITE_PERCENTILE_RESOLUTION,
    ReportQuery,
    UsageReport,
    energy_saved_note,
    to_csv,
    usage_report,
)

__all__ = [
    "GROUP_KEYS",
    "J_PER_KWH",
    "SQLITE_PERCENTILE_RESOLUTION",
    "BudgetRule",
    "Budgets",
    "CarbonFeed",
    "CarbonFeedConfig",
    "CarbonIntensity",
    "CounterStore",
    "EnergyMeter",
    "EnergyReading",
    "Exceeded",
    "MemoryCounters",
    "MeterError",
    "Metrics",
    "NullMeter",
    "Prices",
    "RedisCounters",
    "ReportQuery",
    "UsageReport",
    "detect_meter",
    "energy_saved_note",
    "estimate_from_declared",
    "estimate_from_params",
    "litellm_context_window",
    "litellm_prices",
    "make_feed",
    "period_bounds",
    "share_by_tokens",
    "to_csv",
    "usage_report",
]
