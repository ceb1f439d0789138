"""Request logs people can read: a team's prompts and answers, stored only when the team opted
in (teams.request_log_days, off by default), PII-redacted before storage with the gateway's
PII detector, expiring after the team's retention, readable only by that team and the admin.

Redaction replaces each detected value with a placeholder (<EMAIL_ADDRESS_1>, ...) whose
mapping is never stored, so what is kept cannot be turned back into the values. Rows are
written off the response path (a worker thread); a failed write costs the log line, never the
request."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from gateway.team_settings import TeamSettingsCache
from routing.safety import pii
from store import RequestLog

log = logging.getLogger("greengate.request_logs")
MAX_CHARS = 100_000  # per field: a log is for reading, not for archiving whole corpora


def _text_of(endpoint: str, body: dict[str, Any]) -> str:
    """The prompt as a person reads it: one 'role: content' line per message."""
    if endpoint in ("chat/completions", "responses") and isinstance(body.get("messages"), list):
        lines = []
        for m in body["messages"]:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content
                                   if isinstance(p, dict) and p.get("type") == "text")
            calls = m.get("tool_calls") or []
            text = str(content or "") + "".join(
                f" [tool call {c.get('function', {}).get('name')}"
                f"({c.get('function', {}).get('arguments')})]" for c in calls
                if isinstance(c, dict))
            lines.append(f"{m.get('role')}: {text}")
        return "\n".join(lines)
    value = body.get("prompt", body.get("input"))
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def redact(text: str) -> tuple[str, dict[str, int]]:
    spans = pii.detect(text)
    if not spans:
        return text, {}
    counts: dict[str, int] = {}
    for s in spans:
        counts[s.kind] = counts.get(s.kind, 0) + 1
    return pii.Redactor().redact(text, spans), counts


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: str
    team: str
    created_at: datetime
    prompt: str
    answer: str | None
    redactions: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "team": self.team, "created_at": self.created_at.isoformat(),
                "prompt": self.prompt, "answer": self.answer, "redactions": self.redactions,
                "redacted": "PII replaced by placeholders before storage"}


class RequestLogs:
    """The log rows; whether a team keeps them comes from its teams row (TeamSettingsCache)."""

    def __init__(self, engine: Engine, teams: TeamSettingsCache) -> None:
        self.engine = engine
        self.teams = teams

    def retention_days(self, team: str | None) -> float | None:
        """None: this team does not keep request logs (the admin key's requests never do)."""
        return self.teams.get(team).request_log_days

    def submit(self, row: dict[str, Any], endpoint: str, body: dict[str, Any],
               answer: str | None) -> None:
        """Queue the row's log line if its team opted in (called at the end of a request)."""
        days = self.retention_days(row.get("team"))
        if days is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(row, endpoint, body, answer, days)
            return
        loop.run_in_executor(None, self._write, row, endpoint, body, answer, days)

    def _write(self, row: dict[str, Any], endpoint: str, body: dict[str, Any],
               answer: str | None, days: float) -> None:
        try:
            prompt, counts = redact(_text_of(endpoint, body)[:MAX_CHARS])
            said, more = redact(answer[:MAX_CHARS]) if answer else (answer, {})
            for k, v in more.items():
                counts[k] = counts.get(k, 0) + v
            created = row["created_at"]
            with Session(self.engine) as s, s.begin():
                s.merge(RequestLog(id=row["id"], team=row["team"], created_at=created,
                                   expires_at=created + timedelta(days=days), prompt=prompt,
                                   answer=said, redactions=counts))
        except Exception:
            log.exception("writing the request log of %s failed", row.get("id"))

    @staticmethod
    def _entry(r: RequestLog) -> LogEntry:
        created = r.created_at if r.created_at.tzinfo else r.created_at.replace(tzinfo=UTC)
        return LogEntry(r.id, r.team, created, r.prompt, r.answer, dict(r.redactions or {}))

    def get(self, request_id: str, team: str | None) -> LogEntry | None:
        """The log of a request; `team` None is the admin (every team)."""
        with Session(self.engine) as s:
            r = s.get(RequestLog, request_id)
            if r is None or (team is not None and r.team != team):
                return None
            exp = r.expires_at if r.expires_at.tzinfo else r.expires_at.replace(tzinfo=UTC)
            return self._entry(r) if exp > datetime.now(UTC) else None

    def search(self, team: str | None, text: str | None, limit: int = 50) -> list[LogEntry]:
        now = datetime.now(UTC)
        with Session(self.engine) as s:
            q = select(RequestLog).where(RequestLog.expires_at > now)
            if team is not None:
                q = q.where(RequestLog.team == team)
            if text:
                pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace(
                    "_", "\\_") + "%"
                q = q.where(RequestLog.prompt.ilike(pattern, escape="\\")
                            | RequestLog.answer.ilike(pattern, escape="\\"))
            rows = s.scalars(q.order_by(RequestLog.created_at.desc()).limit(limit))
            return [self._entry(r) for r in rows]

    def purge_expired(self) -> int:
        with Session(self.engine) as s, s.begin():
            return s.execute(delete(RequestLog).where(
                RequestLog.expires_at <= datetime.now(UTC))).rowcount or 0
