"""Team policies: which members a team may use, how it weighs quality against energy and cost,
and rules for flagged requests. Pure logic; the gateway stores policies in SQL."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from routing.constraints import Constraint
from routing.router import Candidate


class Rule(BaseModel):
    """For requests carrying `flag` (e.g. "pii", "jailbreak"), pin the choice to `members` or
    exclude them."""

    model_config = ConfigDict(extra="forbid")
    flag: str = Field(min_length=1, max_length=64)
    action: Literal["pin", "exclude"]
    members: list[str] = Field(min_length=1)


class SafetyPolicy(BaseModel):
    """What to do with prompts carrying personal data or jailbreak attempts."""

    model_config = ConfigDict(extra="forbid")
    pii_action: Literal["allow", "redact", "block", "route"] = Field(
        "allow",
        description="redact: placeholders upstream, restored in the answer; "
        "route: only members tagged pii-safe.",
    )
    pii_kinds: list[str] | None = Field(None, description="Kinds to act on; null: all.")
    jailbreak_action: Literal["log", "block", "route"] = Field(
        "log", description="route: only members tagged hardened."
    )


class CachePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    max_temperature: float = Field(
        0.3,
        ge=0,
        le=2,
        description="Requests sampled hotter than this are never cached "
        "(an absent temperature counts as OpenAI's default, 1).",
    )
    allow_tools: bool = False
    semantic: Literal["strict", "balanced", "off"] = Field(
        "balanced", description="Semantic (similar-question) hits: balanced keeps wrong hits "
        "under 1% on held-out paraphrase pairs, strict under 0.25%, off serves exact hits only "
        "(routing/cache/verifier.py).")


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    allowed_members: list[str] | None = Field(
        None, description="Members 'auto' may choose; null means all the key allows."
    )
    lambda_: float = Field(
        0.4,
        alias="lambda",
        ge=0,
        le=1,
        description="Weight of energy against quality (GreenServ: 0.4).",
    )
    mu: float = Field(0.1, ge=0, le=1, description="Weight of cost.")
    max_cost_per_request_usd: float | None = Field(None, gt=0)
    min_quality: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Hard objective: the cheapest member whose predicted "
        "quality is at least this (0-1).",
    )
    max_cost_per_1k_usd: float | None = Field(
        None,
        gt=0,
        description="Hard objective: best predicted quality among members whose "
        "expected cost is at most this many dollars per 1,000 such requests.",
    )
    max_energy_j: float | None = Field(
        None,
        gt=0,
        description="Hard objective: best predicted quality among members whose "
        "expected energy is at most this many joules per request.",
    )
    latency_slo_ms: float | None = Field(
        None, gt=0, description="Members whose recent latency exceeds it are avoided."
    )
    exploration: bool = Field(True, description="Off: always the best current estimate.")
    fallback_order: list[str] = Field(
        default_factory=list, description="Tried in this order after the chosen member fails."
    )
    rules: list[Rule] = Field(default_factory=list)
    safety: SafetyPolicy = Field(default_factory=SafetyPolicy)
    cache: CachePolicy = Field(default_factory=CachePolicy)
    store_prompts: bool = Field(
        False, description="Keep prompts in full in the decision log (default: a hash)."
    )
    reference_member: str | None = Field(
        None,
        description="The team's most capable member, for the savings counterfactual; "
        "default: the most expensive member it may use.",
    )

    def to_json(self) -> dict:
        return self.model_dump(by_alias=True)

    def constraint(self) -> Constraint:
        return Constraint(self.min_quality, self.max_cost_per_1k_usd, self.max_energy_j)


class NoCandidate(Exception):
    """The policy leaves no member to serve the request; the message says why."""


def apply(
    policy: Policy,
    candidates: list[Candidate],
    flags: frozenset[str] = frozenset(),
) -> list[Candidate]:
    """The candidates the policy allows for this request, in their original order."""
    out = candidates
    if policy.allowed_members is not None:
        allowed = set(policy.allowed_members)
        out = [c for c in out if c.name in allowed]
        if not out:
            raise NoCandidate("the team policy allows none of the members this key may use")
    for rule in policy.rules:
        if rule.flag not in flags:
            continue
        chosen = set(rule.members)
        if rule.action == "pin":
            out = [c for c in out if c.name in chosen]
            if not out:
                raise NoCandidate(
                    f"requests flagged '{rule.flag}' are pinned to "
                    f"{', '.join(rule.members)}, and none of them is available"
                )
        else:
            out = [c for c in out if c.name not in chosen]
            if not out:
                raise NoCandidate(f"requests flagged '{rule.flag}' exclude every available member")
    if policy.max_cost_per_request_usd is not None:
        cap = policy.max_cost_per_request_usd
        within = [c for c in out if c.expected_cost_usd is None or c.expected_cost_usd <= cap]
        if not within:
            cheapest = min(c.expected_cost_usd or 0.0 for c in out)
            raise NoCandidate(
                f"every member's expected cost exceeds the policy's "
                f"${cap:.6f} per request (cheapest: ${cheapest:.6f})"
            )
        out = within
    if policy.latency_slo_ms is not None:
        slo = policy.latency_slo_ms
        fast = [c for c in out if c.latency_ms is None or c.latency_ms <= slo]
        # The SLO is soft: when nobody meets it, serving slowly beats not serving.
        out = fast or out
    return out


def impossible_constraint(
    policy: Policy, candidates: list[Candidate], ceiling: dict[str, float]
) -> tuple[str, str] | None:
    """(field, why) when no member the policy allows can ever meet its hard objective: the
    quality bar above every member's predicted ceiling, or a budget below what the cheapest
    (greenest) member spends on a one-token request. Candidates carry that minimal request's
    expected cost and energy; members whose figure is unknown cannot show they meet it."""
    allowed = [
        c for c in candidates if policy.allowed_members is None or c.name in policy.allowed_members
    ]
    if not allowed:
        return None
    if policy.min_quality is not None:
        top = max(ceiling.get(c.name, 1.0) for c in allowed)
        if policy.min_quality > top:
            return (
                "min_quality",
                f"min_quality {policy.min_quality:g} is above the highest "
                f"quality any allowed member is predicted to reach ({top:.3f})",
            )
    if policy.max_cost_per_1k_usd is not None:
        costs = [c.expected_cost_usd for c in allowed if c.expected_cost_usd is not None]
        if not costs or min(costs) * 1000 > policy.max_cost_per_1k_usd:
            low = f"${min(costs) * 1000:.6f}" if costs else "unknown"
            return (
                "max_cost_per_1k_usd",
                f"max_cost_per_1k_usd {policy.max_cost_per_1k_usd:g} "
                f"is below the cheapest allowed member's cost for 1,000 one-token requests "
                f"({low})",
            )
    if policy.max_energy_j is not None:
        joules = [c.expected_energy_j for c in allowed if c.expected_energy_j is not None]
        if not joules or min(joules) > policy.max_energy_j:
            low = f"{min(joules):.4f} J" if joules else "unknown"
            return (
                "max_energy_j",
                f"max_energy_j {policy.max_energy_j:g} is below the "
                f"greenest allowed member's energy for a one-token request ({low})",
            )
    return None


def with_fallback_order(policy: Policy, ranked: list[str]) -> list[str]:
    """The first choice, then the policy's fallback order, then the rest of the ranking."""
    if not ranked or not policy.fallback_order:
        return ranked
    head, rest = ranked[0], ranked[1:]
    order = [m for m in policy.fallback_order if m in rest]
    return [head, *order, *[m for m in rest if m not in order]]
