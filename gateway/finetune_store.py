"""SQL access for fine-tuning: jobs, events, checkpoints, adapters and usage, always scoped by
team (a job of another team is not found, the same answer as no job). Blocking methods: the
service calls them off the event loop."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from store import (
    FineTunedAdapter,
    FineTuningCheckpoint,
    FineTuningEvent,
    FineTuningJob,
    FineTuningUsage,
)

ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"No fine-tuning job '{job_id}' for this team.")
        self.job_id = job_id


def utc(t: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


class FineTuningStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- jobs ----------------------------------------------------------------------------
    def create(self, job: FineTuningJob, events: Iterable[tuple[str, str]]) -> FineTuningJob:
        """The job and its first events in one transaction."""
        with self._session() as s, s.begin():
            s.add(job)
            s.flush()
            for level, message in events:
                s.add(FineTuningEvent(job_id=job.id, created_at=now(), level=level,
                                      type="message", message=message))
        return job

    @staticmethod
    def _get(s: Session, team: str | None, job_id: str) -> FineTuningJob:
        job = s.get(FineTuningJob, job_id) if isinstance(job_id, str) and len(job_id) <= 40 \
            else None
        if job is None or (team is not None and job.team != team):
            raise JobNotFound(job_id)
        return job

    def get(self, team: str | None, job_id: str) -> FineTuningJob:
        """team None: any team's job (the service itself, the admin pages)."""
        with self._session() as s:
            return self._get(s, team, job_id)

    def list(self, team: str | None, after: str | None, limit: int,
             statuses: tuple[str, ...] | None = None) -> tuple[list[FineTuningJob], bool]:
        """Newest first, a page after the job `after`, and whether more follow."""
        with self._session() as s:
            q = select(FineTuningJob)
            if team is not None:
                q = q.where(FineTuningJob.team == team)
            if statuses:
                q = q.where(FineTuningJob.status.in_(statuses))
            if after is not None:
                cur = self._get(s, team, after)
                q = q.where((FineTuningJob.created_at < cur.created_at) | (
                    (FineTuningJob.created_at == cur.created_at) & (FineTuningJob.id < cur.id)))
            q = q.order_by(FineTuningJob.created_at.desc(), FineTuningJob.id.desc())
            rows = list(s.scalars(q.limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def unfinished(self) -> list[FineTuningJob]:
        with self._session() as s:
            return list(s.scalars(select(FineTuningJob).where(
                FineTuningJob.status.in_(ACTIVE)).order_by(FineTuningJob.created_at)))

    def update(self, job_id: str, only_if_active: bool = False, **values: Any) -> bool:
        """Set columns; with only_if_active, not on a job that has already ended (a late
        engine report must not undo a cancel). Returns whether a row changed."""
        with self._session() as s, s.begin():
            q = update(FineTuningJob).where(FineTuningJob.id == job_id)
            if only_if_active:
                q = q.where(FineTuningJob.status.in_(ACTIVE))
            return bool(s.execute(q.values(**values)).rowcount)

    def add_usage(self, job_id: str, tokens: int, energy_j: float | None,
                  energy_source: str | None, cost_usd: float | None) -> None:
        """A share of training work: on the usage ledger and added up on the job."""
        with self._session() as s, s.begin():
            job = s.get(FineTuningJob, job_id)
            if job is None:
                return
            s.add(FineTuningUsage(job_id=job_id, team=job.team, key_id=job.key_id,
                                  created_at=now(), tokens=tokens, energy_j=energy_j,
                                  energy_source=energy_source, cost_usd=cost_usd))
            job.trained_tokens = (job.trained_tokens or 0) + tokens
            if energy_j is not None:
                job.energy_j = (job.energy_j or 0.0) + energy_j
                # One label for the job's total: estimated as soon as any share was.
                if job.energy_source is None or energy_source.startswith("estimated"):  # type: ignore[union-attr]
                    job.energy_source = energy_source

    def spent(self, team: str | None, key_id: int | None, since: datetime,
              metric: str) -> float:
        """Training spend since `since` (budgets seed their counters from it): USD or joules."""
        col = FineTuningUsage.cost_usd if metric == "usd" else FineTuningUsage.energy_j
        q = select(func.coalesce(func.sum(col), 0.0)).where(FineTuningUsage.created_at >= since)
        q = q.where(FineTuningUsage.team == team) if team is not None else q.where(
            FineTuningUsage.key_id == key_id)
        with self._session() as s:
            return float(s.scalar(q) or 0.0)

    # ---- events and checkpoints ------------------------------------------------------------
    def add_event(self, job_id: str, level: str, message: str, type_: str = "message",
                  data: dict[str, Any] | None = None) -> None:
        with self._session() as s, s.begin():
            s.add(FineTuningEvent(job_id=job_id, created_at=now(), level=level, type=type_,
                                  message=message[:4000], data=data))

    def events(self, team: str | None, job_id: str, after: int | None,
               limit: int) -> tuple[list[FineTuningEvent], bool]:
        """Newest first (OpenAI's order), after the event id `after`."""
        with self._session() as s:
            self._get(s, team, job_id)
            q = select(FineTuningEvent).where(FineTuningEvent.job_id == job_id)
            if after is not None:
                q = q.where(FineTuningEvent.id < after)
            rows = list(s.scalars(q.order_by(FineTuningEvent.id.desc()).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def metrics(self, team: str | None, job_id: str) -> list[dict[str, Any]]:
        """Every metrics event's data, oldest first (the loss curve)."""
        with self._session() as s:
            self._get(s, team, job_id)
            q = select(FineTuningEvent.data).where(
                FineTuningEvent.job_id == job_id, FineTuningEvent.type == "metrics")
            return [d for d in s.scalars(q.order_by(FineTuningEvent.id)) if d]

    def add_checkpoint(self, cp: FineTuningCheckpoint) -> None:
        with self._session() as s, s.begin():
            s.add(cp)

    def checkpoints(self, team: str | None, job_id: str, after: str | None,
                    limit: int) -> tuple[list[FineTuningCheckpoint], bool]:
        with self._session() as s:
            self._get(s, team, job_id)
            q = select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job_id)
            if after is not None:
                cur = s.get(FineTuningCheckpoint, after)
                if cur is not None and cur.job_id == job_id:
                    q = q.where(FineTuningCheckpoint.step_number < cur.step_number)
            q = q.order_by(FineTuningCheckpoint.step_number.desc())
            rows = list(s.scalars(q.limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def newest_checkpoint(self, job_id: str) -> FineTuningCheckpoint | None:
        with self._session() as s:
            return s.scalars(select(FineTuningCheckpoint).where(
                FineTuningCheckpoint.job_id == job_id).order_by(
                FineTuningCheckpoint.step_number.desc()).limit(1)).first()

    # ---- adapters --------------------------------------------------------------------------
    def add_adapter(self, a: FineTunedAdapter) -> None:
        with self._session() as s, s.begin():
            s.merge(a)

    def adapters(self) -> list[FineTunedAdapter]:
        with self._session() as s:
            return list(s.scalars(select(FineTunedAdapter).order_by(FineTunedAdapter.created_at)))
