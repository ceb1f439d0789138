"""The request path of /v1 as one ordered list of stages, each behind the same small protocol.

    features -> guard -> cache -> route -> budget -> call

`Proxy.handle` reads the body, validates it, then runs the stages in this order on one
`Exchange` (the request's state); a stage either adds to it and returns None, or answers
(a cache hit, the call's answer), or raises GatewayError (an OpenAI-shaped refusal). The
accounting of a served answer (tokens, cost, energy, carbon, budgets, the decision row) runs
when the answer is complete, which for a stream is after the last chunk: the call stage and
the cache stage hand it the finished row (`Proxy._finish`).

Each stage takes only what it needs, so a test can run one alone (tests/test_stages.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from starlette.responses import Response, StreamingResponse

from backends import RANDOM_WEIGHTS_TAG, Endpoint
from gateway import answers, cache_stage
from gateway.auth import Principal
from gateway.errors import GatewayError
from gateway.files import namespace
from gateway.guard import Guard, SafetyOutcome
from gateway.pool import Pool, PoolMember
from gateway.routing_service import Analysis, RoutingService
from gateway.settings import Settings
from routing.cache import CacheHit, CacheKey, SemanticCache, make_key
from routing.safety import pii
from store import DecisionRow
from telemetry import Budgets, Metrics

log = logging.getLogger("greengate.proxy")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass(slots=True)
class Plan:
    """The members to try, in order, and why; with what the call needs to finish the answer."""

    members: list[PoolMember]
    reason: str
    candidates: list[dict[str, Any]]
    features: dict[str, Any] | None = None
    reference: PoolMember | None = None
    redactor: pii.Redactor | None = None  # restore the answer when the prompt was redacted
    cache_key: CacheKey | None = None  # store the answer under it when the call succeeds
    deadline: float = float("inf")  # perf_counter() by which every attempt must be done
    budget_s: float | None = None  # the deadline's length, for the 504


@dataclass(slots=True)
class Exchange:
    """One request on its way through the stages: what each reads and what each adds."""

    rid: str
    t0: float  # perf_counter() when the request arrived
    endpoint: Endpoint
    principal: Principal
    body: dict[str, Any]
    row: DecisionRow
    wanted_timeout: float | None = None  # the request's own request_timeout_s
    analysis: Analysis | None = None  # features: the policy, the embedding, the row's JSON
    safety: SafetyOutcome = field(default_factory=SafetyOutcome)  # guard
    cache_key: CacheKey | None = None  # cache: where a successful answer is stored
    plan: Plan | None = None  # route
    # /v1/responses: serves members that speak Responses (gateway.responses_native.NativeCall)
    native: Any = None


class Stage(Protocol):
    """One step of the request path. `run` returns None to go on, or the answer."""

    name: str

    async def run(self, x: Exchange) -> Response | None: ...


def _bad(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def may_use(principal: Principal, m: PoolMember) -> bool:
    """A key limited to some members may use its team's adapters of those members too."""
    return principal.may_use(m.name) or (
        m.base_member is not None and principal.may_use(m.base_member))


class FeaturesStage:
    """What the request is (task, complexity, embedding when someone needs it) and the
    team's policy: everything after reads `x.analysis`."""

    name = "features"

    def __init__(self, routing: RoutingService, guard: Guard) -> None:
        self.routing = routing
        self.guard = guard

    async def run(self, x: Exchange) -> Response | None:
        x.analysis = await self.routing.analyse(x.principal, x.endpoint, x.body,
                                                want_embedding=self.guard.wants_embedding)
        x.row.features = x.analysis.features
        return None


class GuardStage:
    """PII (redact, block, or only members tagged for it) and jailbreak checks."""

    name = "guard"

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def run(self, x: Exchange) -> Response | None:
        assert x.analysis is not None
        # the safety models take milliseconds to a few hundred: off the event loop
        x.safety = (await asyncio.to_thread(self.guard.inspect, x.body, x.analysis, x.endpoint)
                    if self.guard.needs_thread else
                    self.guard.inspect(x.body, x.analysis, x.endpoint))
        return None


