"""Energy attributed to a call. Every figure carries its source: measured or estimated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnergyReading:
    joules: float
    source: str  # "measured:nvml", "measured:rapl" or "estimated:<method>"


def estimate_from_declared(
    j_per_output_token: float | None,
    j_per_input_token: float | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> EnergyReading | None:
    """Estimate from a J/token figure the pool file declares for the member."""
    if j_per_output_token is None:
        return None
    joules = completion_tokens * j_per_output_token + prompt_tokens * (j_per_input_token or 0.0)
    return EnergyReading(joules=joules, source="estimated:declared-j-per-token")


def estimate_from_params(
    active_params_b: float | None, total_params_b: float | None, completion_tokens: int
) -> EnergyReading | None:
    """Estimate from model size with the ML.ENERGY fit. The measured J/token figures are a
    request's whole energy over its output tokens, so prefill is already folded in."""
    if active_params_b is None:
        return None
    from telemetry.estimator import METHOD, shipped_fit

    per_token = shipped_fit().j_per_output_token(active_params_b, total_params_b)
    return EnergyReading(joules=completion_tokens * per_token, source=f"estimated:{METHOD}")
