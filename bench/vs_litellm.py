"""greengate against the LiteLLM proxy, side by side, in one run.

What it measures
    One fast fake OpenAI provider (bench/fast_upstream.py), greengate (`greengate serve`, a pool
    of two members on that provider) and the LiteLLM proxy (`litellm --config`, one model on the
    same provider) run as subprocesses on loopback. One load generator (this process: aiohttp
    on uvloop, closed loop, C requests in flight) drives, per cell (concurrency x streamed):

    - direct: the provider itself (the floor);
    - greengate: `model: fake-small` (routing off);
    - greengate_auto: `model: auto` (query features + the bandit choose the member), a
      distinct prompt per request, so the embedding cache never answers;
    - greengate_auto_repeat (`--auto-repeat`): `model: auto` with the one repeated prompt
      (embedding-cache hits after the first request);
    - litellm: the LiteLLM proxy, `model: fake-small`.

    The systems are interleaved per cell: each cell is `--rounds` rounds, every round gives each
    system one `--slot-s` slot, in an order rotated per round, so machine noise falls on all
    alike. Latency is time to the whole body (plain) or to `data: [DONE]` (streamed). Overhead =
    system percentile - direct percentile of the same cell. CPU ms per request = the server
    process's CPU seconds (utime+stime from /proc, children included) over requests it served
    in its slots: the figure that stays stable on a shared machine. RSS is read after warm-up
    and after the run.

    greengate runs with the semantic cache off (every request here has the same prompt, so the
    cache would answer them all) and the safety models off (LiteLLM classifies nothing; the
    person-name tagger alone costs ~6 ms of CPU per request here): the regex PII kinds still run;
    the decision log is on (SQLite, batched). The LiteLLM proxy runs in its own venv
    (.greengate/litellm-venv, created on first run; never greengate's .venv), no database,
    a master key (it refuses to start without one).

    Both proxies run `--workers` worker processes (greengate `serve --workers`, LiteLLM
    `--num_workers`): by default one per core, at most 2, when Redis answers at `--redis-url`
    (greengate's workers share budgets, keys and the bandit through it), else 1. One event
    loop is otherwise the ceiling: it saturates one core while the second is half idle.

How to run
    make bench-vs-litellm
    # = .venv/bin/python bench/vs_litellm.py --out bench/results/vs_litellm.json
    .venv/bin/python bench/vs_litellm.py --slot-s 1 --rounds 2 --concurrency 1 16   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
LITELLM_VENV = REPO / ".greengate" / "litellm-venv"
LITELLM_SPEC = os.environ.get("GREENGATE_BENCH_LITELLM", "litellm[proxy]")
PROMPT = "Say hello to the benchmark"
RUN_ID = secrets.token_hex(4)  # in every unique prompt: no earlier run's cache answers it
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

GG_POOL = """\
pool:
  - name: fake-small
    kind: openai
    model: fake-small
    base_url: http://{host}:{port}/v1
    price: {{input_per_1m: 0.5, output_per_1m: 1.5}}
    context_window: 8192
    energy: {{active_params_b: 8, source: "benchmark stand-in"}}
  - name: fake-large
    kind: openai
    model: fake-large
    base_url: http://{host}:{port}/v1
    price: {{input_per_1m: 3.0, output_per_1m: 15.0}}
    context_window: 32768
    energy: {{active_params_b: 70, source: "benchmark stand-in"}}
"""

LITELLM_CONFIG = """\
model_list:
  - model_name: fake-small
    litellm_params:
      model: openai/fake-small
      api_base: http://{host}:{port}/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
general_settings:
  master_key: {master_key}
"""


class BenchError(RuntimeError):
    pass


# ---- processes -------------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def env_with(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENGATE_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["NO_PROXY"] = env["no_proxy"] = f"{HOST},localhost"
    env.update(extra)
    return env


def ensure_litellm_venv() -> Path:
    """The LiteLLM proxy in its own venv, made from the base interpreter (not greengate's)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    base = getattr(sys, "_base_executable", sys.executable)
    print(f"creating {LITELLM_VENV} and installing {LITELLM_SPEC} (first run only)",
          file=sys.stderr)
    subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", LITELLM_SPEC],
                   check=True)
    return exe


