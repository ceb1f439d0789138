"""Prometheus metrics, in a registry of the gateway's own (no process-wide globals)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("greengate_requests_total", "Requests by member and status.",
                                ["endpoint", "member", "status"], registry=r)
        self.latency = Histogram("greengate_request_latency_seconds", "End-to-end latency.",
                                 ["member", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("greengate_time_to_first_token_seconds", "Time to first token.",
                              ["member"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("greengate_tokens_total", "Tokens by member and kind.",
                              ["member", "kind"], registry=r)
        self.cost = Counter("greengate_cost_usd_total", "Dollars spent by member.", ["member"],
                            registry=r)
        self.energy = Counter("greengate_energy_joules_total",
                              "Energy by member and source (measured:* or estimated:*).",
                              ["member", "source"], registry=r)
        self.carbon = Counter("greengate_gco2e_total", "Grams of CO2e by member.", ["member"],
                              registry=r)
        self.routing = Counter("greengate_routing_choices_total", "Members chosen, by reason.",
                               ["member", "reason"], registry=r)
        self.budget_rejections = Counter("greengate_budget_rejections_total",
                                         "Requests refused by a budget.", ["scope", "metric"],
                                         registry=r)
        self.queue_depth = Gauge("greengate_queue_depth", "Items waiting, by queue.", ["queue"],
                                 registry=r)

        self.quarantined = Gauge("greengate_decisions_quarantined",
                                 "Decision rows the database refused, kept aside since start.",
                                 registry=r)
        self.kv_usage = Gauge("greengate_engine_kv_cache_usage",
                              "Share of the bundled engine's KV-cache blocks in use.", ["member"],
                              registry=r)
        self.engine_running = Gauge("greengate_engine_running_requests",
                                    "Requests the bundled engine is decoding.", ["member"],
                                    registry=r)
        self.engine_waiting = Gauge("greengate_engine_waiting_requests",
                                    "Requests queued in the bundled engine.", ["member"],
                                    registry=r)

        self.spec_tokens = Gauge("greengate_engine_spec_tokens",
                                 "Speculative draft tokens since start, proposed and accepted.",
                                 ["member", "method", "outcome"], registry=r)
        self.spec_acceptance = Gauge("greengate_engine_spec_acceptance",
                                     "Share of proposed draft tokens the model accepted (NaN "
                                     "before any).", ["member", "method"], registry=r)
        self.spec_mean_k = Gauge("greengate_engine_spec_mean_k",
                                 "Draft tokens per request per decode step, on average (the "
                                 "adaptive k; 0 when speculation turned itself off).",
                                 ["member", "method"], registry=r)

    def track_engine(self, member: str, stats: Callable[[], Mapping[str, Any]]) -> None:
        """Gauges read the engine's own counters at scrape time, so nothing polls it."""
        self.kv_usage.labels(member).set_function(lambda: float(stats()["kv_usage"]))
        self.engine_running.labels(member).set_function(lambda: float(stats()["running"]))
        self.engine_waiting.labels(member).set_function(lambda: float(stats()["waiting"]))
        spec = stats().get("speculative")
        if spec is None:
            return
        method = str(spec["method"])

        def figure(name: str) -> Callable[[], float]:
            def read() -> float:
                value = (stats().get("speculative") or {}).get(name)
                return float("nan") if value is None else float(value)
            return read

        self.spec_tokens.labels(member, method, "proposed").set_function(
            figure("proposed_tokens"))
        self.spec_tokens.labels(member, method, "accepted").set_function(
            figure("accepted_tokens"))
        self.spec_acceptance.labels(member, method).set_function(figure("acceptance"))
        self.spec_mean_k.labels(member, method).set_function(figure("mean_k"))

    def track_quarantine(self, count: Callable[[], float]) -> None:
        self.quarantined.set_function(count)

    def track_queue(self, name: str, depth: Callable[[], float]) -> None:
        self.queue_depth.labels(queue=name).set_function(depth)

    def observe(self, row: dict[str, Any]) -> None:
        """Account one finished request from its decision row."""
        member = row.get("served_member") or "none"
        status = str(row.get("status"))
        self.requests.labels(row.get("endpoint", ""), member, status).inc()
        if row.get("latency_ms") is not None:
            self.latency.labels(member, status).observe(row["latency_ms"] / 1000)
        if row.get("served_member") is None:
            return
        if row.get("ttft_ms") is not None:
            self.ttft.labels(member).observe(row["ttft_ms"] / 1000)
        self.tokens.labels(member, "prompt").inc(row.get("prompt_tokens") or 0)
        self.tokens.labels(member, "completion").inc(row.get("completion_tokens") or 0)
        if row.get("cost_usd"):
            self.cost.labels(member).inc(row["cost_usd"])
        if row.get("energy_j") is not None and row.get("energy_source"):
            self.energy.labels(member, row["energy_source"]).inc(row["energy_j"])
        if row.get("gco2e"):
            self.carbon.labels(member).inc(row["gco2e"])
        if row.get("route_reason"):
            self.routing.labels(member, row["route_reason"]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
