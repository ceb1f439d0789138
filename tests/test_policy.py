"""Team policies, the reward and the bandit router's ranking: pure logic, tested directly."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from bandits import make_bandit
from routing.bandit_router import BanditRouter
from routing.policy import NoCandidate, Policy, Rule, apply, with_fallback_order
from routing.reward import RewardBounds, reward
from routing.router import Candidate, RouteRequest


def cand(name: str, cost: float | None = 0.001, energy: float | None = 10.0,
         latency: float | None = None, healthy: bool = True) -> Candidate:
    return Candidate(name=name, input_per_1m=1, output_per_1m=1, healthy=healthy,
                     expected_cost_usd=cost, expected_energy_j=energy, latency_ms=latency)


POOL = [cand("local", 0.0001, 5), cand("mid", 0.001, 50), cand("big", 0.01, 400)]


def names(cs: list[Candidate]) -> list[str]:
    return [c.name for c in cs]


def test_defaults_follow_greenserv() -> None:
    p = Policy()
    assert p.lambda_ == 0.4 and p.exploration
    assert Policy.model_validate({"lambda": 0.7}).to_json()["lambda"] == 0.7


def test_policy_validation() -> None:
    with pytest.raises(ValidationError):
        Policy.model_validate({"lambda": 1.5})
    with pytest.raises(ValidationError):
        Policy.model_validate({"colour": "green"})
    with pytest.raises(ValidationError):
        Rule(flag="pii", action="route", members=["local"])


def test_allowed_members() -> None:
    assert names(apply(Policy(allowed_members=["big", "local"]), POOL)) == ["local", "big"]
    with pytest.raises(NoCandidate):
        apply(Policy(allowed_members=["elsewhere"]), POOL)


def test_rules_pin_and_exclude_only_for_flagged_requests() -> None:
    p = Policy(rules=[Rule(flag="pii", action="pin", members=["local"]),
                      Rule(flag="jailbreak", action="exclude", members=["big"])])
    assert names(apply(p, POOL)) == ["local", "mid", "big"]
    assert names(apply(p, POOL, frozenset({"pii"}))) == ["local"]
    assert names(apply(p, POOL, frozenset({"jailbreak"}))) == ["local", "mid"]
    with pytest.raises(NoCandidate, match="pinned"):
        apply(Policy(rules=[Rule(flag="pii", action="pin", members=["gone"])]), POOL,
              frozenset({"pii"}))


def test_max_cost_and_latency_slo() -> None:
    assert names(apply(Policy(max_cost_per_request_usd=0.002), POOL)) == ["local", "mid"]
    with pytest.raises(NoCandidate, match="expected cost"):
        apply(Policy(max_cost_per_request_usd=0.00001), POOL)
    slow = [cand("a", latency=900), cand("b", latency=100), cand("c", latency=None)]
    assert names(apply(Policy(latency_slo_ms=500), slow)) == ["b", "c"]
    # Soft: if nobody meets it, everyone stays.
    assert names(apply(Policy(latency_slo_ms=10), slow[:1])) == ["a"]


def test_fallback_order() -> None:
    p = Policy(fallback_order=["local", "big"])
    assert with_fallback_order(p, ["mid", "big", "x", "local"]) == ["mid", "local", "big", "x"]
    assert with_fallback_order(Policy(), ["a", "b"]) == ["a", "b"]


def test_reward_formula_and_bounds() -> None:
    b = RewardBounds(energy_max_j=100, cost_max_usd=0.01)
    assert reward(1.0, 0, 0, 0.4, 0.1, b) == pytest.approx(0.6)
    assert reward(1.0, 50, 0.005, 0.4, 0.1, b) == pytest.approx(0.6 - 0.2 - 0.05)
    assert reward(0.5, 1e9, 1e9, 0.4, 0.1, b) == pytest.approx(0.3 - 0.4 - 0.1)  # clipped at 1
    assert b.energy_norm(None) == 0.0


def test_bandit_router_trades_quality_against_energy() -> None:
    dim = 4
    bandit = make_bandit("linucb", dim, alpha=0.0)
    x = np.array([1.0, 0.0, 1.0, 0.0])
    for _ in range(50):  # "big" answers well, "local" poorly
        bandit.update(x, "big", 1.0)
        bandit.update(x, "local", 0.3)
    router = BanditRouter(bandit, RewardBounds(energy_max_j=500, cost_max_usd=0.01))
    pool = [cand("local", 0.0001, 5), cand("big", 0.002, 400)]

    def top(lam: float) -> str:
        req = RouteRequest("chat/completions", {}, "t", context=x, lambda_=lam, mu=0.0,
                           explore=False)
        return router.rank(req, pool)[0].name

    assert top(0.0) == "big"  # quality only
    assert top(0.9) == "local"  # energy dominates
    ranked = router.rank(RouteRequest("chat/completions", {}, "t", context=x, lambda_=0.4,
                                      mu=0.1, explore=False), pool)
    d = {r.name: r.detail for r in ranked}
    assert d["big"]["quality_estimate"] == pytest.approx(1.0, abs=0.05)
    assert d["big"]["expected_energy_j"] == 400 and d["big"]["bonus"] == 0


def test_bandit_router_imputes_unknown_energy_as_worst() -> None:
    bandit = make_bandit("linucb", 2, alpha=0.0)
    router = BanditRouter(bandit, RewardBounds(energy_max_j=100, cost_max_usd=1))
    ranked = router.rank(
        RouteRequest("chat/completions", {}, None, context=np.ones(2), lambda_=0.5, mu=0,
                     explore=False),
        [cand("unknown", 0, None), cand("known", 0, 80)])
    d = {r.name: r.detail for r in ranked}
    assert d["unknown"]["energy_imputed"] and d["unknown"]["expected_energy_j"] == 80
    assert ranked[0].name == "known"  # a tie never goes to the member with missing data


def test_epsilon_greedy_exploration_is_honoured_by_the_router() -> None:
    bandit = make_bandit("egreedy", 2, epsilon0=1.0, seed=3)  # cold: always exploring
    router = BanditRouter(bandit, RewardBounds(energy_max_j=100, cost_max_usd=0.01))
    pool = [cand("cheap", 0.0001, 1), cand("pricey", 0.009, 90)]
    req = RouteRequest("chat/completions", {}, None, context=np.ones(2), lambda_=0.8, mu=0.1)
    tops = {router.rank(req, pool)[0].name for _ in range(40)}
    assert tops == {"cheap", "pricey"}  # the penalised member is still explored
    off = RouteRequest("chat/completions", {}, None, context=np.ones(2), lambda_=0.8, mu=0.1,
                       explore=False)
    assert {router.rank(off, pool)[0].name for _ in range(10)} == {"cheap"}