def wait_ready(service: Service, url: str, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise BenchError(f"{service.name} exited ({service.proc.returncode}):\n"
                             f"{log_tail(service.log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise BenchError(f"{service.name} not ready at {url} after {timeout_s} s:\n"
                     f"{log_tail(service.log_path)}")


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def running(name: str, cmd: list[str], env: dict[str, str], workdir: Path, ready_url: str,
            timeout_s: float) -> Iterator[Service]:
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(name, proc, log_path, log_file)
    try:
        wait_ready(service, ready_url, timeout_s)
        yield service
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log_file.close()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    kids = [int(x) for x in text.split()]
    return kids + [g for k in kids for g in _children(k)]


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants (uvicorn/litellm workers)."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return total


def rss_mib(pid: int) -> float:
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total / 2**20


# ---- load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    name: str
    url: str  # .../v1/chat/completions
    model: str
    headers: dict[str, str]
    pid: int | None  # the server process whose CPU is charged
    unique: bool = False  # a distinct prompt per request (no cache can answer it)
    # Numbers the unique prompts across every slot of the run (a counter per slot repeated
    # the previous slots' prompts, which the gateway's embedding cache then answered).
    serial: Iterator[int] = field(default_factory=itertools.count, compare=False)


@dataclass
class CellResult:
    latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    first_error: str | None = None


def body_for(system: System, stream: bool, n: int = 0) -> bytes:
    prompt = f"{PROMPT} (run {RUN_ID}, request {n})" if system.unique else PROMPT
    body: dict[str, Any] = {"model": system.model,
                            "messages": [{"role": "user", "content": prompt}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


async def one(session: aiohttp.ClientSession, system: System, body: bytes,
              stream: bool) -> float:
    t0 = time.perf_counter()
    async with session.post(system.url, data=body, headers=system.headers) as resp:
        if resp.status != 200:
            raise BenchError(f"{system.name}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        if not stream:
            data = await resp.read()
            if b'"choices"' not in data:
                raise BenchError(f"{system.name}: no choices in {data[:300]!r}")
            return (time.perf_counter() - t0) * 1000
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            if b"data: [DONE]" in buf[-32:] or b"data: [DONE]" in buf:
                done = (time.perf_counter() - t0) * 1000
                if b'"content"' not in buf:
                    raise BenchError(f"{system.name}: stream without content: {buf[:300]!r}")
                return done
        raise BenchError(f"{system.name}: stream ended without [DONE]: {buf[-300:]!r}")


async def drive(session: aiohttp.ClientSession, system: System, stream: bool,
                concurrency: int, seconds: float, out: CellResult) -> None:
    body = body_for(system, stream)
    stop_at = time.perf_counter() + seconds
    cpu0 = cpu_s(system.pid) if system.pid else 0.0
    t0 = time.perf_counter()

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            try:
                b = body_for(system, stream, next(system.serial)) if system.unique else body
                out.latencies_ms.append(await one(session, system, b, stream))
                out.requests += 1
            except (BenchError, aiohttp.ClientError, TimeoutError) as e:
                out.errors += 1
                out.first_error = out.first_error or repr(e)[:500]
                await asyncio.sleep(0.05)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.wall_s += time.perf_counter() - t0
    if system.pid:
        out.cpu_s += cpu_s(system.pid) - cpu0


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarise(r: CellResult, direct: CellResult | None) -> dict[str, Any]:
    p50, p99 = pct(r.latencies_ms, 50), pct(r.latencies_ms, 99)
    out: dict[str, Any] = {
        "requests": r.requests, "errors": r.errors, "first_error": r.first_error,
        "p50_ms": p50, "p99_ms": p99, "rps": r.requests / r.wall_s if r.wall_s else None,
        "cpu_ms_per_request": 1000 * r.cpu_s / r.requests if r.requests else None,
        "p99_over_p50": p99 / p50 if p50 else None,
    }
    if direct is not None and p50 is not None:
        d50, d99 = pct(direct.latencies_ms, 50), pct(direct.latencies_ms, 99)
        out["overhead_p50_ms"] = p50 - d50 if d50 is not None else None
        out["overhead_p99_ms"] = p99 - d99 if d99 is not None and p99 is not None else None
    return out


async def measure(systems: list[System], args: argparse.Namespace) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for s in systems:  # warm every system: connections, imports, first-call caches
            for stream in (False, True):
                await drive(session, s, stream, max(args.concurrency), args.warmup_s,
                            CellResult())
        rss_warm = {s.name: rss_mib(s.pid) for s in systems if s.pid}
        for conc in args.concurrency:
            for stream in (False, True):
                key = f"c{conc}_{'stream' if stream else 'plain'}"
                results = {s.name: CellResult() for s in systems}
                for rnd in range(args.rounds):
                    order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
                    for s in order:
                        await drive(session, s, stream, conc, args.slot_s, results[s.name])
                direct = results.get("direct")
                cells[key] = {"concurrency": conc, "stream": stream, "systems": {
                    n: summarise(r, direct if n != "direct" else None)
                    for n, r in results.items()}}
                print(f"{key}: " + ", ".join(
                    f"{n} p50 {cells[key]['systems'][n]['p50_ms'] or 0:.1f} ms "
                    f"{cells[key]['systems'][n]['rps'] or 0:.0f} rps"
                    for n in results), file=sys.stderr)
        rss_end = {s.name: rss_mib(s.pid) for s in systems if s.pid}
    return {"cells": cells, "rss_mib": {n: {"after_warmup": rss_warm[n], "after_run": rss_end[n],
                                            "growth": rss_end[n] / rss_warm[n] - 1}
                                        for n in rss_warm}}


# ---- ratios, table, chart --------------------------------------------------------------------


def ratios(cells: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, cell in cells.items():
        s = cell["systems"]
        lite = s.get("litellm")
        if not lite:
            continue
        row: dict[str, Any] = {}
        for name in ("greengate", "greengate_auto"):
            g = s.get(name)
            if not g or not g["rps"] or not lite["rps"]:
                continue
            ov_g, ov_l = g.get("overhead_p99_ms"), lite.get("overhead_p99_ms")
            row[name] = {
                "rps_x_litellm": g["rps"] / lite["rps"],
                "p99_overhead_fraction_of_litellm": (max(ov_g, 0.0) / ov_l
                                                     if ov_g is not None and ov_l else None),
            }
        out[key] = row
    return out


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    cells, rt = doc["cells"], doc["ratios"]

    def g(key: str, sys_: str, field_: str) -> Any:
        return cells.get(key, {}).get("systems", {}).get(sys_, {}).get(field_)

    t: dict[str, Any] = {}
    if "c1_plain" in cells:
        t["overhead_p50_c1_plain_le_1.5ms"] = (g("c1_plain", "greengate", "overhead_p50_ms"),
                                               1.5)
        t["overhead_p50_c1_stream_le_2.5ms"] = (g("c1_stream", "greengate", "overhead_p50_ms"),
                                                2.5)
        t["auto_adds_le_10ms_p50_c1"] = (
            (g("c1_plain", "greengate_auto", "p50_ms") or 0) - (g("c1_plain", "greengate",
                                                                 "p50_ms") or 0), 10.0)
    if "c16_plain" in cells:
        t["auto_adds_le_10ms_p50_c16"] = (
            (g("c16_plain", "greengate_auto", "p50_ms") or 0) - (g("c16_plain", "greengate",
                                                                  "p50_ms") or 0), 10.0)
    for stream in ("plain", "stream"):
        a, b = cells.get(f"c16_{stream}"), cells.get(f"c64_{stream}")
        if a and b:
            t[f"rps_c64_ge_c16_{stream}"] = (g(f"c64_{stream}", "greengate", "rps"),
                                             g(f"c16_{stream}", "greengate", "rps"))
    t["max_p99_over_p50_greengate_le_3"] = (max(
        c["systems"]["greengate"]["p99_over_p50"] or 0 for c in cells.values()), 3.0)
    cpu_plain = [c["systems"]["greengate"]["cpu_ms_per_request"] for c in cells.values()
                 if not c["stream"]]
    cpu_stream = [c["systems"]["greengate"]["cpu_ms_per_request"] for c in cells.values()
                  if c["stream"]]
    t["max_cpu_ms_plain_le_2"] = (max(cpu_plain), 2.0)
    t["max_cpu_ms_stream_le_3"] = (max(cpu_stream), 3.0)
    if rt:
        t["min_rps_x_litellm_ge_5"] = (min(r["greengate"]["rps_x_litellm"] for r in rt.values()
                                           if "greengate" in r), 5.0)
        fr = [r["greengate"]["p99_overhead_fraction_of_litellm"] for r in rt.values()
              if "greengate" in r and r["greengate"]["p99_overhead_fraction_of_litellm"]
              is not None]
        t["max_p99_overhead_fraction_le_0.2"] = (max(fr) if fr else None, 0.2)
    rss = doc["rss_mib"].get("greengate")
    if rss:
        t["rss_growth_le_20pct"] = (rss["growth"], 0.2)
    return {k: {"value": v, "bound": b} for k, (v, b) in t.items()}


def print_table(doc: dict[str, Any]) -> None:
    names = list(next(iter(doc["cells"].values()))["systems"])
    print(f"\n{doc['meta']['note']}")
    print(f"{'cell':<12}{'system':<16}{'p50':>9}{'p99':>9}{'ovh p50':>9}{'ovh p99':>9}"
          f"{'RPS':>8}{'CPU ms/req':>11}{'errors':>7}")
    for key, cell in doc["cells"].items():
        for n in names:
            s = cell["systems"][n]

            def f(v: Any, w: int = 9, p: int = 1) -> str:
                return f"{v:{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"

            print(f"{key:<12}{n:<16}{f(s['p50_ms'])}{f(s['p99_ms'])}"
                  f"{f(s.get('overhead_p50_ms'), p=2)}{f(s.get('overhead_p99_ms'), p=2)}"
                  f"{f(s['rps'], 8, 0)}{f(s['cpu_ms_per_request'], 11, 2)}{s['errors']:>7}")
    print("\nratios (greengate / LiteLLM proxy, same cell):")
    for key, r in doc["ratios"].items():
        parts = [f"{n}: RPS x{v['rps_x_litellm']:.1f}, p99 overhead "
                 + (f"{v['p99_overhead_fraction_of_litellm']:.3f}"
                    if v["p99_overhead_fraction_of_litellm"] is not None else "-")
                 + " of LiteLLM's" for n, v in r.items()]
        print(f"  {key}: " + "; ".join(parts))
    print("\nRSS MiB (after warm-up -> after run): " + ", ".join(
        f"{n} {v['after_warmup']:.0f} -> {v['after_run']:.0f}"
        for n, v in doc["rss_mib"].items()))
    print("targets:")
    for k, v in doc["targets"].items():
        val = v["value"]
        print(f"  {k}: {val:.3f} (bound {v['bound']})" if isinstance(val, float)
              else f"  {k}: {val} (bound {v['bound']})")


def markdown(doc: dict[str, Any]) -> str:
    """The README table: one row per cell, greengate (routing off), auto and LiteLLM."""
    lines = ["| cell | direct p50 ms | greengate ovh p50 / p99 ms | auto ovh p50 / p99 ms | "
             "LiteLLM ovh p50 / p99 ms | RPS direct / greengate / auto / LiteLLM | "
             "CPU ms/req direct / greengate / auto / LiteLLM | greengate p99 / p50 | "
             "greengate RPS x LiteLLM | greengate p99 ovh / LiteLLM's |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v: Any, p: int = 1) -> str:
        return f"{v:.{p}f}" if isinstance(v, (int, float)) else "-"

    for key, cell in doc["cells"].items():
        s = cell["systems"]
        d, g, a, lt = (s.get(n, {}) for n in ("direct", "greengate", "greengate_auto",
                                              "litellm"))
        r = doc["ratios"].get(key, {}).get("greengate", {})
        lines.append(
            f"| {key} | {f(d.get('p50_ms'), 2)} | "
            f"{f(g.get('overhead_p50_ms'), 2)} / {f(g.get('overhead_p99_ms'), 2)} | "
            f"{f(a.get('overhead_p50_ms'), 2)} / {f(a.get('overhead_p99_ms'), 2)} | "
            f"{f(lt.get('overhead_p50_ms'))} / {f(lt.get('overhead_p99_ms'))} | "
            f"{f(d.get('rps'), 0)} / {f(g.get('rps'), 0)} / {f(a.get('rps'), 0)} / "
            f"{f(lt.get('rps'), 0)} | {f(d.get('cpu_ms_per_request'), 2)} / "
            f"{f(g.get('cpu_ms_per_request'), 2)} / "
            f"{f(a.get('cpu_ms_per_request'), 2)} / {f(lt.get('cpu_ms_per_request'), 2)} | "
            f"{f(g.get('p99_over_p50'), 2)} | "
            f"{f(r.get('rps_x_litellm'))} | {f(r.get('p99_overhead_fraction_of_litellm'), 3)} |")
    return "\n".join(lines)


def write_png(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = doc["cells"]
    keys = list(cells)
    names = [n for n in next(iter(cells.values()))["systems"] if n != "direct"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(keys))]
        for ax, fld in ((axes[0], "overhead_p50_ms"), (axes[1], "overhead_p99_ms")):
            ax.bar(xs, [max(cells[k]["systems"][n].get(fld) or 0, 0.01) for k in keys],
                   width, label=n)
        axes[2].bar(xs, [cells[k]["systems"][n]["rps"] or 0 for k in keys], width, label=n)
    xs = [k + len(names) / 2 * width for k in range(len(keys))]
    axes[2].plot(range(len(keys)), [cells[k]["systems"]["direct"]["rps"] or 0 for k in keys],
                 "k_", markersize=18, label="direct")
    for ax, title in zip(axes, ("overhead p50 over direct (ms, log)",
                                "overhead p99 over direct (ms, log)", "requests per second (log)"),
                         strict=True):
        ax.set_title(title)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=30, fontsize=8)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=8)
    fig.suptitle(doc["meta"]["note"], fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# ---- main ------------------------------------------------------------------------------------


def start_upstream(stack: ExitStack, workdir: Path) -> tuple[int, Service]:
    """The fast fake OpenAI provider every system here calls: its port and its service."""
    port = free_port()
    up = stack.enter_context(running(
        "upstream", [sys.executable, str(REPO / "bench" / "fast_upstream.py"), "--host", HOST,
                     "--port", str(port)], env_with({}), workdir,
        f"http://{HOST}:{port}/v1/models", 30))
    return port, up


def start_greengate(stack: ExitStack, workdir: Path, up_port: int, workers: int,
                    redis_url: str, name: str = "greengate") -> System:
    """`greengate serve` on the two-member pool over the provider at `up_port` (cache and safety
    models off, SQLite decision log in `workdir`); `workers` > 1 share state through Redis."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (workdir / "pool.yaml").write_text(GG_POOL.format(host=HOST, port=up_port))
    key = "gg-bench-" + secrets.token_urlsafe(12)
    env = {"GREENGATE_ADMIN_KEY": key, "GREENGATE_CACHE": "false",
           "GREENGATE_SAFETY_CLASSIFIER": "false", "GREENGATE_PII_NAMES": "false",
           "GREENGATE_LOG_LEVEL": "warning",
           "GREENGATE_DATABASE_URL": f"sqlite:///{workdir / 'gg.db'}",
           "GREENGATE_STATE_DIR": str(workdir / "state")}
    cmd = [sys.executable, "-m", "greengate.cli", "serve", "--config",
           str(workdir / "pool.yaml"), "--host", HOST, "--port", str(port)]
    if workers > 1:
        # a prefix of its own: no earlier run's budgets, keys or bandit state in Redis
        env |= {"GREENGATE_REDIS_URL": redis_url,
                "GREENGATE_REDIS_PREFIX": f"gg-bench-{secrets.token_hex(4)}:"}
        cmd += ["--workers", str(workers)]
    gg = stack.enter_context(running(name, cmd, env_with(env), workdir,
                                     f"http://{HOST}:{port}/health/ready", 180))
    return System(name, f"http://{HOST}:{port}/v1/chat/completions", "fake-small",
                  {"authorization": f"Bearer {key}"}, gg.proc.pid)


def start(stack: ExitStack, workdir: Path, args: argparse.Namespace) -> list[System]:
    up_port, up = start_upstream(stack, workdir)
    systems = [System("direct", f"http://{HOST}:{up_port}/v1/chat/completions", "fake-small",
                      {}, up.proc.pid)]
    if "greengate" in args.systems:
        gg = start_greengate(stack, workdir, up_port, args.workers, args.redis_url)
        systems.append(gg)
        url, hdr = gg.url, gg.headers
        if args.auto:
            # every auto request its own prompt: the embedding cache cannot answer it, so the
            # figure is the cost of features + bandit per new prompt
            systems.append(System("greengate_auto", url, "auto", hdr, gg.pid, True))
            if args.auto_repeat:  # one prompt repeated: embedding-cache hits after the first
                systems.append(System("greengate_auto_repeat", url, "auto", hdr, gg.pid))
    if "litellm" in args.systems:
        exe = ensure_litellm_venv()
        port = free_port()
        master = "sk-" + secrets.token_hex(32)
        (workdir / "litellm.yaml").write_text(LITELLM_CONFIG.format(host=HOST, port=up_port,
                                                                    master_key=master))
        lite = stack.enter_context(running(
            "litellm", [str(exe), "--config", str(workdir / "litellm.yaml"), "--host", HOST,
                        "--port", str(port), "--num_workers", str(args.workers)],
            env_with({"LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True"}), workdir,
            f"http://{HOST}:{port}/health/liveliness", 240))
        systems.append(System("litellm", f"http://{HOST}:{port}/v1/chat/completions",
                              "fake-small", {"authorization": f"Bearer {master}"},
                              lite.proc.pid))
    return systems


def litellm_version() -> str | None:
    py = LITELLM_VENV / "bin" / "python"
    if not py.exists():
        return None
    r = subprocess.run([str(py), "-c", "import importlib.metadata as m; "
                        "print(m.version('litellm'))"], capture_output=True, text=True)
    return r.stdout.strip() or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="JSON output (a PNG chart is written beside it)")
    p.add_argument("--png", type=Path, help="chart path (default: --out with .png)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    p.add_argument("--slot-s", type=float, default=2.5, help="seconds per system per round")
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--systems", nargs="+", default=["greengate", "litellm"],
                   choices=["greengate", "litellm"])
    p.add_argument("--no-auto", dest="auto", action="store_false",
                   help="skip the `model: auto` system")
    p.add_argument("--auto-repeat", action="store_true",
                   help="also `model: auto` with one repeated prompt (embedding-cache hits)")
    p.add_argument("--workers", "--gg-workers", type=int, default=None,
                   help="worker processes of each proxy (default: min(2, cores) when Redis "
                        "answers at --redis-url, else 1; greengate's > 1 need Redis)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--table", type=Path, help="print the README table of this JSON and exit")
    args = p.parse_args(argv)
    if args.workers is None:
        args.workers = min(2, os.cpu_count() or 1) if redis_answers(args.redis_url) else 1
        if args.workers == 1:
            print(f"vs_litellm.py: no Redis at {args.redis_url}: one worker per proxy",
                  file=sys.stderr)
    return args


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """A PING over a bare socket (the bench needs no Redis client of its own)."""
    u = urlsplit(url)
    try:
        with socket.create_connection((u.hostname or HOST, u.port or 6379), timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:  # the README table of an earlier run, no measuring
        print(markdown(json.loads(args.table.read_text())))
        return 0
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with tempfile.TemporaryDirectory(prefix="gg-vs-litellm-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        try:
            systems = start(stack, workdir, args)
            measured = runner(measure(systems, args))
        except BenchError as e:
            print(f"vs_litellm.py: error: {e}", file=sys.stderr)
            return 1
    doc: dict[str, Any] = {
        "meta": {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "loadavg_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(), "litellm": litellm_version(),
            "rounds": args.rounds, "slot_s": args.slot_s, "workers": args.workers,
            "note": (f"{os.cpu_count()} CPU cores shared by the load generator, the fake "
                     "provider, the proxy under test and other engineers' work; loopback; "
                     f"{args.rounds} interleaved rounds x {args.slot_s} s per system per "
                     "cell; greengate cache and safety models off"),
        },
        **measured,
    }
    doc["ratios"] = ratios(doc["cells"])
    doc["targets"] = targets(doc) if "greengate" in args.systems else {}
    print_table(doc)
    print("\n" + markdown(doc))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
        write_png(doc, args.png or args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
