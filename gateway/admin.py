"""The JSON admin API under /admin/: teams, keys, pool and decisions. Admin key only."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.auth import Principal
from gateway.errors import GatewayError
from gateway.runtime import Runtime
from gateway.schema import Decision
from routing.policy import Policy


def runtime(request: Request) -> Runtime:
    return request.app.state.rt


async def require_admin(request: Request) -> Principal:
    p = await runtime(request).auth.authenticate(request)
    if not p.is_admin:
        raise GatewayError(403, "This endpoint needs the admin key.", code="admin_only")
    return p


Rt = Annotated[Runtime, Depends(runtime)]
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class TeamIn(BaseModel):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")


class KeyIn(BaseModel):
    team: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    name: str | None = Field(None, max_length=128)
    allowed_models: list[str] | None = Field(
        None, description="Members (or 'auto') this key may use; null means all."
    )


@router.get("/teams")
def list_teams(rt: Rt) -> list[dict]:
    return rt.keys.list_teams()


@router.post("/teams", status_code=201)
def create_team(team: TeamIn, rt: Rt) -> dict:
    try:
        return rt.keys.create_team(team.name)
    except ValueError as e:
        raise GatewayError(409, str(e), code="team_exists") from None


@router.get("/keys")
def list_keys(rt: Rt, team: str | None = None) -> list[dict]:
    return [k.to_json() for k in rt.keys.list_keys(team)]


@router.post("/keys", status_code=201)
def create_key(key: KeyIn, rt: Rt) -> dict:
    if key.allowed_models is not None:
        unknown = [m for m in key.allowed_models if m != "auto" and m not in rt.pool.members]
        if unknown:
            raise GatewayError(400, f"Unknown models: {', '.join(unknown)}",
                               param="allowed_models", code="model_not_found")
    secret, info = rt.keys.create_key(key.team, key.name, key.allowed_models)
    return {**info.to_json(), "key": secret,
            "note": "This is the only time the key is shown; greengate stores only its hash."}


@router.delete("/keys/{ident}")
def revoke_key(ident: str, rt: Rt) -> dict:
    try:
        info = rt.keys.revoke(ident)
    except LookupError as e:
        raise GatewayError(404, str(e), code="key_not_found") from None
    rt.auth.forget(info.id)
    return info.to_json()


@router.get("/pool")
def pool_status(rt: Rt) -> list[dict]:
    out = []
    for m in rt.pool.members.values():
        out.append({
            "name": m.name, "kind": m.cfg.kind, "model": m.cfg.model, "mode": m.cfg.mode,
            "state": m.breaker.state(),
            "cooldown_remaining_s": round(m.breaker.cooling_down_for(), 1),
            "consecutive_failures": m.breaker.consecutive_failures,
            "prices": None if m.prices is None else {
                "input_per_1m": m.prices.input_per_1m, "output_per_1m": m.prices.output_per_1m,
                "source": m.prices.source},
            "context_window": m.context_window, "tags": m.cfg.tags,
            "energy": m.cfg.energy.model_dump() if m.cfg.energy else None,
        })
    return out


def _decision_json(d: Decision) -> dict[str, Any]:
    out = {c.name: getattr(d, c.name) for c in Decision.__table__.columns}
    created = d.created_at
    # SQLite hands back naive datetimes; every time greengate stores is UTC.
    out["created_at"] = (created if created.tzinfo else created.replace(tzinfo=UTC)).isoformat()
    return out


@router.get("/decisions")
def list_decisions(
    rt: Rt,
    team: str | None = None,
    member: str | None = None,
    status: int | None = None,
    limit: int = Query(50, ge=1, le=1000),
) -> list[dict]:
    q = select(Decision).order_by(Decision.created_at.desc()).limit(limit)
    if team is not None:
        q = q.where(Decision.team == team)
    if member is not None:
        q = q.where(Decision.served_member == member)
    if status is not None:
        q = q.where(Decision.status == status)
    with Session(rt.engine) as s:
        return [_decision_json(d) for d in s.scalars(q)]


@router.get("/decisions/{rid}")
def get_decision(rid: str, rt: Rt) -> dict:
    with Session(rt.engine) as s:
        d = s.get(Decision, rid)
        if d is None:
            raise GatewayError(404, f"No decision {rid!r} (it may still be queued).",
                               code="decision_not_found")
        return _decision_json(d)


@router.get("/policies")
def list_policies(rt: Rt) -> dict[str, dict]:
    """Every stored policy by team; 'default' applies to teams without one."""
    return rt.routing.policies.list()


@router.get("/policies/{team}")
def get_policy(team: str, rt: Rt) -> dict:
    p = rt.routing.policies.get(team)
    if p is None:
        raise GatewayError(404, f"No policy for team {team!r}; it uses the default policy.",
                           code="policy_not_found")
    return p.to_json()


@router.put("/policies/{team}")
def put_policy(team: str, policy: Policy, rt: Rt) -> dict:
    names = set(rt.pool.members)
    listed = (policy.allowed_members or []) + policy.fallback_order + [
        m for r in policy.rules for m in r.members]
    unknown = sorted({m for m in listed if m not in names})
    if unknown:
        raise GatewayError(400, f"Unknown members: {', '.join(unknown)}", code="model_not_found")
    rt.routing.policies.put(team, policy)
    return policy.to_json()


@router.delete("/policies/{team}")
def delete_policy(team: str, rt: Rt) -> dict:
    if not rt.routing.policies.delete(team):
        raise GatewayError(404, f"No policy for team {team!r}.", code="policy_not_found")
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


@router.get("/budgets")
def list_budgets(rt: Rt) -> list[dict]:
    """Every budget with what has been spent in its current period and when it resets."""
    return rt.budgets.list()


@router.post("/budgets", status_code=201)
def create_budget(b: BudgetIn, rt: Rt) -> dict:
    if b.scope == "key" and not b.subject.isdigit():
        raise GatewayError(400, "A key budget's subject is the key's numeric id.",
                           param="subject", code="invalid_subject")
    return rt.budgets.create(b.scope, b.subject, b.metric, b.period, b.limit)


@router.delete("/budgets/{budget_id}")
def delete_budget(budget_id: int, rt: Rt) -> dict:
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
