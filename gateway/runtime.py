"""Everything a running gateway holds, built once at start-up and torn down at shutdown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from backends import PoolConfig
from bandits import make_bandit
from gateway import extras_check
from gateway.auth import Authenticator
from gateway.bandit_store import BanditStore
from gateway.budget_service import BudgetService
from gateway.cache_persistence import SqlPersister, load_from_sql
from gateway.finetune_service import FineTuningService
from gateway.guard import Guard
from gateway.keys import KeyRepo
from gateway.org_services import OrgServices
from gateway.policies import PolicyStore
from gateway.pool import Pool
from gateway.proxy import Proxy
from gateway.replicas import Replicas
from gateway.routing_service import BANDIT_NAME, RoutingService
from gateway.settings import Settings
from migrations import runner as migrate
from routing import (
    MemberPriorSpec,
    QualityPrior,
    RewardBounds,
    arm_prior,
    load_bundle,
    load_priors,
    router_class,
)
from routing.cache import (
    DEFAULT_THRESHOLD,
    CacheStore,
    MemoryStore,
    RedisStore,
    SemanticCache,
)
from store import DecisionLog, database
from telemetry import CarbonIntensity, Metrics

log = logging.getLogger("greengate")
STOP_STEP_S = 10.0  # a shutdown step that needs the database gives up after this


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    keys: KeyRepo
    auth: Authenticator
    decisions: DecisionLog
    pool: Pool
    proxy: Proxy
    routing: RoutingService
    budgets: BudgetService
    metrics: Metrics
    cache: SemanticCache | None
    # files, responses, batches, rate limits, request logs, tracing (issue 19)
    org: OrgServices | None = None
    replicas: Replicas | None = None  # shared state, with Redis
    finetune: FineTuningService | None = None  # /v1/fine_tuning/jobs


    @classmethod
    async def start(
        cls, settings: Settings, pool_config: PoolConfig, admin_key: str,
        extractor: Any | None = None,
    ) -> Runtime:
        extras_check.check(settings, pool_config)  # a missing extra: one line, before any work
        await asyncio.to_thread(migrate.upgrade, settings.database_url)
        engine = database.make_engine(settings.database_url)
        keys = KeyRepo(engine)
        auth = Authenticator(keys, admin_key, settings.key_cache_ttl_s,
                             fail_closed=settings.database_outage == "fail_closed")
        await auth.load()
        # An engine member loads its weights here: off the event loop.
        pool = await asyncio.to_thread(Pool, pool_config, settings)
        await pool.start()
        routing = await _routing(settings, engine, pool, extractor)
        decisions = DecisionLog(
            engine, settings.log_queue_size, settings.log_batch_size,
            settings.log_flush_interval_s, state_dir=settings.state_dir,
            ready_max_pending=settings.log_ready_max_pending,
            ready_max_lag_s=settings.log_ready_max_lag_s,
            drain_timeout_s=settings.log_drain_timeout_s, wal=settings.log_wal)
        decisions.start()
        routing.start()
        # With Redis, replicas share state (gateway.replicas); without, all of it is in memory.
        replicas = Replicas.create(
            settings.redis_url, settings.redis_prefix, settings.redis_outage,
            hold_s=settings.request_timeout_s + 30.0) if settings.redis_url else None
        budgets = BudgetService(engine, replicas.budgets if replicas else None,
                                on_change=replicas.budgets_changed if replicas else None)
        await asyncio.to_thread(budgets.load)
        metrics = Metrics()
        metrics.track_queue("decision_log", lambda: decisions.pending)
        metrics.track_queue("decision_journal", lambda: decisions.journaled)
        metrics.track_quarantine(lambda: decisions.quarantined)
        for name, eng in pool.engines().items():
            metrics.track_engine(name, eng.stats)
        carbon = CarbonIntensity(settings.carbon_g_per_kwh, settings.carbon_regions)
        cache = await asyncio.to_thread(_cache, settings, engine)
        proxy = Proxy(settings, pool, auth, decisions, routing, budgets.budgets, metrics, carbon,
                      Guard(await asyncio.to_thread(_safety_classifier, settings, routing),
                            names="shipped" if settings.pii_names else None),
                      cache)
        if replicas is not None:
            replicas.attach(budget_service=budgets, auth=auth, policies=routing.policies,
                            routing=routing, pool=pool)
            routing.on_update = replicas.bandit_updated
            replicas.start()
        org = await OrgServices.start(settings, pool_config, engine, proxy)
        # Fine-tuning jobs: adapters of earlier jobs served again, unfinished jobs resumed.
        finetune = FineTuningService(settings, engine, pool, org.files, budgets.budgets,
                                     routing)
        await finetune.start()
        log.info("greengate ready: %d members (%s), router %s%s", len(pool.members),
                 ", ".join(pool.members), settings.router,
                 f", shared state on redis (replica {replicas.replica_id})" if replicas else "")
        rt = cls(settings, engine, keys, auth, decisions, pool, proxy, routing, budgets,
                 metrics, cache, replicas=replicas, org=org)
        rt.finetune = finetune
        return rt

    async def stop(self) -> None:
        # Each step on its own: a database that is away (the bandit cannot be saved) must not
        # keep the decision log from draining and journaling.
        # The decision log bounds itself (log_drain_timeout_s, then the journal).
        for name, step, limit in (
                ("routing", self.routing.stop, STOP_STEP_S),
                ("batches, tracing", self._close_org, STOP_STEP_S),
                ("decision log", self.decisions.stop, None),
                ("cache", self._close_cache, STOP_STEP_S),
                ("fine-tuning", self._stop_finetune, STOP_STEP_S),
                ("pool", self.pool.aclose, None),
                ("fine-tuning reports", self._close_finetune, STOP_STEP_S),
                ("shared state", self._close_replicas, STOP_STEP_S)):
            try:
                await asyncio.wait_for(step(), limit)
            except Exception:
                log.exception("shutdown: stopping the %s failed", name)
        self.engine.dispose()

    async def _close_replicas(self) -> None:
        if self.replicas is not None:
            await self.replicas.stop()

    async def _close_org(self) -> None:
        if self.org is not None:
            await self.org.stop()

    # The stores of the OpenAI-protocol endpoints (/v1/files, /v1/responses, /v1/batches).
    @property
    def files(self) -> Any:
        return self.org.files if self.org else None

    @property
    def responses(self) -> Any:
        return self.org.responses if self.org else None

    @property
    def batches(self) -> Any:
        return self.org.batches if self.org else None

    @property
    def request_logs(self) -> Any:
        return self.org.request_logs if self.org else None

    @property
    def team_settings(self) -> Any:
        return self.org.team_settings if self.org else None

    async def _stop_finetune(self) -> None:
        if self.finetune is not None:
            await self.finetune.stop()

    async def _close_finetune(self) -> None:
        if self.finetune is not None:
            await self.finetune.close()

    async def _close_cache(self) -> None:
        if self.cache is not None and isinstance(self.cache.persist, SqlPersister):
            await asyncio.to_thread(self.cache.persist.close)  # finishes queued saves


async def _routing(
    settings: Settings, engine: Engine, pool: Pool, extractor: Any | None
) -> RoutingService:
    """The router for 'auto' and what it needs: features and a bandit (restored from SQL, or
    new with warm-start priors) when it learns, nothing more when it does not."""
    router_cls = router_class(settings.router)
    policies = PolicyStore(engine)
    await policies.for_team(None)  # the first ORM query pays for mapper set-up: pay it now
    if not router_cls.needs_features:
        return RoutingService(settings, engine, pool, router_cls.create(), policies)
    owned = extractor is None
    if extractor is None:
        from routing import FeatureExtractor

        log.info("loading the query feature models (MiniLM, task classifier, clusters)")
        extractor = await asyncio.to_thread(
            lambda: FeatureExtractor.default(settings.clusters).load())
    # One request's worth of work now, so the first client does not pay for thread start-up.
    await extractor.extract({"messages": [{"role": "user", "content": "warm-up"}]},
                            update_clusters=False)
    quality = _quality_prior(settings, pool, extractor.layout)
    # A bandit that learns residuals over a predictor is not interchangeable with one that
    # learned raw quality (or residuals over another predictor): each has its own row.
    name = BANDIT_NAME if quality is None else f"{BANDIT_NAME}/prior-{quality.fingerprint}"
    loaded = await asyncio.to_thread(BanditStore(engine).load, name)
    if loaded is not None and loaded[0].dim == extractor.dim:
        bandit, updates = loaded
        log.info("bandit restored from the database (%d feedback updates)", updates)
    else:
        params = {"alpha": settings.bandit_alpha} if settings.bandit == "linucb" else {}
        bandit = make_bandit(settings.bandit, extractor.dim, **params)
    priors = load_priors(settings.priors, extractor.dim, extractor.layout) if quality is None \
        else {}
    chat = [m.name for m in pool.members.values() if m.cfg.mode == "chat"]
    estimates = quality.estimate(chat, None, None) if quality is not None else {}
    # A typical context's squared norm: bias, one-hots and a few scaled features.
    typical_sq = float(extractor.dim) / 4.0
    for m in pool.members.values():
        if m.cfg.mode == "chat" and m.name not in bandit.arms:
            if quality is not None:
                e = estimates[m.name]
                bandit.add_arm(m.name, arm_prior(e.sigma, e.noise, extractor.dim, typical_sq))
                log.info("bandit arm %s: quality prior %s (mean %.3f, sigma %.3f)", m.name,
                         e.source, e.mean, e.sigma)
                continue
            prior = priors.get(m.cfg.prior or m.cfg.model)
            bandit.add_arm(m.name, prior)
            log.info("bandit arm %s: %s", m.name,
                     f"warm prior from {m.cfg.prior or m.cfg.model}" if prior else "cold start")
    bounds = RewardBounds(settings.reward_energy_max_j, settings.reward_cost_max_usd)
    router = router_cls.create(bandit=bandit, bounds=bounds, prior=quality)
    service = RoutingService(settings, engine, pool, router, policies, extractor, bandit, owned)
    service.bandit_name = name
    service.quality_prior = quality
    return service


def _quality_prior(settings: Settings, pool: Pool, layout: str) -> QualityPrior | None:
    """The shipped quality predictors with what greengate.yaml says about each member; None
    when switched off or when no predictor artifact is installed."""
    if not settings.quality_prior:
        return None
    bundle = load_bundle()
    if bundle is None:
        log.warning("no quality predictor artifact; the bandit starts from ridge priors")
        return None
    specs = {}
    for m in pool.members.values():
        c = m.cfg
        specs[m.name] = MemberPriorSpec(
            model=c.prior or c.model, like=c.like, declared=dict(c.quality or {}),
            params_b=c.energy.active_params_b if c.energy else None)
    prior = QualityPrior(bundle, specs, layout)
    if prior.bundle is None:
        log.warning("quality predictor fitted on another feature layout; not used")
        return None
    return prior


def _safety_classifier(settings: Settings, routing: RoutingService) -> Any | None:
    """The jailbreak / prompt-injection classifier reads the request text itself (not the
    routing embedding), so it runs with any router unless switched off."""
    if not settings.safety_classifier:
        return None
    try:
        from routing.safety import SafetyClassifier

        return SafetyClassifier.load()
    except (ImportError, OSError) as e:  # a broken install should not take the gateway down
        log.error("jailbreak classifier unavailable (%s); only PII checks run", e)
        return None


def _cache_verifier() -> Any | None:
    """The semantic cache's pair verifier; without it the cache falls back to the cosine
    threshold (a broken install should not take the gateway down)."""
    try:
        from routing.cache import PairVerifier

        return PairVerifier.load()
    except (ImportError, OSError, KeyError) as e:
        log.error("cache pair verifier unavailable (%s); cosine threshold only", e)
        return None


def _cache(settings: Settings, engine: Engine) -> SemanticCache | None:
    """The semantic cache, warmed from SQL (with Redis, only when Redis lost it)."""
    if not settings.cache:
        return None
    store: CacheStore
    if settings.cache_redis and settings.redis_url:
        store = RedisStore(settings.redis_url, prefix=f"{settings.redis_prefix}cache")
    else:
        store = MemoryStore()
    cache = SemanticCache(
        store, threshold=settings.cache_threshold or DEFAULT_THRESHOLD,
        ttl_s=settings.cache_ttl_s, max_entries_per_team=settings.cache_max_entries,
        persist=SqlPersister(engine), verifier=_cache_verifier())
    if not isinstance(store, RedisStore) or store.count() == 0:
        restored = load_from_sql(engine, cache)
        log.info("semantic cache: %d entries restored from the database", restored)
    return cache
