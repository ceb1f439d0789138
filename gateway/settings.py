"""The one typed settings object. Every knob comes from GREENGATE_* variables (or .env)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GREENGATE_", env_file=".env", extra="ignore")

    config: Path = Field(Path("greengate.yaml"), description="YAML file that declares the pool.")
    host: str = "127.0.0.1"
    port: int = 8000
    metrics_access: Literal["open", "admin", "port"] = Field(
        "open", description="Who may read the Prometheus metrics: open (GET /metrics on the API "
        "port, anyone who reaches it), admin (the admin key as a bearer) or port (not on the API "
        "port: a listener of its own on metrics_host:metrics_port).")
    metrics_host: str = Field("127.0.0.1", description="Address of the metrics_access=port "
                              "listener.")
    metrics_port: int = Field(9464, ge=1, le=65535, description="Port of the "
                              "metrics_access=port listener.")
    mock_upstream_port: int = Field(
        9000, ge=1, le=65535, description="Port of `greengate mock-upstream` (what `make run` "
        "starts); greengate.yaml's demo members point at ${GREENGATE_MOCK_UPSTREAM_PORT:-9000}.")
    database_url: str = Field(
        "sqlite:///greengate.db", description="SQLAlchemy URL of the decision log and state."
    )
    admin_key: SecretStr | None = Field(
        None,
        description="Admin key; also valid on /v1. When unset, `serve` generates one into "
        "state_dir/admin_key and prints where it is.",
    )
    state_dir: Path = Path(".greengate")
    max_body_bytes: int = 4 * 1024 * 1024
    router: str = Field("bandit", description="Router for model 'auto': bandit or cheapest.")
    bandit: str = Field("linucb", description="linucb, lints or egreedy.")
    bandit_alpha: float = Field(0.5, description="LinUCB exploration width.")
    priors: Path | None = Field(
        None, description="Warm-start priors (greengate fit-priors); default: the shipped ones.")
    clusters: int = Field(3, ge=1, description="Semantic clusters (GreenServ uses 3).")
    quality_prior: bool = Field(
        True, description="Start the bandit from the shipped quality predictors "
        "(routing/artifacts/quality_predictor.*) instead of the ridge priors.")
    reward_energy_max_j: float = Field(
        500.0, gt=0, description="Energy normalisation bound: this many joules count as 1.")
    reward_cost_max_usd: float = Field(
        0.01, gt=0, description="Cost normalisation bound: this many dollars count as 1.")
    bandit_save_interval_s: float = 5.0
    features_budget_ms: float | None = Field(
        15.0, description="Longest wait for a query embedding; beyond it (CPU saturated) a "
        "request is routed on the cheap features alone. Empty: always wait.")

    # Decision log: rows are queued and inserted in batches, off the response path.
    log_queue_size: int = 10_000
    log_batch_size: int = 500
    log_flush_interval_s: float = 0.5
    log_ready_max_pending: int | None = Field(
        None, ge=1, description="Readiness fails when more decision rows than this wait in "
        "memory; default: half the queue.")
    log_ready_max_lag_s: float = Field(
        30.0, gt=0, description="Readiness fails when rows wait and none was written this long.")
    log_wal: bool = Field(
        True, description="Append each decision row to a local journal (state_dir) before the "
        "response's last byte, replayed at start: a SIGKILL loses only requests in flight.")
    log_drain_timeout_s: float = Field(
        5.0, ge=0, description="At shutdown, time to write queued rows; the rest is journaled "
        "to state_dir and replayed at the next start.")

    # Upstream resilience defaults; each pool member may override them.
    retries: int = 2
    retry_backoff_s: float = 0.1
    retry_backoff_max_s: float = 2.0
    cooldown_failures: int = Field(
        3, ge=1, description="Distinct failed requests within cooldown_window_s that cool a "
        "member down (a request's own retries count once; 429s never count).")
    cooldown_window_s: float = Field(60.0, gt=0)
    cooldown_failure_ratio: float = Field(
        0.5, gt=0, le=1, description="...and at least this share of the requests the member "
        "saw in the window failed, so one caller's bad prompt cannot cool it for others.")
    cooldown_s: float = 30.0
    request_timeout_s: float = Field(
        300.0, gt=0, description="One deadline per request across every attempt and member; a "
        "member's request_timeout_s or the request's own `request_timeout_s` field shortens it.")
    database_outage: Literal["fail_open", "fail_closed"] = Field(
        "fail_open", description="With the database away: serve from the keys and policies in "
        "memory and journal the decision rows (fail_open), or answer 503 (fail_closed).")

    upstream_max_connections: int = Field(
        100, ge=1, description="Keep-alive connections to each remote member at most; more "
        "concurrent calls wait for one in a FIFO queue (bounded by the member's connect_s).")
    upstream_keepalive_s: float = Field(
        30.0, gt=0, description="An idle pooled connection is closed after this long.")
    workers: int = Field(
        1, ge=1, description="Worker processes for `serve` (> 1 needs GREENGATE_REDIS_URL).")
    client_keepalive_s: float = Field(
        75.0, gt=0, description="An idle client connection is kept open this long (uvicorn's "
        "own default is 5 s: a client pausing longer reconnects, and many at once reconnect "
        "together).")

    redis_url: str | None = Field(
        None, description="Redis for the state replicas share (redis://host:6379/0): budget "
        "counters, change events (budgets, keys, policies), bandit learning, member health, "
        "UI sessions.")
    redis_prefix: str = Field(
        "gg:", description="Prefix of every Redis key and channel: deployments (or tests) "
        "sharing one Redis keep apart by it.")
    redis_outage: Literal["fail_open", "fail_closed"] = Field(
        "fail_open", description="Redis away: admit budgeted requests on this replica's last "
        "view and charge them when it answers again (fail_open), or refuse them (fail_closed).")
    carbon_g_per_kwh: float = Field(
        480.0, gt=0, description="Default grid intensity (world 2023 average, Ember 2024).")
    carbon_regions: dict[str, float] = Field(
        default_factory=dict, description='Per-region gCO2e/kWh, e.g. {"eu-north": 30}.')
    cache: bool = Field(True, description="The semantic cache (team policies narrow it).")
    cache_threshold: float | None = Field(
        None, description="Cosine for a semantic hit; default: chosen on QQP (wrong hits <1%).")
    cache_ttl_s: float = 3600.0
    cache_max_entries: int = Field(10_000, description="Per team; least recently used go.")
    cache_redis: bool = Field(False, description="Share the cache through GREENGATE_REDIS_URL.")
    safety_classifier: bool = Field(
        True, description="Score every chat request for jailbreaks and harmful requests.")
    pii_names: bool = Field(
        True, description="Look for person names in every chat request (a small model: about "
        "6 ms of CPU per request on 2 cores); off: the structured PII kinds only (regexes, "
        "~15 us), and with safety_classifier off the safety stage stays on the event loop.")
    finetune_max_file_bytes: int = Field(
        50 * 1024 * 1024, ge=1, description="Largest training or validation file a "
        "fine-tuning job accepts (a larger one is a 400 at create).")
    finetune_max_examples: int = Field(100_000, ge=1, description="Examples per file at most.")
    finetune_max_tokens: int = Field(
        20_000_000, ge=1, description="Tokens per file at most (through the chat template).")
    energy_meter: str = Field("auto", description="auto, nvml, rapl or none (local engine).")
    engine_model: Path | None = Field(
        None, description="A local Hugging Face checkpoint folder for the bundled engine; it "
        "replaces the built-in tiny-random-llama (or joins the pool when there is none).")

    key_cache_ttl_s: float = 10.0
    files_max_bytes: int = Field(
        200 * 1024 * 1024, ge=1, description="Largest file /v1/files accepts (OpenAI's batch "
        "input limit is 200 MB).")
    responses_ttl_s: float = Field(
        30 * 86400.0, gt=0, description="Stored responses (store: true) are kept this long.")
    batch_tick_s: float = Field(5.0, gt=0, description="How often the batch runner looks for "
                                "due batches.")
    batch_concurrency: int = Field(4, ge=1, description="Requests of one batch in flight.")
    ratelimit_prefix: str = Field("gg:rl:", description="Redis key prefix of rate counters.")
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces endpoint (http://collector:4318/v1/traces): a "
        "span per request with the GenAI semantic conventions. Unset: no tracing.")
    otlp_headers: dict[str, str] = Field(default_factory=dict,
                                         description="Headers for the OTLP exporter.")
    otlp_delay_ms: int = Field(1000, ge=1, description="Spans are exported in batches at "
                               "most this often.")
    log_level: str = "info"
