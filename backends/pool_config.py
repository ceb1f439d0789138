"""The pool file (greengate.yaml): typed, validated, and explained when wrong."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from telemetry import CarbonFeedConfig


class ConfigError(Exception):
    """A bad pool file; the message names the file, the field and the problem."""


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)


class EnergyProfile(BaseModel):
    """What we know about a member's energy: active parameters or a J/token figure, and where
    that number comes from. It feeds the estimator; measured energy overrides it."""

    model_config = ConfigDict(extra="forbid")
    active_params_b: float | None = Field(None, gt=0, description="Active parameters, billions.")
    total_params_b: float | None = Field(None, gt=0, description="Total parameters (MoE).")
    j_per_token: float | None = Field(None, gt=0, description="Joules per output token.")
    j_per_input_token: float | None = Field(None, ge=0)
    source: str | None = Field(None, description="Where the figure comes from (URL, paper).")
    region: str | None = None

    @model_validator(mode="after")
    def _one_figure(self) -> EnergyProfile:
        if self.active_params_b is None and self.j_per_token is None:
            raise ValueError("give active_params_b or j_per_token")
        return self


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connect_s: float = Field(5.0, gt=0)
    first_byte_s: float = Field(60.0, gt=0)
    total_s: float = Field(600.0, gt=0)


class SpeculativeOptions(BaseModel):
    """Speculative decoding for an engine member: a proposer drafts tokens that the model
    verifies in its normal step. Output is exactly what the model alone would produce."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["ngram", "draft", "self"] = Field(
        description="ngram: prompt lookup in the request's own context (no model); draft: a "
        "smaller checkpoint with the same tokenizer; self: the model's own first layers.")
    max_k: int = Field(5, ge=1, le=16, description="Draft tokens per request per step, at most.")
    adaptive: bool = Field(
        True, description="Choose k per request from its acceptance and per step from the "
        "measured step cost (turns itself off when the batch is compute-bound); false: always "
        "max_k.")
    ngram_min: int = Field(2, ge=1, le=16, description="ngram: shortest suffix match.")
    ngram_max: int = Field(4, ge=1, le=16, description="ngram: longest suffix match.")
    draft_model: str | None = Field(
        None, description="draft: a checkpoint folder sharing the member's tokenizer.")
    exit_layer: int | None = Field(
        None, ge=1, description="self: layers that draft (default: a quarter of the model's).")

    @model_validator(mode="after")
    def _method_needs(self) -> SpeculativeOptions:
        if self.method == "draft" and not self.draft_model:
            raise ValueError("speculative method 'draft' needs draft_model (a checkpoint folder)")
        if self.method != "draft" and self.draft_model:
            raise ValueError("draft_model is for speculative method 'draft' only")
        if self.ngram_min > self.ngram_max:
            raise ValueError("ngram_min must be <= ngram_max")
        return self


class EngineOptions(BaseModel):
    """How the bundled engine serves a `kind: engine` member. Defaults suit a laptop CPU."""

    model_config = ConfigDict(extra="forbid")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: the checkpoint's dtype on CUDA; on the CPU bfloat16 where it "
        "has native bf16 instructions, else float32.")
    block_size: int = Field(16, ge=1, le=256, description="Tokens per KV-cache block.")
    max_num_seqs: int = Field(64, ge=1, description="Sequences decoded together at most.")
    token_budget: int = Field(
        512, ge=16, description="Tokens per step: decodes first, then prefill chunks.")
    max_waiting: int = Field(256, ge=1, description="Queued requests; beyond it: 503.")
    kv_cache_gb: float = Field(0.5, gt=0, description="KV-cache size on the CPU.")
    gpu_memory_fraction: float = Field(
        0.85, gt=0, le=1, description="Share of free GPU memory (after weights) for the KV cache.")
    prefix_caching: bool = True
    default_max_tokens: int = Field(
        256, ge=1, description="Output cap when a request sets none (bounded by the context).")
    speculative: SpeculativeOptions | None = Field(
        None, description="Off unless set. A request opts out with the extension field "
        "`greengate: {speculative: false}`.")
    max_loras: int = Field(8, ge=0, description="LoRA adapter versions resident at once (LRU "
                           "beyond; 0 turns LoRA serving and fine-tuning off).")
    train_itl_slo_ms: float | None = Field(
        None, gt=0, description="Inter-token latency co-served fine-tuning must keep; unset: "
        "at most 10% over what inference alone measures.")


