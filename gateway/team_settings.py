"""Per-team settings kept on the teams row (rate limits, the request-log opt-in), served from
memory: read from SQL at most every ttl_s, so no request waits on the database for them, and
the last known values stay in force while it is away. This replica's own edits show at once
(`forget`); another replica's within the TTL."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from store import Team

log = logging.getLogger("greengate.teams")


@dataclass(frozen=True, slots=True)
class TeamSettings:
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    request_log_days: float | None = None  # None: prompts and answers are not kept


class TeamSettingsCache:
    def __init__(self, engine: Engine, ttl_s: float = 10.0) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._by_team: dict[str, TeamSettings] = {}
        self._read_at = -float("inf")
        self._refreshing: asyncio.Future | None = None

    def load(self) -> None:
        """Read every team's settings (blocking; at start and in the background)."""
        try:
            with Session(self.engine) as s:
                rows = s.execute(select(Team.name, Team.rpm_limit, Team.tpm_limit,
                                        Team.request_log_days)).all()
        except Exception:  # the database is away: keep the last known settings
            log.warning("team settings: the database does not answer; keeping %d in memory",
                        len(self._by_team))
            self._read_at = time.monotonic()
            return
        self._by_team = {name: TeamSettings(rpm, tpm, days if days and days > 0 else None)
                         for name, rpm, tpm, days in rows}
        self._read_at = time.monotonic()

    def get(self, team: str | None) -> TeamSettings:
        """From memory, never waiting: when the TTL has passed, a refresh starts in a worker
        thread and this request sees the values known so far."""
        if team is None:
            return TeamSettings()
        if time.monotonic() - self._read_at >= self.ttl_s:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.load()
            else:
                if self._refreshing is None or self._refreshing.done():
                    self._refreshing = loop.run_in_executor(None, self.load)
        return self._by_team.get(team, TeamSettings())

    def forget(self) -> None:
        """This replica changed a team: read them again now."""
        self.load()
