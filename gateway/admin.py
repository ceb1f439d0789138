"""The JSON admin API under /admin/: teams, keys, pool and decisions. The admin key (bearer, or
an admin's web session); a team key signed in to the web UI may read its own team's slice of
the endpoints marked x-team-readable, and write nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway import sessions
from gateway.auth import Principal
from gateway.errors import GatewayError
from gateway.explain import explain
from gateway.files import namespace
from gateway.reports_api import parse_time
from gateway.runtime import Runtime
from routing import Policy, RewardBounds
from store import Decision
from telemetry import ReportQuery, usage_report


def runtime(request: Request) -> Runtime:
    return request.app.state.rt


# On an endpoint: a team key's web session may GET it, limited to its own team.
TEAM_READABLE: dict[str, Any] = {"x-team-readable": True}


async def require_admin(request: Request) -> Principal:
    p = await sessions.caller(request)
    if p.is_admin:
        return p
    route = request.scope.get("route")
    readable = bool((getattr(route, "openapi_extra", None) or {}).get("x-team-readable"))
    # Bearer team keys stay out of /admin entirely (they are data-plane credentials); the
    # read-only console is for a person who signed in with one.
    if readable and request.method == "GET" and sessions.via_session(request):
        return p
    raise GatewayError(403, "This endpoint needs the admin key.", code="admin_only")


def team_scope(p: Principal, team: str | None) -> str | None:
    """The team filter to apply: the admin's choice, or a team principal's own team."""
    if p.is_admin:
        return team
    if team is not None and team != p.team:
        raise GatewayError(403, "A team key can only read its own team.", param="team",
                           code="team_forbidden")
    return p.team


# SQL integers are 64-bit: a larger id is a 422 here, not an OverflowError in the driver.
SQL_INT_MAX = 2**63 - 1
SQL_INT32_MAX = 2**31 - 1  # Integer columns (rate limits)
Rt = Annotated[Runtime, Depends(runtime)]
Caller = Annotated[Principal, Depends(require_admin)]
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class TeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    rpm_limit: int | None = Field(None, ge=1, le=SQL_INT32_MAX,
                                  description="Requests per minute for the whole team.")
    tpm_limit: int | None = Field(None, ge=1, le=SQL_INT32_MAX,
                                  description="Tokens per minute for the whole team.")
    request_log_days: float | None = Field(
        None, gt=0, le=3650, description="Keep this team's prompts and answers (PII-redacted "
        "before storage) this many days; null: off (the default).")


class TeamPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rpm_limit: int | None = Field(None, ge=1, le=SQL_INT32_MAX)
    tpm_limit: int | None = Field(None, ge=1, le=SQL_INT32_MAX)
    request_log_days: float | None = Field(None, gt=0, le=3650)


class KeyBudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal["usd", "wh"]
    period: Literal["day", "month"]
    limit: float = Field(gt=0)




class KeyIn(BaseModel):
    team: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    name: str | None = Field(None, max_length=128)
    allowed_models: list[str] | None = Field(
        None, description="Members (or 'auto') this key may use; null means all."
    )
    expires_at: AwareDatetime | None = Field(
        None, description="ISO 8601 with a time zone; the key answers 401 from then on.")
    duration_s: float | None = Field(None, gt=0, le=100 * 365 * 86400,
                                     description="Or: expire this many seconds from now.")
    metadata: dict[str, Any] | None = Field(
        None, max_length=32, description="Free-form labels (owner, cost centre...): strings, "
        "numbers, booleans or null.")
    rpm_limit: int | None = Field(None, ge=1, le=SQL_INT32_MAX,
                                  description="Requests per minute for this key.")
    tpm_limit: int | None = Field(None, ge=1, le=SQL_INT32_MAX,
                                  description="Tokens per minute for this key.")
    budget: KeyBudgetIn | None = Field(None, description="A spending cap on this key.")


    @field_validator("metadata")
    @classmethod
    def _flat(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        bad = [k for k, x in (v or {}).items()
               if x is not None and not isinstance(x, (str, int, float, bool))]
        if bad or any(len(k) > 64 for k in v or {}):
            raise ValueError("metadata is flat: keys of at most 64 characters, values strings, "
                             f"numbers, booleans or null ({', '.join(bad) or 'a long key'})")
        return v


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_s: float = Field(3600.0, ge=0, le=30 * 86400, description="How long the old "
                           "secret keeps working (default one hour).")


@router.get("/teams", openapi_extra=TEAM_READABLE)
def list_teams(rt: Rt, p: Caller) -> list[dict]:
    teams = rt.keys.list_teams()
    return teams if p.is_admin else [t for t in teams if t["name"] == p.team]


@router.post("/teams", status_code=201)
def create_team(team: TeamIn, rt: Rt) -> dict:
    try:
        out = rt.keys.create_team(team.name)
    except ValueError as e:
        raise GatewayError(409, str(e), code="team_exists") from None
    settings = {k: v for k, v in team.model_dump().items() if k != "name"}
    if any(v is not None for v in settings.values()):
        rt.keys.set_team_settings(team.name, settings)
        rt.team_settings.forget()
    return {**out, **settings}


@router.patch("/teams/{name}")
def patch_team(name: str, patch: TeamPatch, rt: Rt) -> dict:
    """Change some of a team's settings; the fields sent replace, the others stay."""
    try:
        out = rt.keys.set_team_settings(name, patch.model_dump(exclude_unset=True))
    except LookupError as e:
        raise GatewayError(404, str(e), code="team_not_found") from None
    rt.team_settings.forget()
    return out