class ReplicaOptions(BaseModel):
    """How a member with several `endpoints` places requests on them (backends/replicas.py)."""

    model_config = ConfigDict(extra="forbid")
    policy: Literal["affinity", "least_load", "round_robin"] = Field(
        "affinity", description="affinity: least load plus prefix affinity (requests sharing "
        "a long prefix go to the replica that has it cached, unless it is overloaded).")
    scrape_interval_s: float = Field(0.5, gt=0, description="How often /metrics is read.")
    scrape_timeout_s: float = Field(2.0, gt=0)
    eject_after_scrape_failures: int = Field(2, ge=1)
    eject_s: float = Field(5.0, gt=0, description="An ejected replica is probed (/health) "
                           "after this long, and back in when the probe passes.")
    overload_kv_usage: float = Field(0.95, gt=0, le=1, description="KV usage at which the "
                                     "affinity replica is passed over.")
    overload_gap: float = Field(2, ge=0, description="Requests above the least loaded "
                                "replica's at which the affinity replica is passed over.")
    overload_ratio: float = Field(0.5, ge=0, description="...or this share of the least "
                                  "loaded replica's requests, whichever is larger.")
    affinity_block_chars: int = Field(64, ge=1, description="Characters per hashed block.")
    affinity_blocks: int = Field(4, ge=1, description="Leading blocks the affinity key "
                                 "hashes; shorter prompts are placed by load alone.")


class MemberConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:/-]+$")
    kind: Literal["openai", "litellm", "engine"]
    model: str = Field(min_length=1)
    mode: Literal["chat", "embedding"] = "chat"
    base_url: str | None = None
    api_key_env: str | None = None
    price: Price | None = None
    context_window: int | None = Field(None, gt=0)
    tags: list[str] = Field(default_factory=list)
    energy: EnergyProfile | None = None
    fallbacks: list[str] = Field(default_factory=list)
    prior: str | None = Field(
        None, description="Model name in the warm-start priors (default: `model`).")
    like: str | None = Field(
        None, description="A member without outcome data starts from this member's quality "
        "prior (with a wider uncertainty).")
    quality: dict[str, float] | None = Field(
        None, description="Declared benchmark scores in [0, 1] by dataset or task name "
        "(e.g. {mmlu: 0.71, gsm8k: 0.55}): the quality prior of a member without outcome data.")
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retries: int | None = Field(None, ge=0, le=10)
    request_timeout_s: float | None = Field(
        None, gt=0, description="The whole request's deadline when this member is asked first, "
        "across retries and fallbacks, and the most time spent on it as a fallback "
        "(default: the gateway's request_timeout_s).")
    extra_headers: dict[str, str] = Field(default_factory=dict)
    endpoints: list[str] | None = Field(
        None, min_length=1, description="kind 'openai' only: replicas of the same model "
        "(greengate engine servers, vLLM, SGLang, TGI...), each an OpenAI base URL; requests "
        "are placed among them by load and prefix affinity (`replicas`).")
    replicas: ReplicaOptions | None = None
    responses: Literal["translate", "native"] = Field(
        "translate", description="How POST /v1/responses reaches this member. translate: as "
        "chat completions (any member); native: the member serves the Responses API itself "
        "(OpenAI, vLLM, another greengate), so the request goes to its /responses and the "
        "streamed events pass through. Chat requests still go to /chat/completions. kind "
        "'openai' with base_url only.")
    engine: EngineOptions | None = Field(
        None, description="kind 'engine' only; `model` is then a checkpoint folder, or "
        "'tiny-random-llama' for the built-in random one.")

    @model_validator(mode="after")
    def _kind_needs(self) -> MemberConfig:
        if self.kind == "openai" and not self.base_url and not self.endpoints:
            raise ValueError("kind 'openai' needs base_url (or endpoints)")
        if self.endpoints and (self.kind != "openai" or self.base_url):
            raise ValueError("endpoints are for kind 'openai' in place of base_url")
        if self.endpoints and len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError("endpoints must be distinct")
        if self.replicas is not None and not self.endpoints:
            raise ValueError("'replicas' options need endpoints")
        if self.responses == "native" and (self.kind != "openai" or self.endpoints
                                           or self.mode != "chat"):
            raise ValueError("responses: native is for kind 'openai' chat members with "
                             "base_url (not endpoints)")
        if self.kind != "engine" and self.engine is not None:
            raise ValueError("'engine' options are for kind 'engine' only")
        if self.kind == "engine" and self.mode != "chat":
            raise ValueError("the bundled engine serves chat and completions, not embeddings")
        if self.name == "auto":
            raise ValueError("'auto' is reserved for routing")
        if self.like == self.name:
            raise ValueError("'like' must name another member")
        bad = sorted(k for k, v in (self.quality or {}).items() if not 0.0 <= v <= 1.0)
        if bad:
            raise ValueError(f"quality scores must lie in [0, 1]: {', '.join(bad)}")
        return self


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pool: list[MemberConfig] = Field(min_length=1)
    # The grid's carbon intensity over the day, for scheduling batches (default: built-in).
    carbon: CarbonFeedConfig | None = None

    @model_validator(mode="after")
    def _names(self) -> PoolConfig:
        names = [m.name for m in self.pool]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate member names: {', '.join(dupes)}")
        for m in self.pool:
            for fb in m.fallbacks:
                if fb not in names:
                    raise ValueError(f"member {m.name!r} falls back to unknown member {fb!r}")
            if m.like is not None and m.like not in names:
                raise ValueError(f"member {m.name!r}: like names unknown member {m.like!r}")
        return self

    def member(self, name: str) -> MemberConfig | None:
        return next((m for m in self.pool if m.name == name), None)


