"""Bandit state in SQL: loaded at start, saved when it changed and at shutdown."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bandits import Bandit, load_bandit
from store import BanditState


class BanditStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, name: str) -> tuple[Bandit, int] | None:
        with Session(self.engine) as s:
            row = s.get(BanditState, name)
            return (load_bandit(row.state), row.updates) if row else None

    def save(self, name: str, state: dict, updates: int) -> None:
        with Session(self.engine) as s, s.begin():
            s.merge(BanditState(name=name, algorithm=str(state.get("algorithm")), state=state,
                                updates=updates, updated_at=datetime.now(UTC)))
