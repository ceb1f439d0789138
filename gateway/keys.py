"""Teams and virtual keys in SQL. Secrets are shown once and stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from store import ApiKey, Team

KEY_PREFIX = "gg-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    team: str
    name: str | None
    prefix: str
    allowed_models: tuple[str, ...] | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    previous_valid_until: datetime | None = None  # the rotated-out secret's grace end
    # Set only on the entry found by the rotated-out secret's hash: valid until then.
    grace_until: datetime | None = None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "team": self.team,
            "name": self.name,
            "prefix": self.prefix,
            "allowed_models": None if self.allowed_models is None else list(self.allowed_models),
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "expires_at": _iso(self.expires_at),
            "metadata": self.metadata,
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
            "previous_key_valid_until": _iso(self.previous_valid_until),
        }


def _utc(t: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every time greengate stores is UTC.
    return t if t is None or t.tzinfo else t.replace(tzinfo=UTC)


def _iso(t: datetime | None) -> str | None:
    t = _utc(t)
    return t.isoformat() if t else None


def _info(k: ApiKey, team: str) -> KeyInfo:
    return KeyInfo(
        id=k.id,
        team=team,
        name=k.name,
        prefix=k.prefix,
        allowed_models=tuple(k.allowed_models) if k.allowed_models is not None else None,
        created_at=k.created_at,
        revoked_at=k.revoked_at,
        expires_at=_utc(k.expires_at),
        metadata=k.key_metadata,
        rpm_limit=k.rpm_limit,
        tpm_limit=k.tpm_limit,
        previous_valid_until=_utc(k.previous_valid_until),
    )




class KeyRepo:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_team(self, name: str) -> dict:
        with Session(self.engine) as s, s.begin():
            existing = s.scalar(select(Team).where(Team.name == name))
            if existing is not None:
                raise ValueError(f"team {name!r} already exists")
            team = Team(name=name, created_at=datetime.now(UTC))
            s.add(team)
            s.flush()
            return {"id": team.id, "name": team.name, "created_at": team.created_at.isoformat()}

    def list_teams(self) -> list[dict]:
        with Session(self.engine) as s:
            return [
                {"id": t.id, "name": t.name, "created_at": t.created_at.isoformat()}
                for t in s.scalars(select(Team).order_by(Team.name))
            ]

    def create_key(
        self,
        team: str,
        name: str | None = None,
        allowed_models: list[str] | None = None,
        create_team: bool = True,
        expires_at: datetime | None = None,
        metadata: dict[str, Any] | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
    ) -> tuple[str, KeyInfo]:
        """Returns the secret (shown once) and the stored record."""
        secret = new_secret()
        with Session(self.engine) as s, s.begin():
            t = s.scalar(select(Team).where(Team.name == team))
            if t is None:
                if not create_team:
                    raise LookupError(f"no team {team!r}")
                t = Team(name=team, created_at=datetime.now(UTC))
                s.add(t)
                s.flush()
            k = ApiKey(
                team_id=t.id,
                name=name,
                key_hash=hash_key(secret),
                prefix=secret[:10],
                allowed_models=allowed_models,
                created_at=datetime.now(UTC),
                expires_at=expires_at,
                key_metadata=metadata,
                rpm_limit=rpm_limit,
                tpm_limit=tpm_limit,
            )
            s.add(k)
            s.flush()
            return secret, _info(k, t.name)

    def list_keys(self, team: str | None = None, include_revoked: bool = True) -> list[KeyInfo]:
        with Session(self.engine) as s:
            q = select(ApiKey, Team.name).join(Team, Team.id == ApiKey.team_id).order_by(ApiKey.id)
            if team is not None:
                q = q.where(Team.name == team)
            if not include_revoked:
                q = q.where(ApiKey.revoked_at.is_(None))
            return [_info(k, tname) for k, tname in s.execute(q)]

    def revoke(self, ident: str | int) -> KeyInfo:
        """Revoke by id or by prefix."""
        with Session(self.engine) as s, s.begin():
            q = select(ApiKey, Team.name).join(Team, Team.id == ApiKey.team_id)
            if isinstance(ident, int) or str(ident).isdigit():
                q = q.where(ApiKey.id == int(ident))
            else:
                q = q.where(ApiKey.prefix == str(ident))
            rows = s.execute(q).all()
            if not rows:
                raise LookupError(f"no key {ident!r}")
            if len(rows) > 1:
                raise LookupError(f"prefix {ident!r} matches {len(rows)} keys; use the id")
            k, tname = rows[0]
            if k.revoked_at is None:
                k.revoked_at = datetime.now(UTC)
            return _info(k, tname)

    def find_by_hash(self, key_hash: str) -> KeyInfo | None:
        with Session(self.engine) as s:
            row = s.execute(
                select(ApiKey, Team.name)
                .join(Team, Team.id == ApiKey.team_id)
                .where((ApiKey.key_hash == key_hash) | (ApiKey.previous_hash == key_hash))
            ).first()
            if not row:
                return None
            info = _info(row[0], row[1])
            if row[0].key_hash != key_hash:  # a rotated-out secret
                return replace(info, grace_until=info.previous_valid_until)
            return info

    def set_team_settings(self, name: str, values: dict[str, Any]) -> dict:
        """Rate limits and the request-log opt-in of a team (only the keys given change)."""
        with Session(self.engine) as s, s.begin():
            t = s.scalar(select(Team).where(Team.name == name))
            if t is None:
                raise LookupError(f"no team {name!r}")
            for k in ("rpm_limit", "tpm_limit", "request_log_days"):
                if k in values:
                    setattr(t, k, values[k])
            return {"id": t.id, "name": t.name, "created_at": _iso(t.created_at),
                    "rpm_limit": t.rpm_limit, "tpm_limit": t.tpm_limit,
                    "request_log_days": t.request_log_days}

    def delete_key(self, key_id: int) -> None:
        """Undo a creation whose second half failed (a budget); never used for revocation."""
        with Session(self.engine) as s, s.begin():
            k = s.get(ApiKey, key_id)
            if k is not None:
                s.delete(k)

    def rotate(self, ident: str | int, grace_s: float) -> tuple[str, KeyInfo]:
        """A new secret for the same key (its id, team, limits, budgets and history stay);
        the old secret keeps working for grace_s seconds, then answers 401."""
        secret = new_secret()
        now = datetime.now(UTC)
        with Session(self.engine) as s, s.begin():
            q = select(ApiKey, Team.name).join(Team, Team.id == ApiKey.team_id)
            q = q.where(ApiKey.id == int(ident)) if str(ident).isdigit() else q.where(
                ApiKey.prefix == str(ident))
            rows = s.execute(q).all()
            if len(rows) != 1:
                raise LookupError(f"no key {ident!r}" if not rows else
                                  f"prefix {ident!r} matches {len(rows)} keys; use the id")
            k, tname = rows[0]
            expires = _utc(k.expires_at)
            if k.revoked_at is not None or (expires is not None and expires <= now):
                raise ValueError(f"key {k.id} is {'revoked' if k.revoked_at else 'expired'}; "
                                 "create a new key instead")
            k.previous_hash = k.key_hash
            k.previous_valid_until = now + timedelta(seconds=grace_s)
            k.key_hash = hash_key(secret)
            k.prefix = secret[:10]
            s.flush()
            return secret, _info(k, tname)

    def all_by_hash(self) -> dict[str, KeyInfo]:
        """Every key by its hash, revoked ones included (so revocation is known in memory)."""
        with Session(self.engine) as s:
            q = select(ApiKey, Team.name).join(Team, Team.id == ApiKey.team_id)
            out: dict[str, KeyInfo] = {}
            for k, tname in s.execute(q):
                info = _info(k, tname)
                out[k.key_hash] = info
                if k.previous_hash is not None:  # rotated: the old secret, within its grace
                    out[k.previous_hash] = replace(info, grace_until=info.previous_valid_until)
            return out