def _where(loc: tuple, data: object) -> str:
    """Turn ('pool', 0, 'price') into 'pool[0] (fake-small).price'."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            if isinstance(node, list) and part < len(node):
                node = node[part]
                if isinstance(node, dict) and "name" in node:
                    out += f" ({node['name']})"
            else:
                node = None
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, path: Path, env: Mapping[str, str] | None = None) -> str:
    """`${NAME}` and `${NAME:-default}` in the pool file from the environment (so the demo
    members follow GREENGATE_MOCK_UPSTREAM_PORT); a `${NAME}` that is unset and has no
    default is an error naming it, never an empty string."""
    env = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: ${{{name}}} is not set (give a default: ${{{name}:-...}})")

    return _ENV_REF.sub(sub, text)


def load_pool(path: Path) -> PoolConfig:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read pool file: {e.strerror or e}") from None
    text = expand_env(text, path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'pool' list at the top level")
    try:
        return PoolConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: invalid pool configuration"]
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {_where(tuple(err['loc']), data)}: {msg}")
        raise ConfigError("\n".join(lines)) from None


BUILTIN_ENGINE_MODEL = "tiny-random-llama"
RANDOM_WEIGHTS_TAG = "random-weights"  # a demo checkpoint: `auto` avoids it when it can


def default_pool() -> PoolConfig:
    """The pool when there is no pool file: the bundled engine on its built-in random model,
    so a first run works with no keys and no downloads."""
    return PoolConfig(pool=[MemberConfig(
        name=BUILTIN_ENGINE_MODEL, kind="engine", model=BUILTIN_ENGINE_MODEL,
        tags=["local", "engine", RANDOM_WEIGHTS_TAG])])


def with_engine_model(config: PoolConfig, checkpoint: Path) -> PoolConfig:
    """Serve `checkpoint` on the engine: it takes the built-in random model's place, or joins."""
    name = checkpoint.name or "engine"
    members = list(config.pool)
    for i, m in enumerate(members):
        if m.kind == "engine" and m.model == BUILTIN_ENGINE_MODEL:
            tags = [t for t in m.tags if t != RANDOM_WEIGHTS_TAG]
            members[i] = m.model_copy(update={"name": name, "model": str(checkpoint),
                                              "tags": tags})
            break
    else:
        members.append(MemberConfig(name=name, kind="engine", model=str(checkpoint),
                                    tags=["local", "engine"]))
    return PoolConfig.model_validate({"pool": [m.model_dump() for m in members]})
