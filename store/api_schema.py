"""Tables of the OpenAI-protocol stores: files, stored responses, batches, request logs.

Every row carries its team; the services answer a lookup of another team's row exactly as a
missing one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from store.schema import Base


class StoredFile(Base):
    """An uploaded (or greengate-written) file's metadata; its bytes are in file_chunks."""

    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team: Mapped[str] = mapped_column(String(128), nullable=False)
    filename: Mapped[str] = mapped_column(String(512), nullable=False)
    purpose: Mapped[str] = mapped_column(String(32), nullable=False)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_files_team_created", "team", "created_at"),)


class FileChunk(Base):
    """A file's bytes, CHUNK_BYTES per row, in order of seq."""

    __tablename__ = "file_chunks"
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"),
                                         primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class StoredResponse(Base):
    """A stored Response (store: true): what it answered and the conversation so far, so a
    later request can continue it with previous_response_id. Team-scoped; expires."""

    __tablename__ = "responses"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    previous_response_id: Mapped[str | None] = mapped_column(String(40))
    request_id: Mapped[str | None] = mapped_column(String(32))  # the decision row's id
    input_items: Mapped[list] = mapped_column(JSON, nullable=False)  # this turn's input
    messages: Mapped[list] = mapped_column(JSON, nullable=False)  # chat history after it
    response: Mapped[dict] = mapped_column(JSON, nullable=False)  # the Response object

    __table_args__ = (Index("ix_responses_team_created", "team", "created_at"),)


class BatchRow(Base):
    """A batch (/v1/batches): its OpenAI fields, its carbon-aware schedule, what it used."""

    __tablename__ = "batches"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team: Mapped[str] = mapped_column(String(128), nullable=False)
    key_id: Mapped[int | None] = mapped_column(Integer)
    endpoint: Mapped[str] = mapped_column(String(64), nullable=False)
    input_file_id: Mapped[str] = mapped_column(String(40), nullable=False)
    completion_window: Mapped[str] = mapped_column(String(8), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    times: Mapped[dict] = mapped_column(JSON, nullable=False)  # in_progress_at, ... (unix s)
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    errors: Mapped[dict | None] = mapped_column(JSON)
    batch_metadata: Mapped[dict | None] = mapped_column(JSON)
    schedule: Mapped[dict] = mapped_column(JSON, nullable=False)  # planned start, why
    carbon: Mapped[dict | None] = mapped_column(JSON)  # energy and gCO2e, used and at submission

    __table_args__ = (Index("ix_batches_team_created", "team", "created_at"),
                      Index("ix_batches_status", "status"))


class BatchItem(Base):
    """One request line of a batch, and its result once run."""

    __tablename__ = "batch_items"
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"),
                                          primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(512), nullable=False)
    body: Mapped[dict] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # pending | done | failed
    result: Mapped[dict | None] = mapped_column(JSON)
    energy_j: Mapped[float | None] = mapped_column(Float)
    gco2e: Mapped[float | None] = mapped_column(Float)
    gco2e_at_submission: Mapped[float | None] = mapped_column(Float)


class RequestLog(Base):
    """A team's opted-in prompt and answer, PII-redacted before storage; expires."""

    __tablename__ = "request_logs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the decision row's id
    team: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    answer: Mapped[str | None] = mapped_column(Text)
    redactions: Mapped[dict | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_request_logs_team_created", "team", "created_at"),
                      Index("ix_request_logs_expires", "expires_at"))
