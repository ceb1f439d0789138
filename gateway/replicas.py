"""Several gateway replicas as one: what each publishes on the event bus and what it does
with what the others publish.

| event     | published when                        | others do                             |
| --------- | ------------------------------------- | ------------------------------------- |
| budgets   | a budget is created or deleted        | reload the rules from SQL             |
| keys      | a key is revoked or created           | drop it from the key cache            |
| policies  | a team policy is written or deleted   | reload the policies from SQL          |
| bandit    | feedback updated the bandit           | apply the same additive update        |
| breaker   | a member cooled down or recovered     | cool it down / restore it too         |
| resync    | (local) the bus reconnected           | reload budgets, keys and policies     |

Bandit learning merges because LinUCB's and linear Thompson's per-arm statistics (A = sum of
x x^T, b = sum of r x, the count) are sums: applying everyone's (x, arm, reward) in any order
gives every replica the statistics of all the feedback. A replica that starts late loads the
last SQL snapshot (each replica saves its merged state) and then hears the rest live."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.shared_budgets import SharedBudgets
from gateway.shared_state import EventBus, RedisLink

log = logging.getLogger("greengate.replicas")


@dataclass
class ReplicaStats:
    bandit_remote: int = 0  # updates applied that feedback on other replicas produced
    bandit_published: int = 0
    bandit_skipped: int = 0  # another bandit (name or dimension) than ours
    breaker_events: int = 0
    reloads: dict[str, int] = field(default_factory=dict)
    last_event_at: float | None = None


class Replicas:
    """The shared-state side of one replica; None-free: build it only when Redis is set."""

    def __init__(self, link: RedisLink, bus: EventBus, budgets: SharedBudgets) -> None:
        self.link = link
        self.bus = bus
        self.budgets = budgets
        self.stats = ReplicaStats()
        self._budget_service: Any = None
        self._auth: Any = None
        self._policies: Any = None
        self._routing: Any = None
        self._pool: Any = None

    @classmethod
    def create(cls, url: str, prefix: str, outage: str, hold_s: float) -> Replicas:
        link = RedisLink(url)
        bus = EventBus(link, prefix)
        budgets = SharedBudgets(link, prefix, outage, hold_s)  # type: ignore[arg-type]
        return cls(link, bus, budgets)

    @property
    def replica_id(self) -> str:
        return self.bus.replica

    # ---- wiring ------------------------------------------------------------------------
    def attach(self, *, budget_service: Any, auth: Any, policies: Any, routing: Any,
               pool: Any) -> None:
        """Listen for the others' changes and tell them about ours."""
        self._budget_service, self._auth, self._policies = budget_service, auth, policies
        self._routing, self._pool = routing, pool
        self.bus.on("budgets", self._reload_budgets)
        self.bus.on("keys", self._forget_key)
        self.bus.on("policies", self._reload_policies)
        self.bus.on("bandit", self._apply_bandit)
        self.bus.on("breaker", self._apply_breaker)
        self.bus.on("resync", self._resync)
        self.link.on_recover(self._resync)
        for m in pool.members.values():
            m.breaker.on_change = (
                lambda for_s, name=m.name: self._breaker_changed(name, for_s))

    def start(self) -> None:
        self.bus.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.budgets.close)  # queued charges reach Redis first
        await asyncio.to_thread(self.bus.stop)
        await self.link.aclose()

    # ---- what this replica publishes ---------------------------------------------------
    def budgets_changed(self) -> None:
        self.bus.publish("budgets")

    def key_changed(self, key_id: int | None) -> None:
        self.bus.publish("keys", {"key_id": key_id})

    def policies_changed(self, team: str | None) -> None:
        self.bus.publish("policies", {"team": team})

    async def bandit_updated(self, name: str, context: list[float], arm: str,
                             reward: float) -> None:
        self.stats.bandit_published += 1
        await self.bus.publish_async("bandit", {"name": name, "x": context, "arm": arm,
                                                "r": reward})

    def _breaker_changed(self, member: str, for_s: float) -> None:
        # Called on the event loop from the request path: the publish goes to a thread.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.bus.publish("breaker", {"member": member, "for_s": for_s})
            return
        loop.run_in_executor(None, self.bus.publish, "breaker",
                             {"member": member, "for_s": for_s})

    # ---- what the others published -----------------------------------------------------
    def _seen(self, kind: str) -> None:
        self.stats.reloads[kind] = self.stats.reloads.get(kind, 0) + 1
        self.stats.last_event_at = time.time()

    async def _reload_budgets(self, _: dict[str, Any]) -> None:
        self._seen("budgets")
        await asyncio.to_thread(self._budget_service.load)

    def _forget_key(self, msg: dict[str, Any]) -> None:
        self._seen("keys")
        key_id = msg.get("key_id")
        self._auth.forget(key_id if isinstance(key_id, int) else None)

    async def _reload_policies(self, _: dict[str, Any]) -> None:
        self._seen("policies")
        await self._policies.load()

    def _apply_bandit(self, msg: dict[str, Any]) -> None:
        self.stats.last_event_at = time.time()
        routing = self._routing
        bandit = getattr(routing, "bandit", None)
        x, arm, r = msg.get("x"), msg.get("arm"), msg.get("r")
        if (bandit is None or msg.get("name") != routing.bandit_name or not isinstance(x, list)
                or len(x) != bandit.dim or arm not in bandit.arms
                or not isinstance(r, int | float)):
            self.stats.bandit_skipped += 1
            return
        routing.apply_update(np.asarray(x, dtype=float), arm, float(r))
        self.stats.bandit_remote += 1

    def _apply_breaker(self, msg: dict[str, Any]) -> None:
        self.stats.breaker_events += 1
        self.stats.last_event_at = time.time()
        m = self._pool.get(str(msg.get("member")))
        for_s = msg.get("for_s")
        if m is None or not isinstance(for_s, int | float):
            return
        # The cooldown as the other replica set it, less the time the message took.
        left = float(for_s) - max(0.0, time.time() - float(msg.get("at") or time.time()))
        if for_s > 0 and left > 0:
            m.breaker.force_open(left)
        elif for_s == 0:
            m.breaker.force_close()

    async def _resync(self, _: dict[str, Any] | None = None) -> None:
        """Messages may have been missed: reload what SQL holds."""
        self._seen("resync")
        try:
            await asyncio.to_thread(self._budget_service.load)
            self._auth.forget(None)
            await self._policies.load()
        except Exception:
            log.exception("resync after a bus reconnect failed; the TTLs catch up")

    # ---- status ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        b, s = self.bus.stats, self.stats
        return {
            "replica": self.replica_id,
            "redis": "ok" if self.link.ok else "unreachable",
            "redis_down_since": self.link.stats.down_since,
            "bus_listening": self.bus.listening,
            "published": b.published, "received": b.received, "resyncs": b.resyncs,
            "waiting_to_publish": self.bus.waiting, "dropped": b.outbox_dropped,
            "events": dict(b.by_kind),
            "bandit": {"remote_updates": s.bandit_remote, "published": s.bandit_published,
                       "skipped": s.bandit_skipped},
            "breaker_events": s.breaker_events,
            "budgets": {"outage": self.budgets.outage, "owed": self.budgets.owed,
                        "reconciled": self.budgets.reconciled,
                        "outage_admitted": self.budgets.outage_admitted,
                        "outage_refused": self.budgets.outage_refused},
        }


__all__ = ["Replicas"]
