"""SQL tables. Alembic migrations in migrations/ create them; this module only describes them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    rpm_limit: Mapped[int | None] = mapped_column(Integer)  # the whole team's, per minute
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    request_log_days: Mapped[float | None] = mapped_column(Float)  # opt-in; None: off


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), nullable=False, index=True)
    name: Mapped[str | None] = mapped_column(String(128))
    # sha256 of the secret; the secret itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    key_metadata: Mapped[dict | None] = mapped_column(JSON)
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    # After a rotation the old secret's hash stays valid until previous_valid_until.
    previous_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    previous_valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Decision(Base):
    """One row per request served (or refused after auth): who, what, which member, why, cost."""

    __tablename__ = "decisions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    key_id: Mapped[int | None] = mapped_column(Integer)
    key_prefix: Mapped[str | None] = mapped_column(String(16))
    team: Mapped[str | None] = mapped_column(String(128))
    endpoint: Mapped[str] = mapped_column(String(32), nullable=False)
    requested_model: Mapped[str | None] = mapped_column(String(256))
    served_member: Mapped[str | None] = mapped_column(String(256))
    upstream_model: Mapped[str | None] = mapped_column(String(256))
    route_reason: Mapped[str | None] = mapped_column(String(64))
    candidates: Mapped[list | None] = mapped_column(JSON)
    attempts: Mapped[list | None] = mapped_column(JSON)
    features: Mapped[dict | None] = mapped_column(JSON)
    stream: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    usage_source: Mapped[str | None] = mapped_column(String(32))
    cost_usd: Mapped[float | None] = mapped_column(Float)
    energy_j: Mapped[float | None] = mapped_column(Float)
    energy_source: Mapped[str | None] = mapped_column(String(64))
    cache_hit: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    gco2e: Mapped[float | None] = mapped_column(Float)
    # What the request would have cost had 'auto' sent it to the team's most capable member.
    counterfactual_member: Mapped[str | None] = mapped_column(String(256))
    counterfactual_cost_usd: Mapped[float | None] = mapped_column(Float)
    counterfactual_energy_j: Mapped[float | None] = mapped_column(Float)
    # {method, proposed, accepted, mean_k, acceptance} when an engine member speculated.
    speculative: Mapped[dict | None] = mapped_column(JSON)
    # {policy, served_by, hops: [{replica, placed_by, tokens, energy_j, energy_source, end}],
    # migrations: [{from, to, reason, after_tokens}]} for a member with several endpoints.
    replicas: Mapped[dict | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_decisions_created_at", "created_at"),
        Index("ix_decisions_key_created", "key_id", "created_at"),
        Index("ix_decisions_team_created", "team", "created_at"),
        Index("ix_decisions_member_created", "served_member", "created_at"),
    )


class PolicyRow(Base):
    """A team's routing policy (routing.policy.Policy as JSON); team 'default' is the fallback."""

    __tablename__ = "policies"
    team: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy: Mapped[dict] = mapped_column(JSON, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Feedback(Base):
    """Quality feedback on a served request; it becomes the bandit's reward."""

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(32), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    team: Mapped[str | None] = mapped_column(String(128))
    key_id: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    reward: Mapped[float | None] = mapped_column(Float)
    member: Mapped[str | None] = mapped_column(String(256))
    applied: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    comment: Mapped[str | None] = mapped_column(Text)


class BanditState(Base):
    """Serialised bandit state, so learning survives restarts."""

    __tablename__ = "bandit_state"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(32), nullable=False)
    state: Mapped[dict] = mapped_column(JSON, nullable=False)
    updates: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Budget(Base):
    """A spending cap: dollars or watt-hours per day or month, for a team or a key."""

    __tablename__ = "budgets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(8), nullable=False)  # "team" | "key"
    subject: Mapped[str] = mapped_column(String(128), nullable=False)  # team name or key id
    metric: Mapped[str] = mapped_column(String(8), nullable=False)  # "usd" | "wh"
    period: Mapped[str] = mapped_column(String(8), nullable=False)  # "day" | "month"
    limit: Mapped[float] = mapped_column(Float, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (Index("ux_budgets_rule", "scope", "subject", "metric", "period",
                            unique=True),)


class CacheEntry(Base):
    """A cached answer, so the semantic cache survives restarts. Namespaced by team."""

    __tablename__ = "cache_entries"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # exact-match key (sha256)
    team: Mapped[str] = mapped_column(String(128), nullable=False)
    context_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    task: Mapped[str | None] = mapped_column(String(64))
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 bytes, 384 dims
    response: Mapped[dict] = mapped_column(JSON, nullable=False)  # the chat.completion body
    member: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    hits: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    __table_args__ = (Index("ix_cache_team_expires", "team", "expires_at"),)
