"""Why a decision served the member it did: each candidate's score split into its quality,
energy and cost terms, and one sentence a person can read. Pure; works on a decision's JSON."""

from __future__ import annotations

from typing import Any

from routing import RewardBounds

TERMS = ("quality", "energy", "cost")
ADVANTAGE = {"quality": "higher estimated quality",
             "energy": "lower expected energy (estimated)", "cost": "lower expected cost"}


def _terms(c: dict[str, Any], lam: float, mu: float, bounds: RewardBounds) -> dict[str, float]:
    # The bandit router's objective (routing/reward.py), on what the bandit ranked by.
    q = float(c.get("quality_estimate") or 0.0) + float(c.get("bonus") or 0.0)
    return {
        "quality": (1.0 - lam) * q,
        "energy": -lam * bounds.energy_norm(c.get("expected_energy_j")),
        "cost": -mu * bounds.cost_norm(c.get("expected_cost_usd")),
    }


def _failover(d: dict[str, Any], first: str | None) -> str | None:
    served = d.get("served_member")
    if first is None or served is None or served == first:
        return None
    return (f"{first} ranked first but failed, so the request fell over to {served} "
            "(see the attempts).")


def explain(d: dict[str, Any], bounds: RewardBounds) -> dict[str, Any]:
    """{"sentence", "candidates": [{member, score, terms}], "deciding_term"}."""
    reason = d.get("route_reason") or ""
    cands: list[dict[str, Any]] = list(d.get("candidates") or [])
    served = d.get("served_member")
    out: dict[str, Any] = {"sentence": "", "candidates": [], "deciding_term": None}
    if reason.startswith("cache:"):
        out["sentence"] = (f"Answered from the semantic cache ({reason[6:]} hit): no member "
                           "was called.")
        return out
    if not reason.startswith("auto:"):
        model = d.get("requested_model")
        out["sentence"] = (f"The client asked for {model!r} by name, so no ranking took place."
                           if model else "The request was refused before routing.")
        if d.get("status") not in (200, None) and served is None:
            out["sentence"] += f" It ended with status {d.get('status')}."
        return out
    first = cands[0]["member"] if cands else None
    if reason == "auto:cheapest" or not cands or "quality_estimate" not in cands[0]:
        out["sentence"] = (f"{first} was the cheapest healthy member by blended price "
                           "(input plus output per 1M tokens)." if first else
                           "No candidate was recorded.")
        if fo := _failover(d, first):
            out["sentence"] += " " + fo
        return out

    pol = (d.get("features") or {}).get("policy") or {}
    lam, mu = float(pol.get("lambda", 0.4)), float(pol.get("mu", 0.1))
    for c in cands:
        out["candidates"].append({"member": c["member"], "score": float(c.get("score") or 0),
                                  "terms": _terms(c, lam, mu, bounds)})
    win = out["candidates"][0]
    weights = f"lambda {lam:g}, mu {mu:g}"
    if len(cands) == 1:
        out["sentence"] = (f"{first} was the only member the key and the team policy allow "
                           f"for this request ({weights}).")
    elif cands[0].get("explored"):
        out["sentence"] = (f"{first} was picked to explore: the bandit tries members it knows "
                           "less about now and then, whatever their score.")
    else:
        ru = out["candidates"][1]
        diff = {t: win["terms"][t] - ru["terms"][t] for t in TERMS}
        deciding = max(diff, key=lambda t: diff[t])
        out["deciding_term"] = deciding
        lost = [ADVANTAGE[t] for t in TERMS if diff[t] < 0]
        why = (f"its {ADVANTAGE[deciding]} outweighed {ru['member']}'s {' and '.join(lost)}"
               if lost else f"its {ADVANTAGE[deciding]} decided it, and it was no worse on "
               "the other terms")
        out["sentence"] = (f"{first} had the highest score, {win['score']:.4f} against "
                           f"{ru['score']:.4f} for {ru['member']} ({weights}): {why}.")
    if fo := _failover(d, first):
        out["sentence"] += " " + fo
    return out
