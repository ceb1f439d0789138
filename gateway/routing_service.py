"""Routing for model 'auto': features, team policy, candidates with their expected energy and
cost, the router's ranking; and learning from feedback, with the bandit kept in SQL."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bandits import Bandit
from gateway.auth import Principal
from gateway.bandit_store import BanditStore
from gateway.errors import GatewayError
from gateway.policies import PolicyStore
from gateway.pool import Pool, PoolMember
from gateway.settings import Settings
from routing import (
    Candidate,
    CheapestRouter,
    MemberPriorSpec,
    NoCandidate,
    Policy,
    RewardBounds,
    Router,
    RouteRequest,
    apply,
    arm_prior,
    impossible_constraint,
    residual_reward,
    reward,
    tokens,
    with_fallback_order,
)
from store import Decision, Feedback, clean_text

log = logging.getLogger("greengate.routing")

BANDIT_NAME = "global"
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Expected completion length when the request sets no max_tokens.
OUTPUT_TOKENS = {"short": 64, "medium": 256, "long": 1024}


@dataclass
class Analysis:
    policy: Policy
    features: dict[str, Any]  # the decision row's JSON
    query: Any | None = None  # routing.features.QueryFeatures
    embedding: np.ndarray | None = None
    text: str = ""  # what was embedded
    context: np.ndarray | None = None
    flags: set[str] = field(default_factory=set)


@dataclass
class AutoPlan:
    members: list[PoolMember]
    reason: str
    candidates: list[dict[str, Any]]
    features: dict[str, Any] | None = field(default=None)
    reference: PoolMember | None = None  # the counterfactual: the team's most capable member


class RoutingService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        pool: Pool,
        router: Router,
        policies: PolicyStore,
        extractor: Any | None = None,
        bandit: Bandit | None = None,
        owns_extractor: bool = True,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.pool = pool
        self.router = router
        self.policies = policies
        self.extractor = extractor
        self._owns_extractor = owns_extractor  # a shared one (tests) is closed by its owner
        self.bandit = bandit
        self.bounds = RewardBounds(settings.reward_energy_max_j, settings.reward_cost_max_usd)
        self._plain = CheapestRouter.create()
        self.bandit_name = BANDIT_NAME  # runtime names it after the quality prior in use
        self.quality_prior: Any | None = None  # routing.quality_prior.QualityPrior
        self._store = BanditStore(engine)
        self._updates = 0
        self._saved_updates = 0
        self._saver: asyncio.Task | None = None
        # Told of each update feedback makes (replicas publish it: gateway.replicas).
        self.on_update: Callable[[str, list[float], str, float], Awaitable[None]] | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self.bandit is not None:
            self._saver = asyncio.create_task(self._save_loop(), name="bandit-saver")

    async def stop(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        await self.save()
        if self.extractor is not None and self._owns_extractor:
            await self.extractor.aclose()

    async def save(self) -> None:
        if self.bandit is None or self._updates == self._saved_updates:
            return
        updates = self._updates
        await asyncio.to_thread(self._store.save, self.bandit_name, self.bandit.state(), updates)
        self._saved_updates = updates

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.bandit_save_interval_s)
            try:
                await self.save()
            except Exception:  # the next tick or shutdown tries again
                log.exception("saving bandit state failed")

    # ---- planning ----------------------------------------------------------------------
    def _expected(self, m: PoolMember, prompt_tokens: int, output_tokens: int) -> Candidate:
        c = m.candidate()
        energy = m.energy(prompt_tokens, output_tokens)
        return Candidate(
            name=c.name, input_per_1m=c.input_per_1m, output_per_1m=c.output_per_1m,
            healthy=c.healthy, context_window=c.context_window, tags=c.tags,
            expected_cost_usd=m.cost(prompt_tokens, output_tokens),
            expected_energy_j=energy.joules if energy else None,
            latency_ms=m.latency_ewma_ms,
        )

    async def analyse(
        self, principal: Principal, endpoint: str, body: dict,
        want_embedding: Callable[[Policy], bool] | None = None,
    ) -> Analysis:
        """Everything later stages need to know about the request, computed once: the team's
        policy and, when routing, safety or the cache need them, the query features and the
        one embedding they share."""
        t0 = time.perf_counter()
        policy = await self.policies.for_team(principal.team)
        a = Analysis(policy=policy, features={
            "policy": {"lambda": policy.lambda_, "mu": policy.mu,
                       "exploration": policy.exploration}, "flags": []})
        routed = body.get("model") == "auto" and self.router.needs_features
        if endpoint != "embeddings" and self.extractor is not None and (
                routed or (want_embedding is not None and want_embedding(policy))):
            t_features = time.perf_counter()
            qf, emb, text = await self.extractor.analyse(
                body, budget_ms=self.settings.features_budget_ms)
            a.features["features_ms"] = round((time.perf_counter() - t_features) * 1000, 3)
            a.query, a.embedding, a.text = qf, emb, text
            a.context = self.extractor.vector(qf)
            a.features["query"] = qf.to_json()
            a.features["context"] = [round(float(v), 6) for v in a.context]
        a.features["analyse_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return a

    async def plan_auto(
        self, principal: Principal, endpoint: str, body: dict, members: list[PoolMember],
        analysis: Analysis,
    ) -> AutoPlan:
        t0 = time.perf_counter()
        policy, features, context = analysis.policy, analysis.features, analysis.context
        flags = frozenset(analysis.flags)
        if analysis.query is not None:
            prompt_tokens = analysis.query.prompt_tokens
            output_class = analysis.query.output_class
        else:
            prompt_tokens = tokens.prompt_tokens(endpoint, body)
            output_class = "medium"
        max_out = body.get("max_completion_tokens") or body.get("max_tokens")
        out_tokens = int(max_out) if max_out else OUTPUT_TOKENS.get(output_class, 256)

        fits = [m for m in members if m.context_window is None
                or m.context_window >= prompt_tokens + (int(max_out) if max_out else 0)]
        if not fits:
            raise GatewayError(400, f"The prompt ({prompt_tokens} tokens) does not fit the "
                               "context window of any member this key may use.",
                               param="messages", code="context_length_exceeded")
        try:
            allowed = apply(policy, [self._expected(m, prompt_tokens, out_tokens) for m in fits],
                            flags)
        except NoCandidate as e:
            raise GatewayError(403, f"No member can serve this request: {e}.",
                               code="policy_no_candidate") from None
        # Without features (embeddings, or no extractor) a feature-based router cannot rank.
        router = self.router if context is not None or not self.router.needs_features else (
            self._plain)
        ranked = router.rank(
            RouteRequest(endpoint=endpoint, body=body, team=principal.team,
                         features=features.get("query", {}), context=context,
                         lambda_=policy.lambda_, mu=policy.mu, explore=policy.exploration,
                         embedding=analysis.embedding, constraint=policy.constraint()),
            allowed,
        )
        if ranked and "constraint" in ranked[0].detail:
            features["constraint"] = ranked[0].detail["constraint"]
        order = with_fallback_order(policy, [r.name for r in ranked])
        features["route_ms"] = round(
            (time.perf_counter() - t0) * 1000 + features.get("analyse_ms", 0.0), 3)
        by_name = {m.name: m for m in fits}
        return AutoPlan(
            reference=self._reference(policy, fits),
            members=[by_name[n] for n in order],
            reason=f"auto:{router.name}",
            candidates=[{"member": r.name, "score": round(r.score, 6), **r.detail}
                        for r in ranked],
            features=features,
        )

    def add_member(self, m: PoolMember, like: str, gain: float | None) -> None:
        """A member that joined while serving (a fine-tuned adapter of `like`): its quality
        prior is its base's, widened as for like:, and moved by `gain` (the validation loss
        against the base's); the bandit gets its arm before `auto` first ranks it."""
        prior = self.quality_prior
        if prior is not None:
            base = prior.specs.get(like)
            prior.specs[m.name] = MemberPriorSpec(
                model=m.name, like=like, gain=gain, params_b=base.params_b if base else None)
        if self.bandit is None or self.extractor is None or m.name in self.bandit.arms:
            return
        arm = None
        if prior is not None:
            e = prior.estimate([m.name], None, None)[m.name]
            dim = self.extractor.dim
            arm = arm_prior(e.sigma, e.noise, dim, dim / 4.0)  # as at start-up (runtime)
        self.bandit.add_arm(m.name, arm)

    def constraint_problem(self, policy: Policy) -> tuple[str, str] | None:
        """(field, why) when the policy's hard objective can never be met by the members it
        allows: checked when the policy is saved."""
        if policy.constraint().active is False:
            return None
        members = [m for m in self.pool.members.values() if m.cfg.mode == "chat"]
        cands = [self._expected(m, 1, 1) for m in members]
        prior = self.quality_prior
        ceiling = {m.name: prior.ceiling(m.name) for m in members} if prior is not None else {}
        return impossible_constraint(policy, cands, ceiling)

    @staticmethod
    def _reference(policy: Policy, members: list[PoolMember]) -> PoolMember | None:
        usable = [m for m in members if policy.allowed_members is None
                  or m.name in policy.allowed_members]
        named = [m for m in usable if m.name == policy.reference_member]
        if named:
            return named[0]
        priced = [(m.prices.input_per_1m + m.prices.output_per_1m, m.name, m)
                  for m in usable if m.prices is not None]
        return max(priced, key=lambda t: t[:2])[2] if priced else None

    # ---- feedback ----------------------------------------------------------------------
    def _decision(self, rid: str) -> Decision | None:
        with Session(self.engine) as s:
            return s.get(Decision, rid)

    async def _wait_decision(self, rid: str,
                             pending: Callable[[str], bool] | None) -> Decision | None:
        """The decision row, waiting only while this replica still holds it in its write
        queue: an unknown id is answered at once, without holding a worker."""
        if not _REQUEST_ID.fullmatch(rid):
            return None  # no request id looks like this: the database need not be asked
        deadline = time.monotonic() + max(2.0, 4 * self.settings.log_flush_interval_s)
        while True:
            # Asked before the lookup: a row written between the lookup and the question would
            # otherwise be neither found nor pending, and its feedback answered 404.
            queued = pending is not None and pending(rid)
            d = await asyncio.to_thread(self._decision, rid)
            if d is not None or not queued or time.monotonic() > deadline:
                return d
            await asyncio.sleep(0.05)

    def _insert_feedback(self, fb: Feedback) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(fb)

    async def feedback(self, principal: Principal, rid: str, score: float,
                       comment: str | None,
                       pending: Callable[[str], bool] | None = None) -> dict[str, Any]:
        d = await self._wait_decision(rid, pending)
        if d is None or (not principal.is_admin and d.team != principal.team):
            raise GatewayError(404, f"No request '{rid}' for this key's team.",
                               param="request_id", code="request_not_found")
        if d.status != 200 or d.served_member is None:
            raise GatewayError(409, f"Request '{rid}' was not served (status {d.status}); "
                               "there is nothing to learn from.", code="request_not_served")
        feats = d.features or {}
        # The weights in force when the request was routed, not today's policy.
        pol, defaults = feats.get("policy") or {}, Policy()
        r = reward(score, d.energy_j, d.cost_usd, float(pol.get("lambda", defaults.lambda_)),
                   float(pol.get("mu", defaults.mu)), self.bounds)
        context = feats.get("context")
        applicable = (self.bandit is not None and context is not None
                      and self.extractor is not None and len(context) == self.extractor.dim)
        fb = Feedback(request_id=rid, created_at=datetime.now(UTC), team=principal.team,
                      key_id=principal.key_id, score=score, reward=r, member=d.served_member,
                      applied=applicable,
                      comment=None if comment is None else clean_text(comment)[0])
        try:
            await asyncio.to_thread(self._insert_feedback, fb)
        except IntegrityError:
            raise GatewayError(409, f"Feedback for request '{rid}' was already recorded.",
                               param="request_id", code="feedback_exists") from None
        if applicable:
            assert self.bandit is not None
            # With a quality prior the bandit learns the residual over the prior mean the
            # request was routed on (in the decision row's candidates).
            prior_mean = next((c.get("prior_mean") for c in d.candidates or []
                               if isinstance(c, dict) and c.get("member") == d.served_member),
                              None)
            self.bandit.update(np.asarray(context, dtype=float), d.served_member,
                               residual_reward(score, prior_mean))
            self._updates += 1
            if self.on_update is not None:
                try:
                    await self.on_update(self.bandit_name, [float(v) for v in context],
                                         d.served_member, residual_reward(score, prior_mean))
                except Exception:  # learning here is done; the others catch up by snapshot
                    log.exception("publishing the bandit update failed")
        return {"request_id": rid, "member": d.served_member, "score": score,
                "reward": round(r, 6), "applied_to_bandit": applicable}

    def apply_update(self, context: Any, arm: str, reward: float) -> None:
        """An update another replica's feedback made: the same additive step here (and
        counted, so the merged state is saved to SQL for replicas that start later)."""
        assert self.bandit is not None
        self.bandit.update(context, arm, reward)
        self._updates += 1

    def recent_feedback(self, limit: int = 50) -> list[dict]:
        with Session(self.engine) as s:
            q = select(Feedback).order_by(Feedback.id.desc()).limit(limit)
            return [{"request_id": f.request_id, "score": f.score, "reward": f.reward,
                     "member": f.member, "applied": f.applied} for f in s.scalars(q)]
