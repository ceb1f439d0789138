"""GET /admin/replicas: this replica's view of the shared state (Redis reachable, bus events
sent and received, bandit updates merged from the others, budget charges owed after an
outage), so an operator can ask each replica behind the load balancer whether it is in step."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from gateway.admin import require_admin

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.get("/replicas")
def replica_status(request: Request) -> dict[str, Any]:
    """Shared state on this replica; {"shared": false} when it runs embedded (no Redis)."""
    rt = request.app.state.rt
    replicas = getattr(rt, "replicas", None)
    out: dict[str, Any] = {"shared": replicas is not None}
    if replicas is not None:
        out.update(replicas.status())
    bandit = getattr(rt.routing, "bandit", None)
    if bandit is not None:  # per arm: the observations its statistics sum (own + merged)
        out["bandit_arms"] = {a["name"]: a["n"] for a in bandit.state()["arms"]}
    out["decision_wal_unresolved"] = getattr(rt.decisions, "wal_unresolved", None)
    return out
