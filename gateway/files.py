"""The shared file store behind /v1/files: batch input and output files, fine-tuning data.

Bytes live in SQL (table `file_chunks`, 1 MiB per row), not on a replica's disk: every gateway
replica behind a load balancer shares the database, so a file uploaded through one replica is
readable through another (a batch runs wherever it is picked up, a fine-tuning job wherever the
engine is), and backups of the database cover the files too. Chunks keep single values small
(PostgreSQL and SQLite handle 1 MiB rows well) and let content be streamed without holding the
whole file in memory. Listing never touches the chunks.

Other modules use the Python API: `FileStore.create(...)`, `FileStore.open_bytes(team, id)`,
`FileStore.iter_chunks(team, id)`; every lookup is scoped by team and raises `FileNotFound` for
a file that does not exist, expired, or belongs to another team (the same answer for all three,
so ids of other teams' files cannot be probed)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from store import FileChunk, StoredFile

ADMIN_NAMESPACE = "_admin"  # the admin key's own files (it has no team)
CHUNK_BYTES = 1 << 20
# What a client may upload (OpenAI's list), and what greengate itself writes.
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
OUTPUT_PURPOSES = ("batch_output", "fine-tune-results")
JSONL_PURPOSES = frozenset({"batch", "fine-tune", "evals"})


class FileNotFound(LookupError):
    """No such file for this team (or it expired)."""

    def __init__(self, file_id: str) -> None:
        super().__init__(f"No such File object: {file_id}")
        self.file_id = file_id


class FileTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"The file is larger than the limit of {limit} bytes.")
        self.limit = limit


class InvalidFile(ValueError):
    """The content does not fit the purpose (a JSONL purpose with a line that is no object)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def namespace(team: str | None) -> str:
    """The team a principal's files belong to (the admin key has its own namespace)."""
    return team or ADMIN_NAMESPACE


