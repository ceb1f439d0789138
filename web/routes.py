"""The /ui routes, in one router the app includes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from web import finetune_pages, login, pages, static_files

router = APIRouter(include_in_schema=False)


async def _root(request: Request) -> Response:
    return RedirectResponse("/ui", status_code=307)


for path, endpoint, methods in (
    ("/ui", pages.overview, ["GET"]),
    ("/ui/", _root, ["GET"]),
    ("/ui/login", login.login_form, ["GET"]),
    ("/ui/login", login.login, ["POST"]),
    ("/ui/logout", login.logout, ["POST"]),
    ("/ui/policies", pages.policies, ["GET"]),
    ("/ui/policies/{team}", pages.policy, ["GET"]),
    ("/ui/keys", pages.keys, ["GET"]),
    ("/ui/decisions", pages.decisions, ["GET"]),
    ("/ui/decisions/{rid}", pages.decision, ["GET"]),
    ("/ui/dashboards", pages.dashboards, ["GET"]),
    ("/ui/fine-tuning", finetune_pages.jobs, ["GET"]),
    ("/ui/fine-tuning/{job_id}", finetune_pages.job, ["GET"]),
    ("/ui/static/plotly.min.js", static_files.plotly, ["GET"]),
    ("/ui/static/{name}", static_files.own, ["GET"]),
):
    router.add_route(path, endpoint, methods=methods, include_in_schema=False)
