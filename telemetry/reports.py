"""Usage reports over the decision log: requests, tokens, dollars, joules, carbon, latency
percentiles and what 'auto' routing saved, per team / key / model / member / day / hour.

Everything is aggregated by the database (GROUP BY); Python only derives ratios and, on SQLite,
interpolates latency percentiles from a histogram the database computed.

Latency percentiles
    PostgreSQL: exact, `percentile_cont(ARRAY[.5,.95,.99]) WITHIN GROUP (ORDER BY latency_ms)`
    (linear interpolation between ranks).
    SQLite has no percentile aggregate. The database counts rows per (group, bucket) where the
    buckets are log-spaced, HIST_BUCKETS_PER_DOUBLING per doubling of latency; Python then
    finds the bucket that holds each rank and interpolates inside it (ranks spread
    geometrically across the bucket, bucket edges clamped to the group's exact min and max).
    Every estimate lies in the same bucket as the true order statistic, so its relative error
    is below 2**(1/HIST_BUCKETS_PER_DOUBLING) - 1 (SQLITE_PERCENTILE_RESOLUTION, 1.09%);
    interpolating between two such estimates keeps that bound. p0 and p100 are exact.
    Window functions (row_number over the group ordered by latency) would be exact, but they
    measured 2.5-3x slower at a million rows: they sort every row by (group, latency).

Definitions (per group)
    team                    the team, or "(admin key)" for requests made with the admin key
    errors                  rows with status != 200
    energy_j, cost_usd,     sums over rows where the figure is known (NULL rows add nothing);
    gco2e
    j_per_output_token      energy over completion tokens, both taken over the rows that have
                            energy and at least one completion token (rows without an energy
                            figure must not dilute the ratio)
    measured/estimated_     share of energy_j whose energy_source starts with 'measured:' /
    energy_share            'estimated:'
    counterfactual_*        only 'auto' requests carry a counterfactual: what the team's most
                            capable member would have cost. cost_saved_usd =
                            sum(counterfactual_cost_usd - cost_usd) over rows with both
                            figures; energy_saved_j likewise, and null (unknown, not 0) when
                            no row has both energy figures.
    floats                  to 12 significant digits (0.3, not 0.30000000000000004)
"""

from __future__ import annotations

import csv
import io
import math
import sqlite3
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Connection, Engine
from sqlalchemy.exc import OperationalError

from store import Decision

GROUP_KEYS: tuple[str, ...] = ("team", "key", "model", "member", "day", "hour")
PERCENTILES: tuple[float, ...] = (0.50, 0.95, 0.99)
HIST_BUCKETS_PER_DOUBLING = 64
SQLITE_PERCENTILE_RESOLUTION = 2 ** (1 / HIST_BUCKETS_PER_DOUBLING) - 1
_NONPOSITIVE_BUCKET = -(10**9)  # latency <= 0 has no logarithm: it gets a bucket of its own
_BUCKET_OFFSET = 1 << 20  # keeps log2(latency) * K + offset positive for any positive double

# The output columns a group key expands to (a key is reported with its prefix, readable).
_GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "team": ("team",), "key": ("key_id", "key_prefix"), "model": ("model",),
    "member": ("member",), "day": ("day",), "hour": ("hour",),
}
METRIC_COLUMNS: tuple[str, ...] = (
    "requests", "errors", "input_tokens", "output_tokens", "cost_usd", "energy_j", "energy_wh",
    "gco2e", "j_per_output_token", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    "cache_hits", "measured_energy_share", "estimated_energy_share", "counterfactual_requests",
    "counterfactual_cost_usd", "counterfactual_energy_j", "cost_saved_usd", "energy_saved_j",
)
# Partial aggregates that add up across groups (how SQLite builds its totals row).
_SUMMED = ("requests", "errors", "input_tokens", "output_tokens", "cost_usd", "energy_j",
           "measured_j", "estimated_j", "jt_energy", "jt_tokens", "gco2e", "cache_hits",
           "cf_requests", "cf_cost", "cf_energy", "cost_saved", "energy_saved", "lat_n")


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """[start, end) in UTC, grouped by any subset of GROUP_KEYS, optionally filtered."""

    start: datetime
    end: datetime
    group_by: tuple[str, ...] = ()
    team: str | None = None
    key_id: int | None = None
    member: str | None = None

    def __post_init__(self) -> None:
        unknown = [g for g in self.group_by if g not in GROUP_KEYS]
        if unknown:
            raise ValueError(f"unknown group_by {', '.join(unknown)}; "
                             f"choose from {', '.join(GROUP_KEYS)}")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by names a key twice")
        object.__setattr__(self, "start", _utc(self.start))
        object.__setattr__(self, "end", _utc(self.end))
        if self.start >= self.end:
            raise ValueError("start must be before end")