def _utc(t: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every time greengate stores is UTC.
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    team: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    status: str
    created_at: datetime
    expires_at: datetime | None

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's File object."""
        return {
            "id": self.id, "object": "file", "bytes": self.bytes,
            "created_at": int(self.created_at.timestamp()), "filename": self.filename,
            "purpose": self.purpose, "status": self.status, "status_details": None,
            "expires_at": int(self.expires_at.timestamp()) if self.expires_at else None,
        }


def _record(f: StoredFile) -> FileRecord:
    return FileRecord(f.id, f.team, f.filename, f.purpose, int(f.bytes), f.sha256, f.status,
                      _utc(f.created_at) or datetime.now(UTC), _utc(f.expires_at))


def check_jsonl(chunks: Iterable[bytes]) -> int:
    """Every non-blank line a JSON object; returns the number of such lines. Raises
    InvalidFile naming the first bad line (1-based), so a bad upload is refused whole."""
    import orjson

    n = 0
    pending = b""
    line_no = 0

    def one(raw: bytes) -> None:
        nonlocal n
        if not raw.strip():
            return
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InvalidFile(f"Line {line_no} is not valid JSON: {e}", line_no) from None
        if not isinstance(value, dict):
            raise InvalidFile(f"Line {line_no} is not a JSON object.", line_no)
        n += 1

    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line_no += 1
            one(raw)
    if pending:
        line_no += 1
        one(pending)
    if n == 0:
        raise InvalidFile("The file has no JSON lines.")
    return n


class FileStore:
    """Files in SQL, per team. Methods are blocking (call them off the event loop)."""

    def __init__(self, engine: Engine, max_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.engine = engine
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes

    # ---- writing -------------------------------------------------------------------------
    def create(self, team: str, filename: str, purpose: str, data: bytes | BinaryIO,
               expires_after_s: float | None = None) -> FileRecord:
        """Store a file whole or not at all (one transaction). `data` is bytes or a readable
        binary file object (an upload spooled by the web server)."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
            pieces: Iterator[bytes] = (raw[i:i + self.chunk_bytes]
                                       for i in range(0, len(raw), self.chunk_bytes))
        else:
            stream = data
            pieces = iter(lambda: stream.read(self.chunk_bytes), b"")
        now = datetime.now(UTC)
        row = StoredFile(
            id="file-" + uuid.uuid4().hex[:24], team=team, filename=filename, purpose=purpose,
            bytes=0, sha256="", status="processed", created_at=now,
            expires_at=now + timedelta(seconds=expires_after_s) if expires_after_s else None)
        digest = hashlib.sha256()
        size = 0
        kept: list[bytes] = [] if purpose in JSONL_PURPOSES else None  # type: ignore[assignment]
        with Session(self.engine) as s, s.begin():
            s.add(row)
            s.flush()
            for seq, piece in enumerate(pieces):
                size += len(piece)
                if size > self.max_bytes:
                    raise FileTooLarge(self.max_bytes)  # the transaction rolls back
                digest.update(piece)
                if kept is not None:
                    kept.append(piece)
                s.add(FileChunk(file_id=row.id, seq=seq, data=piece))
            if size == 0:
                raise InvalidFile("The file is empty.")
            if kept is not None:
                check_jsonl(kept)
            row.bytes, row.sha256 = size, digest.hexdigest()
            s.flush()
            record = _record(row)
        return record

    def delete(self, team: str, file_id: str) -> FileRecord:
        with Session(self.engine) as s, s.begin():
            f = self._get(s, team, file_id)
            rec = _record(f)
            s.execute(delete(FileChunk).where(FileChunk.file_id == file_id))
            s.delete(f)
        return rec

    def purge_expired(self) -> int:
        """Drop every expired file; returns how many."""
        now = datetime.now(UTC)
        with Session(self.engine) as s, s.begin():
            ids = list(s.scalars(select(StoredFile.id).where(StoredFile.expires_at < now)))
            if ids:
                s.execute(delete(FileChunk).where(FileChunk.file_id.in_(ids)))
                s.execute(delete(StoredFile).where(StoredFile.id.in_(ids)))
        return len(ids)

    # ---- reading -------------------------------------------------------------------------
    @staticmethod
    def _get(s: Session, team: str, file_id: str) -> StoredFile:
        f = s.get(StoredFile, file_id) if isinstance(file_id, str) and len(file_id) <= 40 \
            else None
        if f is None or f.team != team:
            raise FileNotFound(file_id)
        exp = _utc(f.expires_at)
        if exp is not None and exp <= datetime.now(UTC):
            raise FileNotFound(file_id)
        return f

    def get(self, team: str, file_id: str) -> FileRecord:
        with Session(self.engine) as s:
            return _record(self._get(s, team, file_id))

    def list(self, team: str, purpose: str | None = None, limit: int = 10_000,
             after: str | None = None, order: str = "desc") -> tuple[list[FileRecord], bool]:
        """A page of the team's files (newest first by default) and whether more follow."""
        now = datetime.now(UTC)
        with Session(self.engine) as s:
            q = select(StoredFile).where(StoredFile.team == team)
            if purpose is not None:
                q = q.where(StoredFile.purpose == purpose)
            if after is not None:
                cursor = self._get(s, team, after)
                q = q.where(StoredFile.created_at < cursor.created_at if order == "desc"
                            else StoredFile.created_at > cursor.created_at)
            key = StoredFile.created_at.desc() if order == "desc" else StoredFile.created_at
            tie = StoredFile.id.desc() if order == "desc" else StoredFile.id
            rows = [_record(f) for f in s.scalars(q.order_by(key, tie).limit(limit + 1))]
        rows = [r for r in rows if r.expires_at is None or r.expires_at > now]
        return rows[:limit], len(rows) > limit

    def iter_chunks(self, team: str, file_id: str) -> Iterator[bytes]:
        """The content, chunk by chunk (one short query per chunk). Checks the file first,
        so a missing file raises before the first chunk is asked for."""
        with Session(self.engine) as s:
            self._get(s, team, file_id)
        return self._chunks(file_id)

    def _chunks(self, file_id: str) -> Iterator[bytes]:
        seq = 0
        while True:
            with Session(self.engine) as s:
                data = s.scalar(select(FileChunk.data).where(
                    FileChunk.file_id == file_id, FileChunk.seq == seq))
            if data is None:
                return
            yield bytes(data)
            seq += 1

    def open_bytes(self, team: str, file_id: str) -> bytes:
        """The whole content (for files a caller reads whole: a batch input, a dataset)."""
        with Session(self.engine) as s:
            self._get(s, team, file_id)
            return b"".join(bytes(d) for d in s.scalars(
                select(FileChunk.data).where(FileChunk.file_id == file_id)
                .order_by(FileChunk.seq)))

    def open_text(self, team: str, file_id: str) -> str:
        return self.open_bytes(team, file_id).decode("utf-8")
