"""The learned quality prior and hard objectives inside the running gateway: priors for
members without history, impossible constraints refused when the policy is saved, unmet ones
falling back at request time (decision row and header), residual feedback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, GatewayFactory


@pytest.fixture(scope="module")
def extractor() -> Iterator[Any]:
    from routing.features import FeatureExtractor

    yield FeatureExtractor.default(3)


def member(name: str, url: str, price: float = 1.0, j_per_token: float = 0.3,
           **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "openai", "model": extra.pop("model", f"up-{name}"),
            "base_url": url, "price": {"input_per_1m": price, "output_per_1m": price},
            "energy": {"j_per_token": j_per_token, "source": "test"}, **extra}


def pool(url: str) -> list[dict[str, Any]]:
    return [member("cheap", url, price=0.1, model="mistralai/mistral-7b-chat"),
            member("strong", url, price=30.0, j_per_token=3.0, model="gpt-4-1106-preview"),
            member("newcomer", url, price=0.5, like="strong"),
            member("declared", url, price=0.5, quality={"mbpp": 0.9, "mmlu": 0.4})]


def put(gw: Gateway, team: str, **policy: Any) -> httpx.Response:
    return httpx.put(f"{gw.url}/admin/policies/{team}", json=policy, headers=gw.headers(),
                     timeout=10)


def ask(gw: Gateway, text: str) -> httpx.Response:
    r = gw.post("/v1/chat/completions", {"model": "auto", "max_tokens": 64,
                                         "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r


CODE = "Write a Python function that returns the n-th Fibonacci number."


def test_members_without_history_get_a_named_prior(
    make_gateway: GatewayFactory, extractor: Any, fake_url: str
) -> None:
    gw = make_gateway(pool(fake_url), router="bandit", extractor=extractor)
    assert put(gw, "default", exploration=False, mu=0.0, **{"lambda": 0.0}).status_code == 200
    r = ask(gw, CODE)
    cands = {c["member"]: c for c in gw.decision(r.headers["x-request-id"])["candidates"]}
    assert cands["newcomer"]["prior"] == "like:strong"
    # like: takes the member's per-request prediction, with a wider uncertainty.
    assert cands["newcomer"]["prior_mean"] == pytest.approx(cands["strong"]["prior_mean"])
    assert cands["newcomer"]["prior_sigma"] > cands["strong"]["prior_sigma"]
    # Declared scores: a code prompt takes the code benchmark's score.
    assert cands["declared"]["prior"] == "declared"
    assert cands["declared"]["prior_mean"] == pytest.approx(0.9)


def test_impossible_constraints_are_refused_naming_the_field(
    make_gateway: GatewayFactory, extractor: Any, fake_url: str
) -> None:
    gw = make_gateway(pool(fake_url), router="bandit", extractor=extractor)
    # A declared 0.9 might reach 0.999 (its uncertainty allows it): judged without it.
    only = {"allowed_members": ["cheap", "strong", "newcomer"]}
    for body, field in (({"min_quality": 0.999, **only}, "min_quality"),
                        ({"max_cost_per_1k_usd": 1e-9}, "max_cost_per_1k_usd"),
                        ({"max_energy_j": 1e-6}, "max_energy_j")):
        r = put(gw, "t", **body)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["param"] == field and err["code"] == "impossible_constraint"
        assert field in err["message"]
    # Out of range is a schema error, also naming the field.
    r = put(gw, "t", min_quality=1.5)
    assert r.status_code in (400, 422) and "min_quality" in r.text
    assert put(gw, "t", min_quality=0.5).status_code == 200


def test_min_quality_picks_the_cheapest_that_clears_the_bar(
    make_gateway: GatewayFactory, extractor: Any, fake_url: str
) -> None:
    gw = make_gateway(pool(fake_url), router="bandit", extractor=extractor)
    assert put(gw, "default", exploration=False, min_quality=0.05).status_code == 200
    r = ask(gw, CODE)
    assert r.headers["x-greengate-member"] == "cheap"  # everyone clears 0.05: the cheapest
    assert r.headers["x-greengate-constraint"] == "met"
    row = gw.decision(r.headers["x-request-id"])
    assert row["features"]["constraint"]["met"] is True


def test_unmet_constraint_falls_back_to_best_quality_and_says_so(
    make_gateway: GatewayFactory, extractor: Any, fake_url: str
) -> None:
    gw = make_gateway(pool(fake_url), router="bandit", extractor=extractor)
    # Possible for a one-token request, not for this one: the request is served anyway.
    assert put(gw, "default", exploration=False,
               max_cost_per_1k_usd=0.0002).status_code == 200
    r = ask(gw, CODE)
    assert r.headers["x-greengate-constraint"].startswith("unmet")
    row = gw.decision(r.headers["x-request-id"])
    c = row["features"]["constraint"]
    assert c["met"] is False and c["feasible"] == [] and "fell back" in c["note"]
    cands = {x["member"]: x for x in row["candidates"]}
    best = max(cands, key=lambda m: cands[m]["quality_estimate"])
    assert row["served_member"] == best == c["chosen"]


def test_feedback_teaches_the_residual_over_the_prior(
    make_gateway: GatewayFactory, extractor: Any, fake_url: str
) -> None:
    gw = make_gateway(pool(fake_url), router="bandit", extractor=extractor)
    assert put(gw, "default", exploration=False, mu=0.0, **{"lambda": 0.0}).status_code == 200
    first = ask(gw, CODE)
    member_ = first.headers["x-greengate-member"]
    before = {c["member"]: c for c in gw.decision(first.headers["x-request-id"])["candidates"]}
    for _ in range(5):
        r = ask(gw, CODE)
        if r.headers["x-greengate-member"] != member_:
            break
        fb = gw.post("/v1/feedback", {"request_id": r.headers["x-request-id"], "score": 0.0})
        assert fb.status_code == 200 and fb.json()["applied_to_bandit"]
    after = ask(gw, CODE)
    cands = {c["member"]: c for c in gw.decision(after.headers["x-request-id"])["candidates"]}
    # Same prior mean, lower estimate: the bandit learned that this member does worse here.
    assert cands[member_]["prior_mean"] == pytest.approx(before[member_]["prior_mean"])
    assert cands[member_]["quality_estimate"] < before[member_]["quality_estimate"] - 0.05
