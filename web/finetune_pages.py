"""The fine-tuning pages: every job (the admin: all teams; a team session: its own), and one
job with its loss curve, events, checkpoints and the traffic its adapter has served."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from web.client import AdminClient
from web.page import Visitor, html, page


def _iso(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI objects carry Unix seconds; the pages' `when` filter reads ISO 8601."""
    for r in rows:
        ts = r.get("created_at")
        r["created_iso"] = datetime.fromtimestamp(ts, UTC).isoformat() if ts else None
    return rows


@page
async def jobs(request: Request, v: Visitor, api: AdminClient) -> Response:
    team = request.query_params.get("team") or None
    listing, teams = await api.many(("/admin/fine_tuning/jobs", {"team": team, "limit": 200}),
                                    ("/admin/teams", {}))
    return html(request, "finetune_jobs.html", {
        "nav": "finetune", "jobs": _iso(listing["data"]), "team": team,
        "teams": [t["name"] for t in teams]}, visitor=v)


@page
async def job(request: Request, v: Visitor, api: AdminClient) -> Response:
    jid = quote(request.path_params["job_id"], safe="")
    detail = await api.get(f"/admin/fine_tuning/jobs/{jid}")
    events, checkpoints = await api.many((f"/admin/fine_tuning/jobs/{jid}/events",
                                          {"limit": 100}),
                                         (f"/admin/fine_tuning/jobs/{jid}/checkpoints", {}))
    traffic = []
    if detail["status"] == "succeeded" and detail["fine_tuned_model"]:
        traffic = await api.get("/admin/decisions", member=detail["fine_tuned_model"],
                                limit=20)
    g = detail["greengate"]
    curve = {"train": [[p["step"], p["train_loss"]] for p in g["curve"]
                       if p.get("train_loss") is not None],
             "valid": [[p["step"], p["valid_loss"]] for p in g["curve"]
                       if p.get("valid_loss") is not None],
             "base_valid_loss": g["base_valid_loss"]}
    return html(request, "finetune_job.html", {
        "nav": "finetune", "job": detail, "g": g, "curve": curve,
        "events": _iso(events["data"]), "checkpoints": checkpoints["data"],
        "traffic": traffic}, visitor=v)