@router.get("/keys", openapi_extra=TEAM_READABLE)
def list_keys(rt: Rt, p: Caller, team: str | None = None) -> list[dict]:
    """Every key (a team session: its team's), without secrets: greengate keeps only hashes."""
    return [k.to_json() for k in rt.keys.list_keys(team_scope(p, team))]


@router.post("/keys", status_code=201)
def create_key(key: KeyIn, rt: Rt) -> dict:
    """A key with, optionally, an expiry (expires_at or duration_s), metadata, the members
    it may use, rpm/tpm limits and a budget; all checked before anything is stored."""
    if key.allowed_models is not None:
        unknown = [m for m in key.allowed_models if m != "auto" and m not in rt.pool.members]
        if unknown:
            raise GatewayError(400, f"Unknown models: {', '.join(unknown)}",
                               param="allowed_models", code="model_not_found")
    now = datetime.now(UTC)
    if key.expires_at is not None and key.duration_s is not None:
        raise GatewayError(400, "Give expires_at or duration_s, not both.", param="duration_s",
                           code="invalid_expiry")
    expires = key.expires_at.astimezone(UTC) if key.expires_at is not None else (
        now + timedelta(seconds=key.duration_s) if key.duration_s is not None else None)
    if expires is not None and expires <= now:
        raise GatewayError(400, "expires_at is in the past.", param="expires_at",
                           code="invalid_expiry")
    secret, info = rt.keys.create_key(key.team, key.name, key.allowed_models,
                                      expires_at=expires, metadata=key.metadata,
                                      rpm_limit=key.rpm_limit, tpm_limit=key.tpm_limit)
    out = {**info.to_json(), "key": secret,
           "note": "This is the only time the key is shown; greengate stores only its hash."}
    if key.budget is not None:
        try:
            out["budget"] = rt.budgets.create("key", str(info.id), key.budget.metric,
                                              key.budget.period, key.budget.limit)
        except Exception:
            rt.keys.delete_key(info.id)  # nothing half-created
            raise
    return out


@router.post("/keys/{ident}/rotate")
def rotate_key(ident: str, rt: Rt, body: RotateIn | None = None) -> dict:
    """A new secret for the key (same id, team, limits, budgets); the old secret keeps
    working for grace_s seconds (default 3600), then answers 401 rotated_api_key."""
    grace = (body or RotateIn()).grace_s
    try:
        secret, info = rt.keys.rotate(ident, grace)
    except LookupError as e:
        raise GatewayError(404, str(e), code="key_not_found") from None
    except ValueError as e:
        raise GatewayError(409, str(e), code="key_not_rotatable") from None
    rt.auth.forget(info.id)
    until = info.previous_valid_until.isoformat() if info.previous_valid_until else "now"
    return {**info.to_json(), "key": secret,
            "note": f"This is the only time the new key is shown; the old one works until "
                    f"{until}."}


@router.delete("/keys/{ident}")
def revoke_key(ident: str, rt: Rt) -> dict:
    try:
        info = rt.keys.revoke(ident)
    except LookupError as e:
        raise GatewayError(404, str(e), code="key_not_found") from None
    rt.auth.forget(info.id)
    if rt.replicas is not None:  # the other replicas drop it from their key caches
        rt.replicas.key_changed(info.id)
    return info.to_json()