@dataclass(slots=True)
class UsageReport:
    query: ReportQuery
    rows: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return report_columns(self.query.group_by)


def report_columns(group_by: Sequence[str]) -> list[str]:
    return [c for g in group_by for c in _GROUP_COLUMNS[g]] + list(METRIC_COLUMNS)


def _utc(t: datetime) -> datetime:
    # Naive times are taken as UTC: the decision log is written in UTC.
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def usage_report(bind: Engine | Connection, q: ReportQuery) -> UsageReport:
    """Run the report. `bind` may be an Engine or an open Connection."""
    ctx = bind.connect() if isinstance(bind, Engine) else nullcontext(bind)
    with ctx as conn:
        if conn.dialect.name == "postgresql":
            return _report_postgres(conn, q)
        if conn.dialect.name == "sqlite":
            return _report_sqlite(conn, q)
        raise NotImplementedError(f"usage reports support SQLite and PostgreSQL, "
                                  f"not {conn.dialect.name}")


# --- SQL pieces shared by both dialects --------------------------------------------------------

def _where(q: ReportQuery) -> list[ColumnElement[bool]]:
    # Bound through the column type, so SQLite compares against its stored text format.
    conds = [Decision.created_at >= q.start, Decision.created_at < q.end]
    if q.team is not None:
        conds.append(Decision.team == q.team)
    if q.key_id is not None:
        conds.append(Decision.key_id == q.key_id)
    if q.member is not None:
        conds.append(Decision.served_member == q.member)
    return conds


def _group_exprs(dialect: str, group_by: Sequence[str]) -> list[ColumnElement[Any]]:
    """One labelled expression per group key. Literals are inlined, never bound: PostgreSQL
    matches SELECT and GROUP BY expressions textually, and $1 is not $2."""
    lit = sa.literal_column
    out: list[ColumnElement[Any]] = []
    for g in group_by:
        if g == "team":
            out.append(Decision.team.label("g_team"))
        elif g == "key":
            out.append(Decision.key_id.label("g_key"))
        elif g == "model":
            out.append(Decision.requested_model.label("g_model"))
        elif g == "member":
            out.append(Decision.served_member.label("g_member"))
        elif dialect == "postgresql":
            utc = sa.func.timezone(lit("'UTC'"), Decision.created_at)
            out.append(sa.func.date_trunc(lit(f"'{g}'"), utc).label(f"g_{g}"))
        else:
            # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): a prefix is the bucket, and
            # substr is much cheaper than strftime's date parsing.
            n = 10 if g == "day" else 13
            out.append(sa.func.substr(Decision.created_at, lit("1"), lit(str(n))).label(f"g_{g}"))
    return out


