"""Tables of the fine-tuning service (/v1/fine_tuning/jobs): jobs, their events and
checkpoints, the adapters they produced, and the training usage charged to teams.

Every row carries its team: the service answers a lookup of another team's job exactly as a
missing one. Adapter weights stay on disk (safetensors, PEFT layout); SQL references them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from store.schema import Base


class FineTuningJob(Base):
    __tablename__ = "fine_tuning_jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team: Mapped[str] = mapped_column(String(128), nullable=False)
    key_id: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(256), nullable=False)  # the base member
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    training_file: Mapped[str] = mapped_column(String(40), nullable=False)
    validation_file: Mapped[str | None] = mapped_column(String(40))
    suffix: Mapped[str | None] = mapped_column(String(64))
    fine_tuned_model: Mapped[str] = mapped_column(String(256), nullable=False)  # once served
    hyperparameters: Mapped[dict] = mapped_column(JSON, nullable=False)  # resolved values
    lora: Mapped[dict] = mapped_column(JSON, nullable=False)  # rank, alpha, targets, ...
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    user_metadata: Mapped[dict | None] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[dict | None] = mapped_column(JSON)
    step: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float)
    valid_loss: Mapped[float | None] = mapped_column(Float)
    base_valid_loss: Mapped[float | None] = mapped_column(Float)  # step 0: the base model's
    trained_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    energy_j: Mapped[float | None] = mapped_column(Float)
    energy_source: Mapped[str | None] = mapped_column(String(64))
    examples: Mapped[int] = mapped_column(Integer, nullable=False)
    checkpoint_dir: Mapped[str] = mapped_column(String(1024), nullable=False)
    result_files: Mapped[list[str] | None] = mapped_column(JSON)  # the metrics CSV's file id

    __table_args__ = (Index("ix_fine_tuning_jobs_team_created", "team", "created_at"),)


class FineTuningEvent(Base):
    __tablename__ = "fine_tuning_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"),
                                        nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    level: Mapped[str] = mapped_column(String(8), nullable=False)  # info, warn, error
    type: Mapped[str] = mapped_column(String(8), nullable=False)  # message, metrics
    message: Mapped[str] = mapped_column(Text, nullable=False)
    data: Mapped[dict | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_fine_tuning_events_job", "job_id", "id"),)


class FineTuningCheckpoint(Base):
    __tablename__ = "fine_tuning_checkpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"),
                                        nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    step_number: Mapped[int] = mapped_column(Integer, nullable=False)
    metrics: Mapped[dict] = mapped_column(JSON, nullable=False)
    path: Mapped[str] = mapped_column(String(1024), nullable=False)

    __table_args__ = (Index("ix_fine_tuning_checkpoints_job", "job_id", "step_number"),)


class FineTunedAdapter(Base):
    """A served adapter: a pool member `ft:<base>:<suffix>:<id>` of one team only."""

    __tablename__ = "fine_tuned_adapters"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    team: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    base_member: Mapped[str] = mapped_column(String(256), nullable=False)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id"), nullable=False)
    path: Mapped[str] = mapped_column(String(1024), nullable=False)  # PEFT folder (safetensors)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    valid_loss: Mapped[float | None] = mapped_column(Float)
    base_valid_loss: Mapped[float | None] = mapped_column(Float)


class FineTuningUsage(Base):
    """Training work charged to a team (budgets read these sums at start, with decisions)."""

    __tablename__ = "fine_tuning_usage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"),
                                        nullable=False)
    team: Mapped[str] = mapped_column(String(128), nullable=False)
    key_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    energy_j: Mapped[float | None] = mapped_column(Float)
    energy_source: Mapped[str | None] = mapped_column(String(64))
    cost_usd: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_fine_tuning_usage_team_created", "team", "created_at"),)
