"""Usage-report latency on a large decision log, on SQLite and on PostgreSQL.

What it measures
    N decision rows (default one million) spread over the last 30 days are seeded into a fresh
    SQLite file and a fresh PostgreSQL schema, both created by the Alembic migrations, so the
    indexes are the production ones. The spread: 20 teams, 200 keys with Zipf-like traffic
    (plus some admin traffic without team or key), 8 members, 45% 'auto' requests carrying a
    counterfactual, ~4% errors, 5% cache hits, energy measured (NVML / RAPL), estimated, or
    unknown (NULL) depending on the member, a diurnal cycle. Rows are generated once, in time
    order (as the gateway writes them), and loaded with executemany in batches (SQLite) and
    COPY (PostgreSQL); PostgreSQL is then VACUUM ANALYZEd, as autovacuum would do on its own.
    SQLite gets no ANALYZE: the gateway never runs one.

    Each report (telemetry.reports.usage_report, the function behind GET /v1/reports/usage)
    runs 3 times on a warm cache; best and median wall times are reported, with a flag for
    whether the median is under 1 s.

How to run
    .venv/bin/python bench/reports.py --out bench/results/reports.json
    .venv/bin/python bench/reports.py --rows 100000 --skip-postgres

The PostgreSQL URL comes from --pg-url (default: GREENGATE_TEST_PG or the test database); the
schema it creates is dropped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from migrations import runner as migrate  # noqa: E402
from store import database  # noqa: E402
from telemetry.reports import ReportQuery, usage_report  # noqa: E402

PG_DEFAULT = os.environ.get(
    "GREENGATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
COLUMNS = (
    "id", "created_at", "key_id", "key_prefix", "team", "endpoint", "requested_model",
    "served_member", "upstream_model", "route_reason", "stream", "status", "error", "latency_ms",
    "ttft_ms", "prompt_tokens", "completion_tokens", "usage_source", "cost_usd", "energy_j",
    "energy_source", "cache_hit", "gco2e", "counterfactual_member", "counterfactual_cost_usd",
    "counterfactual_energy_j",
)
BATCH = 50_000
REPEATS = 3
DAYS = 30
GCO2E_PER_J = 400 / 3.6e6  # a 400 g/kWh grid


@dataclass(frozen=True)
class Member:
    name: str
    in_per_1m: float
    out_per_1m: float
    j_per_token: float | None
    source: str | None
    latency_median_ms: float
    weight: float


MEMBERS = (
    Member("small-a", 0.15, 0.6, 0.25, "measured:nvml", 350, 6),
    Member("small-b", 0.10, 0.4, 0.20, "measured:nvml", 300, 5),
    Member("local-cpu", 0.0, 0.0, 0.9, "measured:rapl", 1800, 2),
    Member("mid-a", 0.5, 1.5, 0.6, "estimated:declared-j-per-token", 700, 4),
    Member("mid-b", 0.8, 2.4, 0.7, "estimated:declared-j-per-token", 800, 3),
    Member("mid-c", 1.0, 3.0, 0.8, "estimated:llm-energy-model", 900, 2),
    Member("large-a", 3.0, 15.0, 2.5, "estimated:llm-energy-model", 2200, 2),
    Member("large-b", 5.0, 20.0, None, None, 2600, 1),  # no energy profile: NULL energy
)
COUNTERFACTUAL = MEMBERS[6]


@dataclass(frozen=True)
class Report:
    name: str
    days: int
    group_by: tuple[str, ...] = ()
    team: str | None = None


# The first four use the API's default range (7 days, ~23% of the rows); the rest are stress
# cases: the whole table (30 days), or thousands of small groups.
REPORTS = (
    Report("totals, 7 days", 7),
    Report("group by team, 7 days", 7, ("team",)),
    Report("group by member,day, 7 days", 7, ("member", "day")),
    Report("group by key, one team, 7 days", 7, ("key",), "team-00"),
    Report("totals, 30 days", 30),
    Report("group by member,day, 30 days", 30, ("member", "day")),
    Report("group by key, one team, 30 days", 30, ("key",), "team-00"),
    Report("group by team,hour, 7 days", 7, ("team", "hour")),
)


# ---- data --------------------------------------------------------------------------------------


def generate(n: int, now: datetime, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """n decision rows in time order, as tuples in COLUMNS order. created_at is text in the
    format SQLAlchemy stores on SQLite (PostgreSQL gets a '+00' appended)."""
    rnd = random.Random(seed)
    start = (now - timedelta(days=DAYS)).timestamp()
    span = DAYS * 86400.0
    # Diurnal cycle: busier in the (UTC) afternoon; drawn by rejection, then sorted.
    stamps: list[float] = []
    while len(stamps) < n:
        t = rnd.random() * span
        if rnd.random() < 0.55 + 0.45 * math.sin((t % 86400) / 86400 * 2 * math.pi - 1.6):
            stamps.append(start + t)
    stamps.sort()
    keys = list(range(1, 201))
    key_w = [1 / (k ** 0.8) for k in keys]
    member_w = [m.weight for m in MEMBERS]
    key_draws = rnd.choices(keys, key_w, k=n)
    member_draws = rnd.choices(range(len(MEMBERS)), member_w, k=n)
    for i, ts in enumerate(stamps):
        created = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        if rnd.random() < 0.02:
            key_id, prefix, team = None, "admin", None
        else:
            key_id = key_draws[i]
            prefix, team = f"gg-{key_id:05d}", f"team-{(key_id - 1) % 20:02d}"
        m = MEMBERS[member_draws[i]]
        auto = rnd.random() < 0.45
        u = rnd.random()
        endpoint = ("chat/completions" if u < 0.90 else
                    "embeddings" if u < 0.97 else "completions")
        u = rnd.random()
        status = 200 if u < 0.96 else 429 if u < 0.98 else 502 if u < 0.995 else 500
        stream = endpoint == "chat/completions" and rnd.random() < 0.4
        cache_hit = status == 200 and rnd.random() < 0.05
        latency = m.latency_median_ms * rnd.lognormvariate(0, 0.6)
        if cache_hit:
            latency = rnd.uniform(1, 8)
        elif status != 200:
            latency = rnd.uniform(2, 200) if status == 429 else latency * 0.5
        ttft = latency * rnd.uniform(0.05, 0.3) if stream and status == 200 else None
        pt = ct = cost = energy = source = gco2e = None
        cf_member = cf_cost = cf_energy = None
        if status == 200:
            pt = max(1, int(rnd.lognormvariate(5.5, 1.0)))
            ct = 0 if endpoint == "embeddings" else max(1, int(rnd.lognormvariate(4.8, 0.8)))
            cost = 0.0 if cache_hit else (pt * m.in_per_1m + ct * m.out_per_1m) / 1e6
            if m.j_per_token is not None:
                energy = 0.0 if cache_hit else (pt * 0.1 + ct) * m.j_per_token
                source, gco2e = m.source, energy * GCO2E_PER_J
            if auto:
                cf = COUNTERFACTUAL
                cf_member = cf.name
                cf_cost = (pt * cf.in_per_1m + ct * cf.out_per_1m) / 1e6
                cf_energy = (pt * 0.1 + ct) * (cf.j_per_token or 0)
        yield (
            uuid.UUID(int=rnd.getrandbits(128)).hex, created, key_id, prefix, team, endpoint,
            "auto" if auto else m.name, m.name, "up-" + m.name,
            "auto:cheapest" if auto else "requested", stream, status,
            None if status == 200 else f"upstream answered {status}", latency, ttft, pt, ct,
            "upstream" if status == 200 else None, cost, energy, source, cache_hit, gco2e,
            cf_member, cf_cost, cf_energy,
        )


# ---- seeding -----------------------------------------------------------------------------------


def seed_sqlite(path: Path, rows: list[tuple[Any, ...]]) -> float:
    t0 = time.perf_counter()
    migrate.upgrade(f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    # Durability is pointless for a throwaway bench file; the gateway itself uses WAL+NORMAL.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    sql = (f"INSERT INTO decisions ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))})")
    for i in range(0, len(rows), BATCH):
        conn.executemany(sql, rows[i:i + BATCH])
        conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t0


def seed_postgres(url: str, rows: list[tuple[Any, ...]]) -> float:
    import psycopg

    t0 = time.perf_counter()
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        with raw.cursor() as cur, cur.copy(
                f"COPY decisions ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((*r[:1], r[1] + "+00", *r[2:]))
        raw.commit()
    engine.dispose()
    # What autovacuum would do after a while: statistics for the planner, a visibility map.
    vac = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with vac.connect() as conn:
        conn.execute(sa.text("VACUUM ANALYZE decisions"))
    vac.dispose()
    return time.perf_counter() - t0


# ---- timing ------------------------------------------------------------------------------------


def time_reports(engine: sa.Engine, now: datetime) -> list[dict[str, Any]]:
    out = []
    for rep in REPORTS:
        q = ReportQuery(now - timedelta(days=rep.days), now, rep.group_by, team=rep.team)
        times, rows, requests = [], 0, 0
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            result = usage_report(engine, q)
            times.append(time.perf_counter() - t0)
            rows, requests = len(result.rows), result.totals["requests"]
        best, median = min(times), statistics.median(times)
        out.append({"report": rep.name, "group_by": list(rep.group_by), "team": rep.team,
                    "days": rep.days, "rows": rows, "requests": requests,
                    "best_s": round(best, 4), "median_s": round(median, 4),
                    "times_s": [round(t, 4) for t in times], "under_1s": median < 1.0})
    return out


def run_db(name: str, seed: Callable[[], float], url: str,
           now: datetime) -> dict[str, Any]:
    print(f"[{name}] seeding ...", flush=True)
    seed_s = seed()
    print(f"[{name}] seeded in {seed_s:.1f} s; timing reports ...", flush=True)
    engine = database.make_engine(url)
    try:
        results = time_reports(engine, now)
    finally:
        engine.dispose()
    return {"database": name, "seed_s": round(seed_s, 1), "reports": results}


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"\n{'database':<11}{'report':<36}{'groups':>7}{'best s':>9}{'median s':>10}  <1s")
    for db in results:
        for r in db["reports"]:
            print(f"{db['database']:<11}{r['report']:<36}{r['rows']:>7}{r['best_s']:>9.3f}"
                  f"{r['median_s']:>10.3f}  {'yes' if r['under_1s'] else 'NO'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--pg-url", default=PG_DEFAULT)
    p.add_argument("--skip-postgres", action="store_true")
    p.add_argument("--skip-sqlite", action="store_true")
    args = p.parse_args()

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    t0 = time.perf_counter()
    rows = list(generate(args.rows, now))
    gen_s = time.perf_counter() - t0
    print(f"generated {len(rows)} rows in {gen_s:.1f} s", flush=True)

    results: list[dict[str, Any]] = []
    pg_version: str | None = None
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory(prefix="gg-reports-") as tmp:
            path = Path(tmp) / "decisions.db"
            results.append(run_db("sqlite", lambda: seed_sqlite(path, rows),
                                  f"sqlite:///{path}", now))
    if not args.skip_postgres:
        schema = "gg_bench_" + uuid.uuid4().hex[:10]
        admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
        sep = "&" if "?" in args.pg_url else "?"
        url = f"{args.pg_url}{sep}options=-csearch_path%3D{schema}"
        with admin.connect() as conn:
            pg_version = conn.execute(sa.text("SHOW server_version")).scalar_one()
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        try:
            results.append(run_db("postgresql", lambda: seed_postgres(url, rows), url, now))
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()

    print_table(results)
    # Other work on the machine inflates wall times: say how busy it was.
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.out:
        meta = {"rows": len(rows), "generate_s": round(gen_s, 1), "now": now.isoformat(),
                "repeats": REPEATS, "cpus": os.cpu_count(), "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version, "sqlalchemy": sa.__version__,
                "postgresql": pg_version, "load_avg_1_5_15": os.getloadavg(),
                "when": datetime.now(UTC).isoformat(timespec="seconds")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