def _aggregates() -> list[ColumnElement[Any]]:
    d = Decision
    s, c = sa.func.sum, sa.case
    has_tokens_and_energy = sa.and_(d.energy_j.is_not(None), d.completion_tokens > 0)
    return [
        sa.func.count().label("requests"),
        s(c((d.status != 200, 1), else_=0)).label("errors"),
        s(d.prompt_tokens).label("input_tokens"),
        s(d.completion_tokens).label("output_tokens"),
        s(d.cost_usd).label("cost_usd"),
        s(d.energy_j).label("energy_j"),
        s(c((d.energy_source.like("measured:%"), d.energy_j))).label("measured_j"),
        s(c((d.energy_source.like("estimated:%"), d.energy_j))).label("estimated_j"),
        s(c((has_tokens_and_energy, d.energy_j))).label("jt_energy"),
        s(c((has_tokens_and_energy, d.completion_tokens))).label("jt_tokens"),
        s(d.gco2e).label("gco2e"),
        s(c((d.cache_hit, 1), else_=0)).label("cache_hits"),
        sa.func.count(d.counterfactual_cost_usd).label("cf_requests"),
        s(d.counterfactual_cost_usd).label("cf_cost"),
        s(d.counterfactual_energy_j).label("cf_energy"),
        s(d.counterfactual_cost_usd - d.cost_usd).label("cost_saved"),
        s(d.counterfactual_energy_j - d.energy_j).label("energy_saved"),
        sa.func.count(d.latency_ms).label("lat_n"),
        sa.func.min(d.latency_ms).label("lat_min"),
        sa.func.max(d.latency_ms).label("lat_max"),
    ]


def _key_prefix(group_by: Sequence[str]) -> list[ColumnElement[Any]]:
    # A key's prefix never changes, so max() merely carries it along with key_id.
    return [sa.func.max(Decision.key_prefix).label("key_prefix")] if "key" in group_by else []


# --- turning partial aggregates into report rows -----------------------------------------------

def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


NO_REFERENCE_ENERGY = "unknown: no energy figure for the reference member"


def energy_saved_note(totals: dict[str, Any]) -> str | None:
    """Why energy_saved_j is null although 'auto' requests carry a counterfactual (the text the
    API and the dashboard show in place of a number); None when there is a figure or nothing
    to compare."""
    if totals.get("energy_saved_j") is None and totals.get("counterfactual_requests"):
        return NO_REFERENCE_ENERGY
    return None


def _tidy(v: Any) -> Any:
    """A float to 12 significant digits: sums of prices read 0.3, not 0.30000000000000004
    (the figures carry far fewer real digits than that)."""
    return float(f"{v:.12g}") if isinstance(v, float) else v


def _add(a: float | None, b: float | None) -> float | None:
    """Sum where None is unknown: unknown only when both are."""
    return b if a is None else a if b is None else a + b


def _finish(agg: dict[str, Any], pct: Sequence[float | None]) -> dict[str, Any]:
    row = _finish_raw(agg, pct)
    return {k: _tidy(v) for k, v in row.items()}


def _finish_raw(agg: dict[str, Any], pct: Sequence[float | None]) -> dict[str, Any]:
    energy = agg["energy_j"]
    return {
        "requests": agg["requests"] or 0,
        "errors": agg["errors"] or 0,
        "input_tokens": agg["input_tokens"] or 0,
        "output_tokens": agg["output_tokens"] or 0,
        "cost_usd": agg["cost_usd"] or 0.0,
        # No energy figure at all is unknown, not zero: a report must not pass it off as 0 J.
        "energy_j": energy,
        "energy_wh": None if energy is None else energy / 3600.0,
        "gco2e": agg["gco2e"],
        "j_per_output_token": _ratio(agg["jt_energy"], agg["jt_tokens"]),
        "latency_p50_ms": pct[0],
        "latency_p95_ms": pct[1],
        "latency_p99_ms": pct[2],
        "cache_hits": agg["cache_hits"] or 0,
        "measured_energy_share": _ratio(agg["measured_j"] or 0.0, energy),
        "estimated_energy_share": _ratio(agg["estimated_j"] or 0.0, energy),
        "counterfactual_requests": agg["cf_requests"] or 0,
        "counterfactual_cost_usd": agg["cf_cost"] or 0.0,
        # Unknown (None) when no counterfactual had an energy figure (a reference member with
        # none): a saving that cannot be computed is not a saving of 0 J.
        "counterfactual_energy_j": agg["cf_energy"],
        "cost_saved_usd": agg["cost_saved"] or 0.0,
        "energy_saved_j": agg["energy_saved"],
    }


# Requests made with the admin key belong to no team; reports name them (a team name cannot
# hold parentheses or spaces, so the label never meets a real team).
ADMIN_TEAM = "(admin key)"