@router.get("/pool", openapi_extra=TEAM_READABLE)
def pool_status(rt: Rt, p: Caller) -> list[dict]:
    out = []
    replicas = rt.pool.replica_members()
    for m in rt.pool.members.values():
        if not p.is_admin and not m.visible_to(namespace(p.team)):
            continue  # another team's fine-tuned adapter
        out.append({
            "name": m.name, "kind": m.cfg.kind, "model": m.cfg.model, "mode": m.cfg.mode,
            "state": m.breaker.state(),
            "cooldown_remaining_s": round(m.breaker.cooling_down_for(), 1),
            "consecutive_failures": m.breaker.consecutive_failures,
            "prices": None if m.prices is None else {
                "input_per_1m": m.prices.input_per_1m, "output_per_1m": m.prices.output_per_1m,
                "source": m.prices.source},
            "context_window": m.context_window, "tags": m.cfg.tags,
            "responses": m.cfg.responses,  # translate (via chat) | native (passed through)
            "energy": m.cfg.energy.model_dump() if m.cfg.energy else None,
            "engine": _engine_state(m.backend) if m.is_engine else None,
            # A member with several endpoints: each replica's state, load and energy.
            "replicas": replicas[m.name].stats() if m.name in replicas else None,
        })
    return out


def _engine_state(backend: Any) -> dict[str, Any]:  # an EngineMember
    s = backend.stats()
    return {"checkpoint": backend.checkpoint.name, "random_weights": backend.random_weights,
            "params": backend.num_params, "device": s["device"], "attention": s["attention"],
            "kv_usage": s["kv_usage"], "kv_blocks": s["kv_blocks"], "running": s["running"],
            "waiting": s["waiting"], "preemptions": s["preemptions"],
            "prefix_cache_hit_tokens": s["prefix_cache_hit_tokens"],
            "energy_source": s["energy_source"], "speculative": s.get("speculative")}


WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1)}
_WINDOW_FIELDS = ("requests", "errors", "latency_p50_ms", "latency_p95_ms", "cost_usd",
                  "energy_wh", "gco2e", "j_per_output_token", "measured_energy_share",
                  "estimated_energy_share")


@router.get("/pool/stats", openapi_extra=TEAM_READABLE, responses={200: {"description": (
    "Per member, over the last hour and the last day: requests, traffic_share (of the "
    "requests a member served in the window), errors, error_rate, latency p50/p95 (ms), "
    "cost_usd, energy_wh, gco2e, j_per_output_token and the measured/estimated energy "
    "shares; with each pool member's health (healthy, degraded, cooldown) and cooldown left. "
    "Members no longer in the pool, and 'cache' (semantic cache hits), appear with "
    "in_pool false. A team session sees its own team's traffic.")}})
async def pool_stats(rt: Rt, p: Caller) -> dict:
    now = datetime.now(UTC)
    team = None if p.is_admin else p.team
    members: dict[str, dict[str, Any]] = {}
    for m in rt.pool.members.values():
        if not p.is_admin and not m.visible_to(namespace(p.team)):
            continue
        members[m.name] = {"name": m.name, "in_pool": True, "state": m.breaker.state(),
                           "cooldown_remaining_s": round(m.breaker.cooling_down_for(), 1),
                           "latency_ewma_ms": m.latency_ewma_ms, "windows": {}}
    for label, span in WINDOWS.items():
        q = ReportQuery(now - span, now, ("member",), team=team)
        report = await run_in_threadpool(usage_report, rt.engine, q)
        served = sum(r["requests"] for r in report.rows if r["member"] is not None)
        for row in report.rows:
            name = row["member"]
            if name is None:
                continue  # refused before any member was chosen
            entry = members.setdefault(name, {"name": name, "in_pool": False, "state": None,
                                              "cooldown_remaining_s": None,
                                              "latency_ewma_ms": None, "windows": {}})
            w = {f: row[f] for f in _WINDOW_FIELDS}
            w["traffic_share"] = row["requests"] / served if served else None
            w["error_rate"] = row["errors"] / row["requests"] if row["requests"] else None
            entry["windows"][label] = w
    return {"generated_at": now.isoformat(), "windows": list(WINDOWS), "team": team,
            "members": list(members.values())}


def _decision_json(d: Decision) -> dict[str, Any]:
    out = {c.name: getattr(d, c.name) for c in Decision.__table__.columns}
    created = d.created_at
    # SQLite hands back naive datetimes; every time greengate stores is UTC.
    out["created_at"] = (created if created.tzinfo else created.replace(tzinfo=UTC)).isoformat()
    return out


