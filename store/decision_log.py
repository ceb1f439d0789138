"""The decision log writer: rows are queued in memory and inserted in batches by one task, so
no request waits on the database.

What no single row may do is stop the log for everyone:
- every string is made storable first (store.storable), and the row says what changed;
- a batch the database refuses for its data is split until the offending row is alone, and
  that row is quarantined (a local file, /metrics, /admin/decisions/quarantine) while a stub
  row with its id, status and reason is written in its place;
- only connection errors are retried, briefly; then the batch goes to a local journal that is
  replayed when the database answers again, and at the next start;
- shutdown writes what it can within a deadline and journals the rest;
- every row is first appended to a write-ahead journal (store.wal) as it is submitted, i.e.
  before the response's last byte: a SIGKILL loses no answered request's row, the next start
  replays what the dead process had not written."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, exists, insert, select
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError
from sqlalchemy.exc import OperationalError as SAOperationalError

from store.schema import Decision
from store.storable import REPLACEMENT, clean_text, storable_decision
from store.wal import DecisionWal

log = logging.getLogger("greengate.decisions")
TABLE = Decision.__table__
QUARANTINE_KEPT = 200  # listed in memory for the admin API; the file keeps them all
# Rows prepared and inserted per slice of a batch. Between slices the writer thread lets go of
# the interpreter lock: otherwise the event loop waits up to the switch interval (5 ms) at
# every wake-up while a batch is prepared, and each flush put 5-20 ms on the requests in flight
# (the concurrency-1 latency tail, measured: slow requests clustered at the flush interval).
WRITE_SLICE = 10


def is_connection_error(e: BaseException) -> bool:
    """The database is away (or locked, for SQLite): worth retrying the same rows later."""
    if isinstance(e, DisconnectionError | InterfaceError | SAOperationalError):
        return True
    return isinstance(e, DBAPIError) and bool(e.connection_invalidated)


def _in_slices(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """`rows` in slices of WRITE_SLICE; between two, the writer thread lets go of the lock."""
    for i in range(0, len(rows), WRITE_SLICE):
        if i:
            time.sleep(0)  # a thread's sleep releases the lock for a waiting event loop
        yield rows[i:i + WRITE_SLICE]


def _storable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [storable_decision(TABLE, r) for part in _in_slices(rows) for r in part]


def _encode(row: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(row, default=str) + b"\n"
    except TypeError:  # orjson stops at 64-bit integers; the standard library does not
        return json.dumps(row, default=str).encode() + b"\n"


def _decode(line: bytes) -> dict[str, Any]:
    row = orjson.loads(line)
    created = row.get("created_at")
    if isinstance(created, str):
        row["created_at"] = datetime.fromisoformat(created)
    return row


class DecisionLog:
    def __init__(
        self,
        engine: Engine,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        state_dir: Path | None = None,
        ready_max_pending: int | None = None,
        ready_max_lag_s: float = 30.0,
        drain_timeout_s: float = 5.0,
        connect_retries: int = 3,
        wal: bool = True,
    ) -> None:
        self._engine = engine
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._rows: collections.deque[dict[str, Any]] = collections.deque()
        self._inflight: list[dict[str, Any]] = []
        self._ids: set[str] = set()  # submitted, not yet written, journaled or quarantined
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        state = Path(state_dir) if state_dir is not None else Path(".greengate")
        self.journal_path = state / "decisions.journal.jsonl"
        self.quarantine_path = state / "decisions.quarantine.jsonl"
        self.wal = DecisionWal(state) if wal else None
        self.wal_replayed = 0
        self.ready_max_pending = ready_max_pending or max(1, queue_size // 2)
        self.ready_max_lag_s = ready_max_lag_s
        self.drain_timeout_s = drain_timeout_s
        self.connect_retries = connect_retries
        self.written = 0
        self.journaled = self._count_lines(self.journal_path) + self._count_lines(
            self._replaying_path
        )
        self.quarantined = 0
        self.recent_quarantine: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=QUARANTINE_KEPT
        )
        self._last_progress = 0.0
        self._next_replay = 0.0
        self._replay_delay = 1.0
        self.database_ok = True

    @property
    def _replaying_path(self) -> Path:
        return self.journal_path.with_suffix(".replaying")

    @staticmethod
    def _count_lines(path: Path) -> int:
        try:
            with path.open("rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def start(self) -> None:
        self._last_progress = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._run(), name="decision-log-writer")

    # ---- producers ---------------------------------------------------------------------
    def submit(self, row: dict[str, Any]) -> None:
        """Queue a row without waiting. Past the queue bound the row goes to the journal
        (memory stays bounded, no row is dropped)."""
        if self.wal is not None:
            try:
                self.wal.append(row)
            except OSError:  # a full disk must not fail the request: the queue still has it
                log.exception("decision WAL append failed for %s", row.get("id"))
        if len(self._rows) >= self._queue_size:
            self._journal([row])
            return
        if not self._rows and not self._inflight:
            self._last_progress = asyncio.get_running_loop().time()
        self._rows.append(row)
        self._ids.add(row["id"])
        self._wake.set()
        if len(self._rows) >= self._batch_size:
            self._full.set()

    @property
    def pending(self) -> int:
        """Rows in memory that are not in the database yet."""
        return len(self._rows) + len(self._inflight)

    def is_pending(self, rid: str) -> bool:
        return rid in self._ids

    def behind(self) -> str | None:
        """Why readiness should fail, or None: too many rows waiting, or no progress lately."""
        if self.pending > self.ready_max_pending:
            return f"{self.pending} rows waiting (bound {self.ready_max_pending})"
        if self.pending and self._task is not None:
            lag = asyncio.get_running_loop().time() - self._last_progress
            # Rows wait up to a flush interval by design: only beyond it is the log behind.
            if lag > self.ready_max_lag_s + self._interval:
                return f"no row written for {lag:.0f} s with {self.pending} waiting"
        return None

    # ---- the writer --------------------------------------------------------------------
    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self._engine.begin() as conn:  # one transaction: the batch lands whole or not
            for part in _in_slices(rows):
                conn.execute(insert(Decision), part)

    def _exists(self, rid: str) -> bool:
        with self._engine.connect() as conn:
            return bool(conn.scalar(select(exists().where(Decision.id == rid))))

    @property
    def wal_unresolved(self) -> int | None:
        """Rows in the write-ahead journal not yet safe elsewhere (None: no journal)."""
        return None if self.wal is None else self.wal.unresolved

    def _done(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self._ids.discard(r["id"])
        if self.wal is not None:
            self.wal.resolve(r["id"] for r in rows)
        self._last_progress = asyncio.get_running_loop().time()

    async def _write(self, rows: list[dict[str, Any]]) -> bool:
        """Write `rows`; False when the database is unreachable (the rows were journaled)."""
        rows = await asyncio.to_thread(_storable, rows)  # CPU work: off the event loop
        delay = 0.2
        for attempt in range(self.connect_retries + 1):
            try:
                await asyncio.to_thread(self._insert, rows)
            except Exception as e:
                if is_connection_error(e):
                    if self._stopping or attempt == self.connect_retries:
                        log.warning(
                            "database unreachable (%s); %d decision rows journaled",
                            type(e).__name__,
                            len(rows),
                        )
                        self.database_ok = False
                        await asyncio.to_thread(self._journal, rows)
                        self._done(rows)
                        return False
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                await self._split(rows, e)
                self._done(rows)
                return True
            self.written += len(rows)
            self.database_ok = True
            self._done(rows)
            return True
        return False  # not reached

    async def _split(self, rows: list[dict[str, Any]], err: Exception) -> None:
        """The database refused this batch for its content: find the row(s) it refuses."""
        if len(rows) > 1:
            mid = len(rows) // 2
            for half in (rows[:mid], rows[mid:]):
                try:
                    await asyncio.to_thread(self._insert, half)
                    self.written += len(half)
                except Exception as e:
                    if is_connection_error(e):
                        await asyncio.to_thread(self._journal, half)
                    else:
                        await self._split(half, e)
            return
        row = rows[0]
        if isinstance(err, IntegrityError):
            with contextlib.suppress(Exception):
                if await asyncio.to_thread(self._exists, row["id"]):
                    return  # a journal replay of a row that was written after all
        await asyncio.to_thread(self._quarantine, row, err)

    def _quarantine(self, row: dict[str, Any], err: Exception) -> None:
        reason, _ = clean_text(f"{type(err).__name__}: {getattr(err, 'orig', None) or err}", 500)
        log.error("decision row %s quarantined: %s", row.get("id"), reason)
        entry = {
            "id": row.get("id"),
            "at": datetime.now(UTC).isoformat(),
            "reason": reason,
            "row": row,
        }
        self.quarantine_path.parent.mkdir(parents=True, exist_ok=True)
        with self.quarantine_path.open("ab") as f:
            f.write(_encode(entry))
        self.quarantined += 1
        self.recent_quarantine.append(
            {
                "id": entry["id"],
                "at": entry["at"],
                "reason": reason,
                "status": row.get("status"),
                "team": row.get("team"),
                "endpoint": row.get("endpoint"),
            }
        )
        # A stub keeps "every served request has its row": the id, status and why.
        stub = {
            "id": str(row.get("id"))[:32],
            "created_at": row.get("created_at") or datetime.now(UTC),
            "endpoint": str(row.get("endpoint") or "?")[:32],
            "status": int(row.get("status") or 0) if isinstance(row.get("status"), int) else 0,
            "stream": bool(row.get("stream")),
            "cache_hit": False,
            "team": row.get("team"),
            "key_id": row.get("key_id"),
            "error": f"row quarantined: {reason}",
            "features": {"quarantined": reason},
        }
        try:
            self._insert([storable_decision(TABLE, stub)])
            self.written += 1
        except Exception:
            log.exception("the stub row for quarantined decision %s failed too", row.get("id"))

    # ---- journal -----------------------------------------------------------------------
    def _journal(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        with self.journal_path.open("ab") as f:
            f.write(b"".join(_encode(r) for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.journaled += len(rows)
        for r in rows:
            self._ids.discard(r["id"])
        if self.wal is not None:
            self.wal.resolve(r["id"] for r in rows)

    def _read_journal(self) -> list[dict[str, Any]]:
        """Move the journal aside and read it (rows a crash left mid-replay included)."""
        rows: list[dict[str, Any]] = []
        replaying = self._replaying_path
        if not replaying.exists():
            if not self.journal_path.exists():
                return rows
            self.journal_path.rename(replaying)
        with replaying.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rows.append(_decode(line))
                except (orjson.JSONDecodeError, ValueError):
                    log.error("unreadable journal line skipped: %r", line[:200])
        return rows

    async def replay(self) -> int:
        """Write the journaled rows; those the database still cannot take go back."""
        rows = await asyncio.to_thread(self._read_journal)
        if not rows:
            self.journaled = 0
            return 0
        self.journaled = 0
        ok = 0
        for i in range(0, len(rows), self._batch_size):
            chunk = rows[i : i + self._batch_size]
            if not await self._write(chunk):  # unreachable: this chunk was journaled again
                await asyncio.to_thread(self._journal, rows[i + self._batch_size :])
                break
            ok += len(chunk)
        await asyncio.to_thread(self._replaying_path.unlink, True)
        if ok:
            log.info("decision journal: %d rows replayed", ok)
        return ok

    async def _maybe_replay(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.journaled or loop.time() < self._next_replay:
            return
        try:
            await self.replay()
        except Exception:  # a journal that cannot be read must not stop the writer
            log.exception("replaying the decision journal failed; retrying later")
        if self.journaled:
            self._replay_delay = min(self._replay_delay * 2, 30.0)
        else:
            self._replay_delay = 1.0
        self._next_replay = loop.time() + self._replay_delay

    # ---- write-ahead journal recovery ------------------------------------------------------
    def _stored(self, ids: list[str]) -> set[str]:
        with self._engine.connect() as conn:
            return set(conn.scalars(select(Decision.id).where(Decision.id.in_(ids))))

    async def replay_wal(self) -> int:
        """Write the rows a dead process journaled and had not written (ids already stored
        are skipped; unreachable: they go to the outage journal, which is durable too)."""
        if self.wal is None:
            return 0
        total = 0
        for fd, path in await asyncio.to_thread(self.wal.claim_orphans):
            try:
                rows = await asyncio.to_thread(DecisionWal.read, path)
                for i in range(0, len(rows), self._batch_size):
                    chunk = rows[i : i + self._batch_size]
                    try:
                        have = await asyncio.to_thread(self._stored, [r["id"] for r in chunk])
                    except Exception:  # the database is away: keep all, replay dedups
                        have = set()
                    chunk = [r for r in chunk if r["id"] not in have]
                    if chunk:
                        await self._write(chunk)
                        total += len(chunk)
                DecisionWal.release(fd, path, done=True)
            except Exception:
                log.exception("replaying decision WAL %s failed; the next start retries",
                              path.name)
                DecisionWal.release(fd, path, done=False)
        if total:
            log.warning("decision WAL: %d rows of a process that died replayed", total)
        self.wal_replayed += total
        return total

    # ---- loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        await self.replay_wal()
        await self._maybe_replay()
        while True:
            if not self._rows:
                if self._stopping:
                    return
                self._wake.clear()
                timeout = self._replay_delay if self.journaled else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                await self._maybe_replay()
                continue
            if len(self._rows) < self._batch_size and not self._stopping:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._interval)
            n = min(self._batch_size, len(self._rows))
            self._inflight = [self._rows.popleft() for _ in range(n)]
            await self._write(self._inflight)
            self._inflight = []
            if self.wal is not None:  # power-loss bound: one batch (the kernel has the rest)
                await asyncio.to_thread(self.wal.sync)
            if not self._stopping:
                await self._maybe_replay()

    async def stop(self) -> None:
        """Write what can be written within the drain deadline; journal the rest."""
        self._stopping = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.drain_timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
            except Exception:
                log.exception("decision writer failed")
        rest = self._inflight + list(self._rows)
        self._inflight, self._rows = [], collections.deque()
        if rest:
            self._journal(_storable(rest))
            log.warning(
                "decision log: %d rows not written before shutdown went to %s; "
                "the next start replays them",
                len(rest),
                self.journal_path,
            )
        log.info(
            "decision log drained: %d rows written, %d journaled, %d quarantined",
            self.written,
            self.journaled,
            self.quarantined,
        )
        if self.wal is not None:
            self.wal.close()  # every row is resolved now: the segments go


__all__ = ["DecisionLog", "REPLACEMENT", "is_connection_error"]
