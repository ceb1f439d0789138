"""Stored responses: the conversation state behind previous_response_id, per team, in SQL
(shared by every replica), expiring after `responses_ttl_s` as OpenAI's do after 30 days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from store import StoredResponse


class ResponseNotFound(LookupError):
    def __init__(self, response_id: str) -> None:
        super().__init__(f"No response with id '{response_id}' (it may belong to another "
                         "team, have been stored with store: false, or have expired).")
        self.response_id = response_id


@dataclass(frozen=True, slots=True)
class Conversation:
    """What a stored response carries forward."""

    id: str
    messages: list[dict[str, Any]]  # chat history after that turn (instructions excluded)
    input_items: list[dict[str, Any]]
    response: dict[str, Any]


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class ResponseStore:
    """Blocking methods: call them off the event loop."""

    def __init__(self, engine: Engine, ttl_s: float) -> None:
        self.engine = engine
        self.ttl_s = ttl_s

    def _row(self, s: Session, team: str, response_id: Any) -> StoredResponse:
        row = s.get(StoredResponse, response_id) if isinstance(response_id, str) and len(
            response_id) <= 40 else None
        if row is None or row.team != team or _utc(row.expires_at) <= datetime.now(UTC):
            raise ResponseNotFound(str(response_id))
        return row

    def get(self, team: str, response_id: str) -> Conversation:
        with Session(self.engine) as s:
            r = self._row(s, team, response_id)
            return Conversation(r.id, list(r.messages), list(r.input_items), dict(r.response))

    def save(self, team: str, response: dict[str, Any], input_items: list[dict[str, Any]],
             messages: list[dict[str, Any]], request_id: str | None) -> None:
        now = datetime.now(UTC)
        with Session(self.engine) as s, s.begin():
            s.add(StoredResponse(
                id=response["id"], team=team, created_at=now,
                expires_at=now + timedelta(seconds=self.ttl_s),
                previous_response_id=response.get("previous_response_id"),
                request_id=request_id, input_items=input_items, messages=messages,
                response=response))

    def delete(self, team: str, response_id: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.delete(self._row(s, team, response_id))

    def purge_expired(self) -> int:
        with Session(self.engine) as s, s.begin():
            return s.execute(delete(StoredResponse).where(
                StoredResponse.expires_at < datetime.now(UTC))).rowcount or 0
