"""Latency overhead of greengate: the same chat completion sent straight to an upstream and
sent through the gateway, compared request by request.

What it measures
    The mock upstream (`greengate mock-upstream`) and the gateway (`greengate serve`, one pool
    member pointing at the mock) run as subprocesses on free loopback ports. One keep-alive
    `httpx.Client` per target sends a short chat completion; after a warm-up, N measured
    pairs (one direct call, one via the gateway, in alternating order so that drift and order
    effects fall on both alike) are timed per scenario:

    - non-stream: time until the whole JSON response has been read;
    - stream: time until `data: [DONE]`, and time until the first chunk with non-empty
      `delta.content`.

    Both targets get the same request bytes; streamed requests ask for `include_usage`, which
    the gateway asks the upstream for anyway, so the upstream does the same work either way.
    Overhead is reported two ways: gateway percentile minus direct percentile, and the
    percentiles of the paired per-request differences (gateway minus direct). Client, gateway
    and mock share this machine's CPUs, so the figures are an upper bound of what the gateway
    adds in front of a real, remote upstream and depend on the number of cores.

How to run
    .venv/bin/python bench/overhead.py --out bench/results/overhead.json
    .venv/bin/python bench/overhead.py --requests 100 --concurrency 8

`--concurrency C` runs C client threads sharing the two clients (default 1: sequential).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MODEL = "fake-small"
PROMPT = "Say hello to the benchmark"
REQUEST_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40

POOL_YAML = """\
pool:
  - name: {model}
    kind: openai
    model: {model}
    base_url: http://{host}:{port}/v1
    price: {{input_per_1m: 0.5, output_per_1m: 1.5}}
    context_window: 8192
"""


class BenchError(RuntimeError):
    """The benchmark cannot go on: a server did not start or a request failed."""


# ---- subprocesses ----------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


def free_port() -> int:
    """A loopback port that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def greengate_cmd(*args: str) -> list[str]:
    """`greengate ARGS` with this interpreter, so that the checked-out code is what runs."""
    return [sys.executable, "-m", "greengate.cli", *args]


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    # Loopback must never go through a proxy from the environment.
    env["NO_PROXY"] = env["no_proxy"] = ",".join(
        p for p in (env.get("NO_PROXY"), HOST, "localhost") if p)
    env.update(extra)
    return env


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def log_problems(path: Path) -> list[str]:
    """Lines of a server log that report an error (the servers log nothing per request)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if any(w in ln for w in ("ERROR", "CRITICAL", "Traceback"))]


def decision_rows(db: Path) -> dict[str, int] | None:
    """Rows the gateway wrote to its decision log, by HTTP status (None if unreadable)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM decisions GROUP BY status")
            return {str(status): int(n) for status, n in rows}
    except sqlite3.Error:
        return None