@router.get("/decisions", openapi_extra=TEAM_READABLE)
def list_decisions(
    rt: Rt,
    p: Caller,
    team: str | None = None,
    member: str | None = None,
    status: int | None = Query(None, ge=0, le=999),
    since: str | None = Query(None, description="ISO 8601, inclusive (naive: UTC)"),
    until: str | None = Query(None, description="ISO 8601, exclusive (naive: UTC)"),
    limit: int = Query(50, ge=1, le=1000),
) -> list[dict]:
    """Newest first."""
    team = team_scope(p, team)
    q = select(Decision).order_by(Decision.created_at.desc()).limit(limit)
    if since is not None:
        q = q.where(Decision.created_at >= parse_time(since, "since"))
    if until is not None:
        q = q.where(Decision.created_at < parse_time(until, "until"))
    if team is not None:
        q = q.where(Decision.team == team)
    if member is not None:
        q = q.where(Decision.served_member == member)
    if status is not None:
        q = q.where(Decision.status == status)
    with Session(rt.engine) as s:
        return [_decision_json(d) for d in s.scalars(q)]


@router.get("/decisions/quarantine")
def list_quarantine(rt: Rt) -> dict:
    """Decision rows the database refused even after cleaning: the newest (the full rows
    are in state_dir/decisions.quarantine.jsonl), with counts of rows written and journaled."""
    d = rt.decisions
    return {"quarantined": d.quarantined, "journaled": d.journaled, "written": d.written,
            "file": str(d.quarantine_path), "recent": list(reversed(d.recent_quarantine))}


@router.get("/decisions/{rid}", openapi_extra=TEAM_READABLE, responses={200: {
    "description": "The decision row, plus `explanation`: each candidate's score split into "
    "its quality, energy and cost terms, the term that decided, and a sentence saying why "
    "the served member won."}})
def get_decision(rid: str, rt: Rt, p: Caller) -> dict:
    with Session(rt.engine) as s:
        d = s.get(Decision, rid)
        if d is None or not (p.is_admin or d.team == p.team):
            raise GatewayError(404, f"No decision {rid!r} (it may still be queued).",
                               code="decision_not_found")
        out = _decision_json(d)
    bounds = RewardBounds(rt.settings.reward_energy_max_j, rt.settings.reward_cost_max_usd)
    out["explanation"] = explain(out, bounds)
    entry = rt.request_logs.get(rid, None if p.is_admin else p.team)
    out["request_log"] = entry.to_json() if entry is not None else None
    return out


@router.get("/request-logs", openapi_extra=TEAM_READABLE)
def search_request_logs(rt: Rt, p: Caller, team: str | None = None,
                        q: str | None = Query(None, max_length=200),
                        limit: int = Query(50, ge=1, le=500)) -> list[dict]:
    """Stored prompts and answers (teams that opted in; PII-redacted), newest first,
    containing `q` if given. A team session sees its own team's only."""
    return [e.to_json() for e in rt.request_logs.search(team_scope(p, team), q, limit)]


@router.get("/policies", openapi_extra=TEAM_READABLE)
def list_policies(rt: Rt, p: Caller) -> dict[str, dict]:
    """Every stored policy by team; 'default' applies to teams without one."""
    stored = rt.routing.policies.list()
    return stored if p.is_admin else {
        t: v for t, v in stored.items() if t in (p.team, "default")}


@router.get("/policies/{team}", openapi_extra=TEAM_READABLE)
def get_policy(team: str, rt: Rt, p: Caller) -> dict:
    if team != "default":
        team_scope(p, team)
    p = rt.routing.policies.get(team)
    if p is None:
        raise GatewayError(404, f"No policy for team {team!r}; it uses the default policy.",
                           code="policy_not_found")
    return p.to_json()


@router.put("/policies/{team}")
def put_policy(team: str, policy: Policy, rt: Rt, response: Response) -> dict:
    """Replaces the team's whole policy: a field left out goes back to its default (the
    answer says so in x-greengate-policy). PATCH changes only the fields it sends."""
    _store_policy(team, policy, rt)
    response.headers["x-greengate-policy"] = (
        "replaced: fields not sent are back to their defaults; PATCH changes only some")
    return policy.to_json()


@router.patch("/policies/{team}", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "description": "Any fields of the "
                                    "policy; the others keep their stored values."}}}}})
