"""Team policies in SQL, served from memory: every policy is read at start and refreshed in
the background (other replicas' edits show up within the TTL; this replica's own edits at
once). No request waits on the database, and with the database away the last known good
policies stay in force."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from routing import Policy
from store import PolicyRow

DEFAULT_TEAM = "default"
log = logging.getLogger("greengate.policies")


class PolicyStore:
    def __init__(self, engine: Engine, ttl_s: float = 5.0) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._all: dict[str, Policy] | None = None
        self._loaded_at = 0.0
        self._refresh: asyncio.Task | None = None
        self.database_ok = True

    def _read(self, team: str) -> Policy | None:
        with Session(self.engine) as s:
            row = s.get(PolicyRow, team)
            return Policy.model_validate(row.policy) if row else None

    def _read_all(self) -> dict[str, Policy]:
        with Session(self.engine) as s:
            return {r.team: Policy.model_validate(r.policy) for r in s.scalars(select(PolicyRow))}

    async def load(self) -> None:
        try:
            policies = await asyncio.to_thread(self._read_all)
        except Exception:
            if self.database_ok:
                log.warning("policies: the database does not answer; serving the %d in memory",
                            len(self._all or {}), exc_info=True)
            self.database_ok = False
            self._loaded_at = time.monotonic()
            return
        self._all, self._loaded_at, self.database_ok = policies, time.monotonic(), True

    async def _policies(self) -> dict[str, Policy]:
        if self._all is None:
            await self.load()
            if self._all is None:  # never read: the built-in defaults until the database is back
                return {}
        elif time.monotonic() - self._loaded_at >= self.ttl_s and (
                self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.get_running_loop().create_task(self.load())
        return self._all

    async def for_team(self, team: str | None) -> Policy:
        """The team's policy, else the 'default' policy, else the built-in defaults."""
        policies = await self._policies()
        if team is not None and (p := policies.get(team)) is not None:
            return p
        return policies.get(DEFAULT_TEAM) or Policy()

    def list(self) -> dict[str, dict]:
        with Session(self.engine) as s:
            return {r.team: Policy.model_validate(r.policy).to_json()
                    for r in s.scalars(select(PolicyRow).order_by(PolicyRow.team))}

    def get(self, team: str) -> Policy | None:
        return self._read(team)

    def put(self, team: str, policy: Policy) -> None:
        with Session(self.engine) as s, s.begin():
            s.merge(PolicyRow(team=team, policy=policy.to_json(), updated_at=datetime.now(UTC)))
        if self._all is not None:
            self._all = {**self._all, team: policy}

    def delete(self, team: str) -> bool:
        with Session(self.engine) as s, s.begin():
            n = s.execute(delete(PolicyRow).where(PolicyRow.team == team)).rowcount
        if self._all is not None:
            self._all = {k: v for k, v in self._all.items() if k != team}
        return bool(n)
