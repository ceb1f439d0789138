"""The running pool: members built from the pool file, their prices, health and cooldowns."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backends import (
    CircuitBreaker,
    EnergyProfile,
    HttpLimits,
    LiteLLMMember,
    Member,
    MemberConfig,
    OpenAICompatMember,
    PoolConfig,
    Price,
    ReplicaMember,
)
from extras import require
from gateway.settings import Settings
from routing import Candidate
from telemetry import (
    EnergyMeter,
    EnergyReading,
    Prices,
    detect_meter,
    estimate_from_declared,
    estimate_from_params,
    litellm_context_window,
    litellm_prices,
)

if TYPE_CHECKING:
    from backends import EngineMember

log = logging.getLogger("greengate.pool")


@dataclass
class PoolMember:
    cfg: MemberConfig
    backend: Member
    breaker: CircuitBreaker
    prices: Prices | None
    context_window: int | None
    retries: int
    latency_ewma_ms: float | None = None  # time to the first byte, recent calls weighted most
    # A fine-tuned adapter: the one team that sees it (its files namespace) and its base.
    team: str | None = None
    base_member: str | None = None

    def visible_to(self, team: str) -> bool:
        """Whether a principal of `team` (its namespace: gateway.files.namespace) may see and
        ask for this member; another team's adapter is answered as a missing model."""
        return self.team is None or self.team == team

    def observe_latency(self, ms: float) -> None:
        prev = self.latency_ewma_ms
        self.latency_ewma_ms = ms if prev is None else 0.8 * prev + 0.2 * ms

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def is_engine(self) -> bool:
        """A bundled-engine member (its backend is an EngineMember): asked by kind, so the
        gateway needs the [engine] extra only when the pool has one."""
        return self.cfg.kind == "engine" and self.base_member is None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        return self.prices.cost(prompt_tokens, completion_tokens) if self.prices else None

    def energy(self, prompt_tokens: int, completion_tokens: int) -> EnergyReading | None:
        e = self.cfg.energy
        if e is None:
            return None
        return estimate_from_declared(
            e.j_per_token, e.j_per_input_token, prompt_tokens, completion_tokens
        ) or estimate_from_params(e.active_params_b, e.total_params_b, completion_tokens)

    def candidate(self) -> Candidate:
        p = self.prices
        return Candidate(
            name=self.name,
            input_per_1m=p.input_per_1m if p else 0.0,
            output_per_1m=p.output_per_1m if p else 0.0,
            healthy=self.breaker.available(),
            context_window=self.context_window,
            tags=tuple(self.cfg.tags),
        )


def _prices(cfg: MemberConfig) -> Prices | None:
    if cfg.price is not None:
        return Prices(cfg.price.input_per_1m, cfg.price.output_per_1m, "config")
    found = litellm_prices(cfg.model)
    if found is None:
        log.warning("member %s: no price in the pool file and none known to litellm; "
                    "its cost is logged as unknown", cfg.name)
    return found


class Pool:
    def __init__(self, config: PoolConfig, settings: Settings) -> None:
        self.config = config
        limits = HttpLimits(settings.upstream_max_connections, settings.upstream_keepalive_s)
        self.members: dict[str, PoolMember] = {}
        self.meter: EnergyMeter | None = None
        for cfg in config.pool:
            if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
                log.warning("member %s: $%s is not set; calling without a key",
                            cfg.name, cfg.api_key_env)
            backend: Member
            if cfg.kind == "openai" and cfg.endpoints:
                backend = ReplicaMember(cfg, limits)
            elif cfg.kind == "openai":
                backend = OpenAICompatMember(cfg, limits)
            elif cfg.kind == "litellm":
                backend = LiteLLMMember(cfg)
            else:
                backend, cfg = self._engine_member(cfg, settings)
            self.members[cfg.name] = PoolMember(
                cfg=cfg,
                backend=backend,
                breaker=CircuitBreaker(settings.cooldown_failures, settings.cooldown_s,
                                       settings.cooldown_window_s,
                                       settings.cooldown_failure_ratio),
                prices=_prices(cfg),
                # An engine member's window already honours the pool file and its KV cache.
                context_window=backend.context_window if cfg.kind == "engine"
                else cfg.context_window or litellm_context_window(cfg.model),
                retries=cfg.retries if cfg.retries is not None else settings.retries,
            )

    def _engine_member(self, cfg: MemberConfig,
                       settings: Settings) -> tuple[EngineMember, MemberConfig]:
        if self.meter is None:
            # One meter for every engine member: they share the device it measures.
            self.meter = detect_meter(settings.energy_meter)
        engine = require("backends.engine_backend", "engine", f"the engine member {cfg.name!r}")
        backend = engine.EngineMember(cfg, settings.state_dir, self.meter)
        update: dict = {}
        if cfg.price is None:  # local compute has no per-token price list
            update["price"] = Price(input_per_1m=0.0, output_per_1m=0.0)
        if cfg.energy is None:
            # Until (or where) a meter measures it, estimate from the checkpoint's real size.
            update["energy"] = EnergyProfile(
                active_params_b=backend.num_params / 1e9,
                source=f"parameter count of {backend.checkpoint.name}")
        return backend, cfg.model_copy(update=update)

    def engines(self) -> dict[str, EngineMember]:
        return {n: m.backend for n, m in self.members.items()
                if m.is_engine}  # type: ignore[misc]

    def get(self, name: str) -> PoolMember | None:
        return self.members.get(name)

    def add(self, member: PoolMember) -> None:
        """A member that joins while serving (a fine-tuned adapter). A new dict, not an
        insert: loops over the members on other threads keep the one they started with."""
        self.members = {**self.members, member.name: member}

    def serving(self, endpoint: str) -> list[PoolMember]:
        mode = "embedding" if endpoint == "embeddings" else "chat"
        return [m for m in self.members.values() if m.cfg.mode == mode]

    def replica_members(self) -> dict[str, ReplicaMember]:
        return {n: m.backend for n, m in self.members.items()
                if isinstance(m.backend, ReplicaMember)}

    async def start(self) -> None:
        """Background work members need before serving: replica members' /metrics scraping
        (the first scrape is awaited, so the first placement sees load)."""
        for backend in self.replica_members().values():
            await backend.start()

    async def aclose(self) -> None:
        for m in self.members.values():
            await m.backend.aclose()
        if self.meter is not None:
            self.meter.close()
