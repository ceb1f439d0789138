"""Everything that feeds the routing decision, from the request alone: features (embedding,
task, cluster, complexity), safety (`routing.safety`), the semantic cache (`routing.cache`),
team policies, the routers and their rewards, and token counting. Imports `bandits` and
`telemetry`, never the gateway.

Other packages import these names from `routing` (the cache's and safety's own names from
`routing.cache` and `routing.safety`). Importing it loads no torch: the MiniLM models load
when a gateway starts them. Training lives in train/ and may use the modules directly."""

from routing import complexity, tokens
from routing.bandit_router import BanditRouter, residual_reward
from routing.features import FeatureExtractor, QueryFeatures, content_text, request_text
from routing.outcomes import Outcome, load_outcomes
from routing.policy import (
    CachePolicy,
    NoCandidate,
    Policy,
    apply,
    impossible_constraint,
    with_fallback_order,
)
from routing.priors import SHIPPED as SHIPPED_PRIORS
from routing.priors import fit_priors, load_priors, save_priors
from routing.quality_prior import MemberPriorSpec, QualityPrior, arm_prior, load_bundle
from routing.reward import RewardBounds, reward
from routing.router import Candidate, CheapestRouter, Ranked, Router, RouteRequest
from routing.routers import ROUTER_TYPES, router_class, router_names

__all__ = [
    "ROUTER_TYPES",
    "SHIPPED_PRIORS",
    "BanditRouter",
    "CachePolicy",
    "Candidate",
    "CheapestRouter",
    "FeatureExtractor",
    "MemberPriorSpec",
    "NoCandidate",
    "Outcome",
    "Policy",
    "QualityPrior",
    "QueryFeatures",
    "Ranked",
    "RewardBounds",
    "RouteRequest",
    "Router",
    "apply",
    "arm_prior",
    "complexity",
    "content_text",
    "fit_priors",
    "impossible_constraint",
    "load_bundle",
    "load_outcomes",
    "load_priors",
    "request_text",
    "residual_reward",
    "reward",
    "router_class",
    "router_names",
    "save_priors",
    "tokens",
    "with_fallback_order",
]
