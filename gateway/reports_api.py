"""GET /v1/reports/usage: requests, tokens, dollars, joules, carbon, latency and savings over a
time range, grouped as asked. The admin key sees every team; a team key sees its own team."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import orjson
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway import sessions
from gateway.errors import GatewayError
from gateway.runtime import Runtime
from telemetry import (
    GROUP_KEYS,
    SQLITE_PERCENTILE_RESOLUTION,
    ReportQuery,
    UsageReport,
    energy_saved_note,
    to_csv,
    usage_report,
)

DEFAULT_RANGE = timedelta(days=7)
ENERGY_NOTE = "energy_j carries its source; estimated figures are estimates"

router = APIRouter(tags=["reports"])


def _bad(param: str, message: str, code: str = "invalid_parameter") -> GatewayError:
    return GatewayError(400, f"{param}: {message}", param=param, code=code)


def parse_time(value: str, param: str) -> datetime:
    """ISO 8601 date or date-time; naive means UTC."""
    text = value.strip()
    # An unescaped '+' in a query string arrives as a space: '...T10:00:00 00:00'.
    text = re.sub(r"(T[\d:.]+) (\d{2}(?::?\d{2})?)$", r"\1+\2", text)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(param, f"not an ISO 8601 date or time: {value!r}", "invalid_date") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_group_by(value: str | None) -> tuple[str, ...]:
    if value is None or not value.strip():
        return ()
    out: list[str] = []
    for name in (v.strip().lower() for v in value.split(",")):
        if name not in GROUP_KEYS:
            raise _bad("group_by", f"unknown key {name!r}; use a comma list of "
                       f"{', '.join(GROUP_KEYS)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@router.get("/v1/reports/usage")
async def usage(
    request: Request,
    start: str | None = Query(None, description="ISO 8601, inclusive; default: end - 7 days"),
    end: str | None = Query(None, description="ISO 8601, exclusive; default: now"),
    group_by: str | None = Query(
        None, description=f"Comma list of {', '.join(GROUP_KEYS)}; none: totals only"),
    team: str | None = Query(None, description="Only this team (a team key: its own only)"),
    member: str | None = Query(None, description="Only requests served by this member"),
    key_id: str | None = Query(None, description="Only requests made with this key id"),
    format: str = Query("json", description="json or csv"),
) -> Response:
    """Usage over [start, end) in UTC, with a totals row. Latency percentiles are exact on
    PostgreSQL and estimated from a log-spaced histogram on SQLite (relative error below
    1.1%). Energy figures mix measured and estimated joules: the
    shares say how much of each."""
    rt: Runtime = request.app.state.rt
    # Before any parsing: no key, no work. A web session counts as its key (GET: no CSRF).
    principal = await sessions.caller(request)

    fmt = format.strip().lower()
    if fmt not in ("json", "csv"):
        raise _bad("format", f"{format!r} is not json or csv")
    now = datetime.now(UTC)
    t_end = parse_time(end, "end") if end is not None else now
    t_start = parse_time(start, "start") if start is not None else t_end - DEFAULT_RANGE
    if t_start >= t_end:
        raise _bad("start", "must be before end", "invalid_date")
    groups = parse_group_by(group_by)
    kid: int | None = None
    if key_id is not None:
        try:
            kid = int(key_id)
        except ValueError:
            raise _bad("key_id", f"not an integer: {key_id!r}") from None
        if not -(2**63) <= kid < 2**63:
            raise _bad("key_id", f"out of range: {key_id!r}")

    if not principal.is_admin:
        if team is not None and team != principal.team:
            raise GatewayError(403, "A team key can only read its own team's usage.",
                               param="team", code="team_forbidden")
        team = principal.team  # forced: grouping by team or key stays inside it

    q = ReportQuery(t_start, t_end, groups, team=team, key_id=kid, member=member)
    report: UsageReport = await run_in_threadpool(usage_report, rt.engine, q)

    if fmt == "csv":
        name = f"usage-{t_start:%Y%m%dT%H%M%SZ}-{t_end:%Y%m%dT%H%M%SZ}.csv"
        return Response(to_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="{name}"'})
    body = {
        "start": _iso(q.start), "end": _iso(q.end), "group_by": list(groups),
        "filters": {"team": team, "member": member, "key_id": kid},
        "rows": report.rows, "totals": report.totals,
        "latency_percentiles": ("exact (percentile_cont)" if rt.engine.dialect.name != "sqlite"
                                else f"log-histogram estimate, relative error below "
                                     f"{SQLITE_PERCENTILE_RESOLUTION:.2%}"),
        "energy_note": ENERGY_NOTE,
        "energy_saved_note": energy_saved_note(report.totals),
    }
    return Response(orjson.dumps(body), media_type="application/json")