class CacheStage:
    """The semantic cache: an answer from it ends the request here, in the format a live
    answer would have had, with its own decision row."""

    name = "cache"

    def __init__(self, cache: SemanticCache | None,
                 finish: Callable[[DecisionRow, Principal], None],
                 log_request: Callable[[DecisionRow, str, dict, str | None], None]) -> None:
        self.cache = cache
        self.finish = finish
        self.log_request = log_request

    async def run(self, x: Exchange) -> Response | None:
        a = x.analysis
        assert a is not None
        if (self.cache is None or x.endpoint != "chat/completions"
                or not cache_stage.eligible(a.policy.cache, x.body, a.flags)):
            return None
        t_cache = time.perf_counter()
        x.cache_key = make_key(x.body, x.principal.team or "_admin", a.embedding,
                               a.query.task if a.query else None, a.policy.cache.semantic)
        found = await asyncio.to_thread(self.cache.lookup_detail, x.cache_key)
        a.features["cache"] = found.row()  # similarity and verifier, hit or miss
        a.features["cache_ms"] = round((time.perf_counter() - t_cache) * 1000, 3)
        if found.hit is None:
            return None
        return self._serve_hit(x, found.hit, t_cache)

    def _serve_hit(self, x: Exchange, hit: CacheHit, t_cache: float) -> Response:
        out = cache_stage.hit_body(hit.response, x.rid)
        usage = out.get("usage") or {}
        lookup_s = time.perf_counter() - t_cache
        elapsed = (time.perf_counter() - x.t0) * 1000
        row = x.row
        row.served_member, row.upstream_model, row.status = "cache", out.get("model"), 200
        row.route_reason, row.cache_hit, row.cost_usd = f"cache:{hit.kind}", True, 0.0
        row.prompt_tokens = usage.get("prompt_tokens")
        row.completion_tokens = usage.get("completion_tokens")
        row.usage_source = "cache"
        row.energy_j = lookup_s * cache_stage.CPU_WATTS
        row.energy_source = cache_stage.ENERGY_SOURCE
        row.latency_ms = row.ttft_ms = elapsed
        features = row.features if row.features is not None else {}
        features["cache"] = {**(features.get("cache") or {}), "kind": hit.kind,
                             "similarity": round(hit.similarity, 4), "entry": hit.entry_id,
                             "member": hit.member, "age_s": round(hit.age_s, 1)}
        row.features = features
        self.log_request(row, "chat/completions", x.body,
                         answers.completion_text("chat/completions", out))
        self.finish(row, x.principal)
        headers = {"x-request-id": x.rid, "x-greengate-member": "cache",
                   "x-greengate-cache": hit.kind}
        if x.body.get("stream"):
            include = bool((x.body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(cache_stage.hit_chunks(out, include),
                                     media_type="text/event-stream",
                                     headers={**SSE_HEADERS, **headers})
        return Response(orjson.dumps(out), media_type="application/json", headers=headers)


class RouteStage:
    """Which members, in which order: the requested one and its fallbacks, or the router's
    ranking for `auto`; and one deadline for every attempt."""

    name = "route"

    def __init__(self, settings: Settings, pool: Pool, routing: RoutingService) -> None:
        self.settings = settings
        self.pool = pool
        self.routing = routing

    async def run(self, x: Exchange) -> Response | None:
        assert x.analysis is not None
        plan = await self.plan(x.principal, x.endpoint, x.body, x.analysis,
                               x.safety.required_tags)
        plan.redactor = x.safety.redactor
        plan.cache_key = x.cache_key
        self.set_deadline(plan, x.t0, x.wanted_timeout)
        features = x.row.features if x.row.features is not None else {}
        features["deadline_s"] = plan.budget_s
        x.row.features = features
        x.row.route_reason = plan.reason
        x.row.candidates = plan.candidates
        x.plan = plan
        return None

    async def plan(self, principal: Principal, endpoint: Endpoint, body: dict,
                   analysis: Analysis, tags: set[str]) -> Plan:
        model = body["model"]
        team = namespace(principal.team)
        if model == "auto":
            allowed = [m for m in self.pool.serving(endpoint)
                       if m.visible_to(team) and may_use(principal, m)]
            # A demo checkpoint with random weights answers noise: `auto` picks it only when
            # nothing else could serve (the no-configuration default).
            allowed = [m for m in allowed if RANDOM_WEIGHTS_TAG not in m.cfg.tags] or allowed
            if not allowed:
                raise GatewayError(403, f"No pool member this key may use serves /v1/{endpoint}.",
                                   param="model", code="model_not_allowed")
            allowed = [m for m in allowed if tags <= set(m.cfg.tags)]
            if not allowed:
                raise GatewayError(403, "This team's safety policy sends this request only to "
                                   f"members tagged {', '.join(sorted(tags))}, and this key may "
                                   "use none.", code="no_member_for_flag")
            auto = await self.routing.plan_auto(principal, endpoint, body, allowed, analysis)
            return Plan(auto.members, auto.reason, auto.candidates, auto.features, auto.reference)
        member = self.pool.get(model)
        if member is None or not member.visible_to(team):  # another team's adapter: missing
            raise GatewayError(
                404, f"The model '{model}' does not exist in this greengate pool; "
                "GET /v1/models lists the members and 'auto'.",
                param="model", code="model_not_found")
        if not may_use(principal, member):
            raise GatewayError(403, f"This key may not use the model '{model}'.",
                               param="model", code="model_not_allowed")
        wanted = "embedding" if endpoint == "embeddings" else "chat"
        if member.cfg.mode != wanted:
            raise _bad(f"The model '{model}' is a {member.cfg.mode} model and does not serve "
                       f"/v1/{endpoint}.", "model", "wrong_endpoint")
        if not tags <= set(member.cfg.tags):
            raise GatewayError(403, "This team's safety policy sends this request only to "
                               f"members tagged {', '.join(sorted(tags))}; '{model}' is not.",
                               param="model", code="no_member_for_flag")
        members = [member] + [
            self.pool.members[f] for f in member.cfg.fallbacks
            if principal.may_use(f) and self.pool.members[f].cfg.mode == wanted
            and tags <= set(self.pool.members[f].cfg.tags)
        ]
        cands = [{"member": m.name, "role": "requested" if i == 0 else "fallback"}
                 for i, m in enumerate(members)]
        return Plan(members, "requested", cands, analysis.features)

    def set_deadline(self, plan: Plan, t0: float, wanted: float | None) -> None:
        """One deadline for the whole request: the first member's request_timeout_s, else the
        gateway's, shortened (never lengthened) by the request's own request_timeout_s."""
        first = plan.members[0].cfg.request_timeout_s if plan.members else None
        budget = first or self.settings.request_timeout_s
        if wanted is not None:
            budget = min(budget, float(wanted))
        plan.budget_s = budget
        plan.deadline = t0 + budget


class BudgetStage:
    """Refuse (429 with Retry-After) a team or key whose budget is spent; with shared
    counters, reserve this request's expected charge (released when it is charged)."""

    name = "budget"

    def __init__(self, budgets: Budgets, metrics: Metrics) -> None:
        self.budgets = budgets
        self.metrics = metrics

    async def run(self, x: Exchange) -> Response | None:
        try:
            over = self.budgets.check(x.principal.team, x.principal.key_id, rid=x.rid)
        except GatewayError:  # shared counters away under redis_outage=fail_closed
            raise
        except Exception:  # counters unreachable: serve rather than refuse everyone
            log.exception("budget counters unavailable; serving without the check")
            return None
        if over is None:
            return None
        self.metrics.budget_rejections.labels(over.rule.scope, over.rule.metric).inc()
        wait = max(1, int((over.resets_at - datetime.now(UTC)).total_seconds()))
        spent = f"${over.spent:.6f}" if over.rule.metric == "usd" else f"{over.spent:.3f} Wh"
        raise GatewayError(
            429, f"Budget exhausted: {spent} spent of {over.rule.describe()}; it resets at "
            f"{over.resets_at.isoformat()}.", code="budget_exceeded",
            headers={"retry-after": str(wait), "x-should-retry": "false"})


class CallStage:
    """The members in the plan's order, with retries and fallback, streamed or not; the
    answer's accounting runs when it is complete (gateway.proxy)."""

    name = "call"

    def __init__(self, stream: Callable[[Exchange], Awaitable[Response]],
                 complete: Callable[[Exchange], Awaitable[Response]]) -> None:
        self.stream = stream
        self.complete = complete

    async def run(self, x: Exchange) -> Response | None:
        return await (self.stream(x) if x.row.stream else self.complete(x))