def _group_values(group_by: Sequence[str], vals: Sequence[Any], prefix: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g, v in zip(group_by, vals, strict=True):
        if g == "team":
            out[g] = ADMIN_TEAM if v is None else v
        elif g == "key":
            out["key_id"], out["key_prefix"] = v, prefix
        elif g in ("day", "hour"):
            out[g] = _bucket_label(g, v)
        else:
            out[g] = v
    return out


def _bucket_label(g: str, v: Any) -> str | None:
    """'2026-03-01' for a day, '2026-03-01T13:00:00Z' for an hour, on either database."""
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d") if g == "day" else v.strftime("%Y-%m-%dT%H:00:00Z")
    s = str(v)
    return s[:10] if g == "day" else f"{s[:10]}T{s[11:13]}:00:00Z"


# --- PostgreSQL ----------------------------------------------------------------------------------

def _report_postgres(conn: Connection, q: ReportQuery) -> UsageReport:
    g = _group_exprs("postgresql", q.group_by)
    pcts = ",".join(repr(p) for p in PERCENTILES)
    cols: list[ColumnElement[Any]] = [*g, *_key_prefix(q.group_by), *_aggregates(),
                                      sa.func.percentile_cont(sa.literal_column(f"ARRAY[{pcts}]"))
                                      .within_group(Decision.latency_ms).label("pct")]
    stmt = sa.select(*cols).where(*_where(q))
    if g:
        bare = [e.element for e in g]  # type: ignore[attr-defined]
        # One scan and one snapshot for the groups and the totals row alike.
        cols.append(sa.func.grouping(*bare).label("is_total"))
        stmt = (sa.select(*cols).where(*_where(q))
                .group_by(sa.func.grouping_sets(sa.tuple_(*bare), sa.tuple_())))
    # JIT compilation costs 40-100 ms per report, more than it wins on a million rows; LOCAL
    # keeps the setting inside this transaction (a no-op on an autocommit connection).
    conn.exec_driver_sql("SET LOCAL jit = off")
    report = UsageReport(q)
    for r in conn.execute(stmt).mappings():
        pct = r["pct"] or [None] * len(PERCENTILES)
        row = _finish(r, pct)
        if g and not r["is_total"]:
            vals = [r[e.name] for e in g]  # type: ignore[attr-defined]
            report.rows.append({**_group_values(q.group_by, vals, r.get("key_prefix")), **row})
        else:
            report.totals = row
    if not report.totals:  # no grouping set answered: there were no rows at all
        report.totals = _finish(dict.fromkeys(_SUMMED), [None] * len(PERCENTILES))
    if not g:
        report.rows = [dict(report.totals)]
    _sort(report)
    return report


# --- SQLite --------------------------------------------------------------------------------------

def _ensure_log2(conn: Connection) -> None:
    """SQLite builds without SQLITE_ENABLE_MATH_FUNCTIONS lack log2(); lend it Python's."""
    try:
        conn.exec_driver_sql("SELECT log2(2.0)").scalar()
    except OperationalError:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        raw.create_function("log2", 1, lambda x: math.log2(x) if x and x > 0 else None,
                            deterministic=True)


def _report_sqlite(conn: Connection, q: ReportQuery) -> UsageReport:
    _ensure_log2(conn)
    g = _group_exprs("sqlite", q.group_by)
    names = [e.name for e in g]  # type: ignore[attr-defined]
    agg_stmt = sa.select(*g, *_key_prefix(q.group_by), *_aggregates()).where(*_where(q))
    if g:
        agg_stmt = agg_stmt.group_by(*g)

    # floor(log2(latency) * K) as CAST(... + offset): truncation equals floor once positive,
    # and it is cheaper than floor(). Latencies <= 0 (none in practice) are counted apart.
    k = HIST_BUCKETS_PER_DOUBLING
    bucket = sa.cast(sa.func.log2(Decision.latency_ms) * sa.literal_column(str(k))
                     + sa.literal_column(str(_BUCKET_OFFSET)), sa.Integer).label("bucket")
    hist_stmt = (sa.select(*g, bucket, sa.func.count().label("n"))
                 .where(*_where(q), Decision.latency_ms > 0)
                 .group_by(*g, bucket))

    hist: dict[tuple, dict[int, int]] = defaultdict(dict)
    all_hist: dict[int, int] = defaultdict(int)
    # Small groups (team x hour...) make this result long: keep the loop lean.
    for *key, b, n in conn.execute(hist_stmt).tuples().all():
        b -= _BUCKET_OFFSET
        hist[tuple(key)][b] = n
        all_hist[b] += n

    report = UsageReport(q)
    total: dict[str, Any] = dict.fromkeys(_SUMMED)  # None: unknown until a group knows it
    total.update(lat_min=None, lat_max=None)
    for r in conn.execute(agg_stmt).mappings():
        if r["requests"] == 0:
            continue  # an aggregate without GROUP BY answers one row even for no rows
        for name in _SUMMED:
            total[name] = _add(total[name], r[name])
        total["lat_min"] = _min(total["lat_min"], r["lat_min"])
        total["lat_max"] = _max(total["lat_max"], r["lat_max"])
        if g:
            vals = [r[n] for n in names]
            pct = hist_percentiles(_with_nonpositive(hist.get(tuple(vals), {}), r["lat_n"]),
                                   r["lat_min"], r["lat_max"])
            report.rows.append({**_group_values(q.group_by, vals, r.get("key_prefix")),
                                **_finish(r, pct)})
    report.totals = _finish(total, hist_percentiles(_with_nonpositive(all_hist, total["lat_n"]),
                                                    total["lat_min"], total["lat_max"]))
    if not g:
        report.rows = [dict(report.totals)]
    _sort(report)
    return report


def _with_nonpositive(hist: dict[int, int], lat_n: int | None) -> dict[int, int]:
    # Rows with a latency <= 0 have no logarithm: they are the latencies the histogram lacks.
    missing = (lat_n or 0) - sum(hist.values())
    return {**hist, _NONPOSITIVE_BUCKET: missing} if missing > 0 else hist


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def hist_percentiles(
    hist: dict[int, int], lo: float | None, hi: float | None,
    ps: Sequence[float] = PERCENTILES, per_doubling: int = HIST_BUCKETS_PER_DOUBLING,
) -> list[float | None]:
    """percentile_cont estimated from log-bucket counts {bucket: n} and the exact min/max."""
    buckets = sorted(hist.items())
    ends = list(accumulate(c for _, c in buckets))  # ends[i]: ranks below bucket i's end
    n = ends[-1] if ends else 0
    if n == 0 or lo is None or hi is None:
        return [None] * len(ps)

    def at_rank(rank: int) -> float:
        # The exact extremes are known; no need to estimate them.
        if rank <= 0:
            return lo
        if rank >= n - 1:
            return hi
        i = bisect_right(ends, rank)
        b, c = buckets[i]
        if b == _NONPOSITIVE_BUCKET:
            return min(lo, 0.0)
        b_lo = max(2.0 ** (b / per_doubling), lo)
        b_hi = min(2.0 ** ((b + 1) / per_doubling), hi)
        if b_hi <= b_lo:
            return b_lo
        # The bucket's c values taken as evenly spaced in log space across it.
        return b_lo * (b_hi / b_lo) ** ((rank - (ends[i] - c) + 0.5) / c)

    out: list[float | None] = []
    for p in ps:
        h = p * (n - 1)
        r0 = math.floor(h)
        v0 = at_rank(r0)
        out.append(v0 if h == r0 else v0 + (h - r0) * (at_rank(r0 + 1) - v0))
    return out


def _sort(report: UsageReport) -> None:
    # Stable, readable order: by group values, NULLs (e.g. admin traffic) last.
    cols = [c for g in report.query.group_by for c in _GROUP_COLUMNS[g] if c != "key_prefix"]
    report.rows.sort(key=lambda r: [(r[c] is None or r[c] == ADMIN_TEAM,
                                     r[c] if r[c] is not None else 0) for c in cols])


# --- CSV -----------------------------------------------------------------------------------------

def to_csv(report: UsageReport) -> str:
    """Header and one line per row (with no grouping, the single totals row)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=report.columns, lineterminator="\n")
    w.writeheader()
    for row in report.rows:
        w.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()
