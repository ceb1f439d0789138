"""Everything a running gateway holds, built once at start-up and torn down at shutdown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from backends.pool_config import PoolConfig
from gateway import database
from gateway.auth import Authenticator
from gateway.decision_log import DecisionLog
from gateway.keys import KeyRepo
from gateway.pool import Pool
from gateway.proxy import Proxy
from gateway.settings import Settings
from routing.router import make_router

log = logging.getLogger("greengate")


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    keys: KeyRepo
    auth: Authenticator
    decisions: DecisionLog
    pool: Pool
    proxy: Proxy

    @classmethod
    async def start(cls, settings: Settings, pool_config: PoolConfig, admin_key: str) -> Runtime:
        await asyncio.to_thread(database.upgrade, settings.database_url)
        engine = database.make_engine(settings.database_url)
        keys = KeyRepo(engine)
        auth = Authenticator(keys, admin_key, settings.key_cache_ttl_s)
        decisions = DecisionLog(
            engine, settings.log_queue_size, settings.log_batch_size, settings.log_flush_interval_s
        )
        decisions.start()
        pool = Pool(pool_config, settings)
        proxy = Proxy(settings, pool, auth, decisions, make_router(settings.router))
        log.info("greengate ready: %d members (%s)", len(pool.members), ", ".join(pool.members))
        return cls(settings, engine, keys, auth, decisions, pool, proxy)

    async def stop(self) -> None:
        await self.decisions.stop()
        await self.pool.aclose()
        self.engine.dispose()