async def patch_policy(team: str, request: Request, rt: Rt) -> dict:
    """Partial update: the fields sent replace theirs, every other field keeps its stored
    value (the 'default' policy's, or the built-in defaults, when the team has none)."""
    try:
        patch = orjson.loads(await request.body())
    except orjson.JSONDecodeError as e:
        raise GatewayError(400, f"The request body is not valid JSON: {e}",
                           code="invalid_json") from None
    if not isinstance(patch, dict):
        raise GatewayError(400, "The body must be a JSON object of policy fields.")
    current = rt.routing.policies.get(team) or rt.routing.policies.get("default") or Policy()
    try:
        merged = Policy.model_validate({**current.to_json(), **patch})
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(x) for x in first["loc"]) or None
        raise GatewayError(422, f"{param or 'policy'}: {first['msg']}", param=param,
                           code="invalid_field") from None
    await run_in_threadpool(_store_policy, team, merged, rt)
    return merged.to_json()


def _store_policy(team: str, policy: Policy, rt: Runtime) -> None:
    names = set(rt.pool.members)
    listed = (policy.allowed_members or []) + policy.fallback_order + [
        m for r in policy.rules for m in r.members]
    unknown = sorted({m for m in listed if m not in names})
    if unknown:
        raise GatewayError(400, f"Unknown members: {', '.join(unknown)}", code="model_not_found")
    problem = rt.routing.constraint_problem(policy)
    if problem is not None:
        raise GatewayError(422, f"{problem[0]}: impossible constraint: {problem[1]}.",
                           param=problem[0], code="impossible_constraint")
    rt.routing.policies.put(team, policy)
    if rt.replicas is not None:  # the other replicas reload the policies
        rt.replicas.policies_changed(team)
    return policy.to_json()


@router.delete("/policies/{team}")
def delete_policy(team: str, rt: Rt) -> dict:
    if not rt.routing.policies.delete(team):
        raise GatewayError(404, f"No policy for team {team!r}.", code="policy_not_found")
    if rt.replicas is not None:
        rt.replicas.policies_changed(team)
    return {"team": team, "deleted": True}


@router.get("/feedback")
def list_feedback(rt: Rt, limit: int = Query(50, ge=1, le=1000)) -> list[dict]:
    return rt.routing.recent_feedback(limit)


class BudgetIn(BaseModel):
    scope: Literal["team", "key"]
    subject: str = Field(min_length=1, max_length=128, description="Team name or key id.")
    metric: Literal["usd", "wh"]
    period: Literal["day", "month"]
    limit: float = Field(gt=0)


@router.get("/budgets", openapi_extra=TEAM_READABLE)
def list_budgets(rt: Rt, p: Caller) -> list[dict]:
    """Every budget with what has been spent in its current period and when it resets."""
    budgets = rt.budgets.list()
    if p.is_admin:
        return budgets
    own_keys = {str(k.id) for k in rt.keys.list_keys(p.team)}
    return [b for b in budgets if (b["scope"], b["subject"]) == ("team", p.team)
            or (b["scope"] == "key" and b["subject"] in own_keys)]


@router.post("/budgets", status_code=201)
def create_budget(b: BudgetIn, rt: Rt) -> dict:
    if b.scope == "key" and not b.subject.isdigit():
        raise GatewayError(400, "A key budget's subject is the key's numeric id.",
                           param="subject", code="invalid_subject")
    return rt.budgets.create(b.scope, b.subject, b.metric, b.period, b.limit)


@router.delete("/budgets/{budget_id}")
def delete_budget(budget_id: Annotated[int, Path(ge=1, le=SQL_INT_MAX)], rt: Rt) -> dict:
    if not rt.budgets.delete(budget_id):
        raise GatewayError(404, f"No budget {budget_id}.", code="budget_not_found")
    return {"id": budget_id, "deleted": True}


@router.delete("/cache/{team}")
def invalidate_cache(team: str, rt: Rt) -> dict:
    """Drop a team's cached answers (admin requests use the namespace '_admin')."""
    if rt.cache is None:
        raise GatewayError(404, "The semantic cache is switched off.", code="cache_off")
    return {"team": team, "invalidated": rt.cache.invalidate(team)}


@router.get("/cache")
def cache_stats(rt: Rt) -> dict:
    if rt.cache is None:
        raise GatewayError(404, "The semantic cache is switched off.", code="cache_off")
    return rt.cache.stats()
