"""Team policies in SQL, read through a short-lived cache (other replicas' edits show up
within the TTL; this replica's own edits at once)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from gateway.schema import PolicyRow
from routing.policy import Policy

DEFAULT_TEAM = "default"


class PolicyStore:
    def __init__(self, engine: Engine, ttl_s: float = 5.0) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Policy | None]] = {}

    def _read(self, team: str) -> Policy | None:
        with Session(self.engine) as s:
            row = s.get(PolicyRow, team)
            return Policy.model_validate(row.policy) if row else None

    async def _cached(self, team: str) -> Policy | None:
        hit = self._cache.get(team)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        policy = await asyncio.to_thread(self._read, team)
        self._cache[team] = (now, policy)
        return policy

    async def for_team(self, team: str | None) -> Policy:
        """The team's policy, else the 'default' policy, else the built-in defaults."""
        if team is not None and (p := await self._cached(team)) is not None:
            return p
        return await self._cached(DEFAULT_TEAM) or Policy()

    def list(self) -> dict[str, dict]:
        with Session(self.engine) as s:
            return {r.team: Policy.model_validate(r.policy).to_json()
                    for r in s.scalars(select(PolicyRow).order_by(PolicyRow.team))}

    def get(self, team: str) -> Policy | None:
        return self._read(team)

    def put(self, team: str, policy: Policy) -> None:
        with Session(self.engine) as s, s.begin():
            s.merge(PolicyRow(team=team, policy=policy.to_json(), updated_at=datetime.now(UTC)))
        self._cache.pop(team, None)

    def delete(self, team: str) -> bool:
        with Session(self.engine) as s, s.begin():
            n = s.execute(delete(PolicyRow).where(PolicyRow.team == team)).rowcount
        self._cache.pop(team, None)
        return bool(n)
