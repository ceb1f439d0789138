"""The UI pages. Each one reads through the JSON API (web.client) and renders a template;
writes happen in the browser, through fetch() to the same API (web/static/ui.js)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from routing import Policy
from web.client import AdminClient, ApiError
from web.page import Visitor, html, page

RANGES: dict[str, tuple[timedelta, str, str]] = {
    "24h": (timedelta(hours=24), "hour", "last 24 hours, per hour"),
    "7d": (timedelta(days=7), "day", "last 7 days, per day"),
    "30d": (timedelta(days=30), "day", "last 30 days, per day"),
}


def _chat_members(pool: list[dict]) -> list[str]:
    return [m["name"] for m in pool if m.get("mode", "chat") == "chat"]


@page
async def overview(request: Request, v: Visitor, api: AdminClient) -> Response:
    pool, stats = await api.many(("/admin/pool", {}), ("/admin/pool/stats", {}))
    by_name = {m["name"]: m for m in stats["members"]}
    members = [{**m, "live": by_name.get(m["name"], {})} for m in pool]
    others = [m for m in stats["members"] if not m["in_pool"]]
    return html(request, "overview.html", {"nav": "overview", "members": members,
                                           "others": others, "windows": stats["windows"],
                                           "generated_at": stats["generated_at"]}, visitor=v)


@page
async def policies(request: Request, v: Visitor, api: AdminClient) -> Response:
    if v.read_only:
        return RedirectResponse(f"/ui/policies/{quote(v.principal.team or '', safe='')}", 303)
    teams, stored = await api.many(("/admin/teams", {}), ("/admin/policies", {}))
    names = ["default", *[t["name"] for t in teams if t["name"] != "default"]]
    fallback = stored.get("default") or Policy().to_json()
    rows = [{"team": n, "own": n in stored, "policy": stored.get(n) or fallback} for n in names]
    return html(request, "policies.html", {"nav": "policies", "rows": rows}, visitor=v)


@page
async def policy(request: Request, v: Visitor, api: AdminClient) -> Response:
    team = request.path_params["team"]
    if team in (".", ".."):
        raise ApiError(404, "Not found.")  # not a team name: URL normalisation would misroute
    own = await api.get_or_none(f"/admin/policies/{quote(team, safe='')}")
    inherited_from = None
    current = own
    if current is None:
        current = await api.get_or_none("/admin/policies/default") if team != "default" else None
        inherited_from = "the 'default' policy" if current is not None else "built-in defaults"
        current = current or Policy().to_json()
    pool, budgets, recent = await api.many(
        ("/admin/pool", {}), ("/admin/budgets", {}), ("/admin/decisions", {
            "team": team, "limit": 10}))
    return html(request, "policy.html", {
        "nav": "policies", "team": team, "policy": current, "own": own is not None,
        "inherited_from": inherited_from, "members": _chat_members(pool),
        "budgets": [b for b in budgets if b["scope"] == "team" and b["subject"] == team],
        "recent": recent}, visitor=v)


@page
async def keys(request: Request, v: Visitor, api: AdminClient) -> Response:
    teams, key_list, pool = await api.many(("/admin/teams", {}), ("/admin/keys", {}),
                                           ("/admin/pool", {}))
    key_list.sort(key=lambda k: (k["revoked_at"] is not None, k["team"], k["id"]))
    return html(request, "keys.html", {"nav": "keys", "teams": teams, "keys": key_list,
                                       "models": ["auto", *_chat_members(pool)]}, visitor=v)


@page
async def decisions(request: Request, v: Visitor, api: AdminClient) -> Response:
    q = request.query_params
    filters = {k: q.get(k) or None for k in ("team", "member", "status", "since", "until")}
    limit = q.get("limit") or "50"
    rows, teams, pool = await api.many(("/admin/decisions", {**filters, "limit": limit}),
                                       ("/admin/teams", {}), ("/admin/pool", {}))
    # Rows the database refused (admin only: they can belong to any team).
    quarantine = None if v.read_only else await api.get("/admin/decisions/quarantine")
    # Text in the stored prompts and answers (teams that keep request logs).
    text = (q.get("text") or "").strip()[:200] or None
    logs = await api.get("/admin/request-logs", q=text, team=filters["team"]) if text else None
    return html(request, "decisions.html", {
        "nav": "decisions", "rows": rows, "filters": filters, "limit": limit,
        "quarantine": quarantine, "text": text, "logs": logs,
        "teams": [t["name"] for t in teams], "members": [m["name"] for m in pool] + ["cache"],
        "statuses": [200, 400, 401, 403, 404, 413, 422, 429, 500, 502, 503, 504]}, visitor=v)


@page
async def decision(request: Request, v: Visitor, api: AdminClient) -> Response:
    d = await api.get(f"/admin/decisions/{quote(request.path_params['rid'], safe='')}")
    terms = {c["member"]: c["terms"] for c in d["explanation"]["candidates"]}
    feats = dict(d.get("features") or {})
    context = feats.pop("context", None)
    return html(request, "decision.html", {
        "nav": "decisions", "d": d, "terms": terms, "features": feats, "context": context,
        "features_json": orjson.dumps(feats, option=orjson.OPT_INDENT_2).decode()},
        visitor=v)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@page
async def dashboards(request: Request, v: Visitor, api: AdminClient) -> Response:
    rng = request.query_params.get("range") or "7d"
    if rng not in RANGES:
        rng = "7d"
    span, bucket, label = RANGES[rng]
    team = request.query_params.get("team") or None
    now = datetime.now(UTC)
    start = (now - span).replace(minute=0, second=0, microsecond=0)
    base = {"start": _iso(start), "end": _iso(now), "team": team}
    by_team, by_member, members, over_time, teams = await api.many(
        ("/v1/reports/usage", {**base, "group_by": f"team,{bucket}"}),
        ("/v1/reports/usage", {**base, "group_by": f"member,{bucket}"}),
        ("/v1/reports/usage", {**base, "group_by": "member"}),
        ("/v1/reports/usage", {**base, "group_by": bucket}),
        ("/admin/teams", {}))
    totals = over_time["totals"]
    data = {"bucket": bucket, "start": base["start"], "end": base["end"],
            "by_team": by_team["rows"], "by_member": by_member["rows"],
            "members": members["rows"], "over_time": over_time["rows"]}
    return html(request, "dashboards.html", {
        "nav": "dashboards", "range": rng, "ranges": RANGES, "label": label, "team": team,
        "teams": [t["name"] for t in teams], "totals": totals, "start": base["start"],
        "end": base["end"], "has_data": totals["requests"] > 0, "saved": savings(totals),
        "report": data}, visitor=v)


def _share(part: float | None, whole: float | None) -> float | None:
    return None if not whole or part is None else part / whole


def savings(totals: dict[str, Any]) -> dict[str, float | None]:
    return {"cost": _share(totals.get("cost_saved_usd"), totals.get("counterfactual_cost_usd")),
            "energy": _share(totals.get("energy_saved_j"),
                             totals.get("counterfactual_energy_j"))}