def wait_ready(service: Service, url: str, timeout_s: float) -> None:
    """Poll `url` until it answers 200; fail early if the process dies, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            code = service.proc.poll()
            if code is not None:
                raise BenchError(f"{service.name} exited with code {code} while starting")
            try:
                resp = client.get(url)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.1)
    raise BenchError(f"{service.name} not ready at {url} after {timeout_s:.0f} s ({last})")


def stop(service: Service) -> None:
    """SIGTERM, then SIGKILL if it has not exited after STOP_TIMEOUT_S."""
    code = service.proc.poll()
    if code is not None:
        print(f"warning: {service.name} had already exited with code {code}", file=sys.stderr)
    else:
        service.proc.send_signal(signal.SIGTERM)
        try:
            service.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"warning: {service.name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; killing",
                  file=sys.stderr)
            service.proc.kill()
            service.proc.wait()
    service.log_file.close()


@contextmanager
def running(name: str, cmd: list[str], env: dict[str, str], workdir: Path, ready_url: str,
            timeout_s: float) -> Iterator[Service]:
    """Start `cmd` (output to workdir/NAME.log), wait until ready, always stop it at the end."""
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")
    # Own session: a Ctrl-C meant for the benchmark does not reach the servers mid-run; the
    # benchmark stops them itself.
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(name, proc, log_path, log_file)
    try:
        wait_ready(service, ready_url, timeout_s)
        yield service
    finally:
        stop(service)


def start_servers(stack: ExitStack, workdir: Path, timeout_s: float) -> tuple[str, str, str]:
    """Start the mock and the gateway; return (direct base URL, gateway base URL, gateway key)."""
    mock_port, gw_port = free_port(), free_port()
    while gw_port == mock_port:
        gw_port = free_port()
    env = subprocess_env({})
    direct = f"http://{HOST}:{mock_port}/v1"
    stack.enter_context(running(
        "mock", greengate_cmd("mock-upstream", "--host", HOST, "--port", str(mock_port)),
        env, workdir, f"{direct}/models", timeout_s))

    config = workdir / "pool.yaml"
    config.write_text(POOL_YAML.format(model=MODEL, host=HOST, port=mock_port))
    key = "gg-bench-" + secrets.token_urlsafe(16)
    gw_env = subprocess_env({
        "GREENGATE_ADMIN_KEY": key,
        "GREENGATE_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
    })
    stack.enter_context(running(
        "gateway", greengate_cmd("serve", "--config", str(config), "--host", HOST,
                                 "--port", str(gw_port)),
        gw_env, workdir, f"http://{HOST}:{gw_port}/health/ready", timeout_s))
    return direct, f"http://{HOST}:{gw_port}/v1", key


# ---- requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    total_s: float
    first_content_s: float | None = None


@dataclass(frozen=True)
class Target:
    name: str
    client: httpx.Client


@dataclass(frozen=True)
class Scenario:
    name: str
    body: bytes
    call: Callable[[Target, bytes], Sample]
    metrics: tuple[str, ...]


def make_client(base_url: str, key: str | None, concurrency: int) -> httpx.Client:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.Client(base_url=base_url, headers=headers, limits=limits,
                        timeout=REQUEST_TIMEOUT_S, trust_env=False)


def failure(target: Target, resp: httpx.Response, why: str) -> BenchError:
    body = resp.read()[:500].decode(errors="replace")
    return BenchError(f"{target.name}: {why}: HTTP {resp.status_code} "
                      f"{dict(resp.headers)} {body}")


def call_plain(target: Target, body: bytes) -> Sample:
    t0 = time.perf_counter()
    resp = target.client.post("chat/completions", content=body)  # reads the whole body
    elapsed = time.perf_counter() - t0
    if resp.status_code != 200:
        raise failure(target, resp, "non-stream request failed")
    data = resp.json()
    if not data.get("choices") or not data["choices"][0].get("message", {}).get("content"):
        raise failure(target, resp, "response without content")
    return Sample(elapsed)


def has_content(payload: str) -> bool:
    chunk = json.loads(payload)
    if "error" in chunk:
        raise BenchError(f"error event in stream: {payload[:500]}")
    choices = chunk.get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


def call_stream(target: Target, body: bytes) -> Sample:
    """Time to the first content chunk and to `[DONE]`; the rest is drained for keep-alive."""
    t0 = time.perf_counter()
    first: float | None = None
    done: float | None = None
    with target.client.stream("POST", "chat/completions", content=body) as resp:
        if resp.status_code != 200:
            raise failure(target, resp, "stream request failed")
        for line in resp.iter_lines():
            if not line.startswith("data: ") or done is not None:
                continue
            payload = line[6:]
            if payload == "[DONE]":
                done = time.perf_counter() - t0
            elif first is None and has_content(payload):
                first = time.perf_counter() - t0
    if done is None or first is None:
        raise BenchError(f"{target.name}: stream ended without "
                         f"{'[DONE]' if done is None else 'a content chunk'}")
    return Sample(done, first)


def scenarios() -> list[Scenario]:
    messages = [{"role": "user", "content": PROMPT}]
    plain = {"model": MODEL, "messages": messages}
    streamed = {**plain, "stream": True, "stream_options": {"include_usage": True}}
    return [
        Scenario("non_stream", json.dumps(plain).encode(), call_plain, ("total",)),
        Scenario("stream", json.dumps(streamed).encode(), call_stream,
                 ("total", "first_content")),
    ]


Pair = tuple[Sample, Sample]  # (direct, gateway)


def call(scenario: Scenario, target: Target) -> Sample:
    """One request; transport and decoding errors become a BenchError that names the target."""
    try:
        return scenario.call(target, scenario.body)
    except (httpx.HTTPError, ValueError) as e:
        raise BenchError(f"{target.name}: {scenario.name} request failed: {e!r}") from e


def run_pair(scenario: Scenario, direct: Target, gateway: Target, index: int) -> Pair:
    """One call to each target; the order alternates with `index`."""
    if index % 2 == 0:
        d = call(scenario, direct)
        g = call(scenario, gateway)
    else:
        g = call(scenario, gateway)
        d = call(scenario, direct)
    return d, g


def run_pairs(scenario: Scenario, direct: Target, gateway: Target, count: int,
              pool: ThreadPoolExecutor | None) -> list[Pair]:
    if pool is None:
        return [run_pair(scenario, direct, gateway, i) for i in range(count)]
    return list(pool.map(lambda i: run_pair(scenario, direct, gateway, i), range(count)))


# ---- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def describe(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values_ms, 50),
        "p90": percentile(values_ms, 90),
        "p99": percentile(values_ms, 99),
        "mean": sum(values_ms) / len(values_ms),
        "min": min(values_ms),
        "max": max(values_ms),
    }


def metric_ms(sample: Sample, metric: str) -> float:
    value = sample.total_s if metric == "total" else sample.first_content_s
    assert value is not None
    return value * 1000


def summarize(pairs: list[Pair], metric: str) -> dict[str, Any]:
    direct = [metric_ms(d, metric) for d, _ in pairs]
    gateway = [metric_ms(g, metric) for _, g in pairs]
    sd, sg = describe(direct), describe(gateway)
    diffs = [g - d for d, g in zip(direct, gateway, strict=True)]
    return {
        "direct_ms": sd,
        "gateway_ms": sg,
        "overhead_ms": {q: sg[q] - sd[q] for q in ("p50", "p90", "p99", "mean")},
        "paired_diff_ms": describe(diffs),
        "ratio": {q: sg[q] / sd[q] for q in ("p50", "p90", "p99", "mean")},
    }


# ---- report ----------------------------------------------------------------------------------


COLUMNS = ("direct p50", "direct p99", "gw p50", "gw p99", "ovh p50", "ovh p99",
           "pair p50", "pair p99", "ratio p50", "ratio p99")


def table_row(name: str, s: dict[str, Any]) -> str:
    ms = [s["direct_ms"]["p50"], s["direct_ms"]["p99"], s["gateway_ms"]["p50"],
          s["gateway_ms"]["p99"], s["overhead_ms"]["p50"], s["overhead_ms"]["p99"],
          s["paired_diff_ms"]["p50"], s["paired_diff_ms"]["p99"]]
    cells = [f"{v:11.3f}" for v in ms] + [f"{s['ratio'][q]:11.2f}" for q in ("p50", "p99")]
    return f"{name:<22}" + "".join(cells)


def print_table(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    print(f"\ngreengate overhead: {meta['requests']} pairs per scenario, concurrency "
          f"{meta['concurrency']}, {meta['cpu_count']} CPUs, Python {meta['python']}")
    print("times in ms; ovh = gateway pXX - direct pXX; pair = pXX of (gateway - direct) "
          "per request")
    print(f"{'scenario.metric':<22}" + "".join(f"{c:>11}" for c in COLUMNS))
    for scenario, metrics in results.items():
        for metric, summary in metrics.items():
            print(table_row(f"{scenario}.{metric}", summary))


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {path}")


def machine_meta(args: argparse.Namespace) -> dict[str, Any]:
    try:
        version = metadata.version("greengate")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "requests": args.requests,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "cpu_count": os.cpu_count(),
        "loadavg_1m_at_end": os.getloadavg()[0],  # other work on the machine skews the figures
        "python": platform.python_version(),
        "platform": platform.platform(),
        "httpx": httpx.__version__,
        "greengate": version,
        "model": MODEL,
        "prompt": PROMPT,
        "order": "direct and gateway calls paired, order alternating per pair",
    }


# ---- main ------------------------------------------------------------------------------------


def measure(direct: Target, gateway: Target, args: argparse.Namespace
            ) -> tuple[dict[str, dict[str, Any]], dict[str, list[Pair]]]:
    results: dict[str, dict[str, Any]] = {}
    raw: dict[str, list[Pair]] = {}
    pool = ThreadPoolExecutor(args.concurrency) if args.concurrency > 1 else None
    try:
        for sc in scenarios():
            print(f"{sc.name}: {args.warmup} warm-up + {args.requests} measured pairs",
                  file=sys.stderr)
            run_pairs(sc, direct, gateway, args.warmup, pool)
            pairs = run_pairs(sc, direct, gateway, args.requests, pool)
            raw[sc.name] = pairs
            results[sc.name] = {m: summarize(pairs, m) for m in sc.metrics}
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # after an error: drop queued pairs
    return results, raw


def samples_json(raw: dict[str, list[Pair]]) -> dict[str, Any]:
    def one(s: Sample) -> list[float | None]:
        first = None if s.first_content_s is None else s.first_content_s * 1000
        return [s.total_s * 1000, first]

    return {name: {"fields": ["total_ms", "first_content_ms"],
                   "direct": [one(d) for d, _ in pairs],
                   "gateway": [one(g) for _, g in pairs]}
            for name, pairs in raw.items()}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        direct_url, gw_url, key = start_servers(stack, workdir, args.startup_timeout)
        direct = Target("direct", stack.enter_context(
            make_client(direct_url, None, args.concurrency)))
        gateway = Target("gateway", stack.enter_context(
            make_client(gw_url, key, args.concurrency)))
        results, raw = measure(direct, gateway, args)
    meta = machine_meta(args)
    meta["server_log_errors"] = {n: log_problems(workdir / f"{n}.log")[:20]
                                 for n in ("mock", "gateway")}
    meta["gateway_requests_sent"] = 2 * (args.warmup + args.requests)
    meta["gateway_decision_rows"] = decision_rows(workdir / "bench.db")
    document: dict[str, Any] = {"meta": meta, "results": results}
    if args.samples:
        document["samples"] = samples_json(raw)
    return document


def at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=at_least(1), default=400,
                   help="measured pairs (direct + gateway) per scenario (default 400)")
    p.add_argument("--warmup", type=at_least(0), default=50,
                   help="unmeasured pairs per scenario before measuring (default 50)")
    p.add_argument("--concurrency", type=at_least(1), default=1,
                   help="client threads sending pairs at once (default 1: sequential)")
    p.add_argument("--startup-timeout", type=float, default=60.0,
                   help="seconds to wait for each server to be ready (default 60)")
    p.add_argument("--samples", action="store_true",
                   help="also write every per-request time to --out")
    p.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    return p.parse_args(argv)


def exit_on_sigterm(signum: int, _frame: object) -> None:
    sys.exit(128 + signum)  # SystemExit unwinds the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="greengate-bench-") as tmp:
        workdir = Path(tmp)
        try:
            document = run(args, workdir)
        except BenchError as e:
            print(f"overhead.py: error: {e}", file=sys.stderr)
            for name in ("mock", "gateway"):
                print(f"--- last lines of {name}.log ---\n{log_tail(workdir / f'{name}.log')}",
                      file=sys.stderr)
            return 1
    print_table(document["results"], document["meta"])
    meta = document["meta"]
    if meta["gateway_decision_rows"] != {"200": meta["gateway_requests_sent"]}:
        print(f"warning: sent {meta['gateway_requests_sent']} requests to the gateway; its "
              f"decision log has {meta['gateway_decision_rows']} rows by status",
              file=sys.stderr)
    for name, problems in meta["server_log_errors"].items():
        if problems:
            print(f"warning: {name} logged errors:\n  " + "\n  ".join(problems),
                  file=sys.stderr)
    if args.out:
        write_json(args.out, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
