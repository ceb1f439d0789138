"""A write-ahead journal of decision rows, so a SIGKILL loses no row of a request that was
answered.

Why: the decision log batches rows in memory (up to `log_flush_interval_s`) before one INSERT;
a process killed with SIGKILL loses that batch, although every request in it was answered
(2.8% of the 200s in a kill-under-load run). Here every row is appended to a local file with
one `write(2)` *before* the response's last byte is sent. A write that returned is in the
kernel's page cache: it survives the death of the process (SIGKILL, OOM kill, a segfault),
only not the loss of the machine itself. For that, the writer task calls `fsync` after each
batch (`sync()`), which bounds a power loss to the rows of the last flush interval.

Layout: segments `decisions.wal.<pid>.<seq>.jsonl` in the state folder, one JSON row a line.
The owning process holds an exclusive `flock` on its open segment; the kernel drops it when
the process dies however it dies, so a starting process (another worker on the same host
sharing the folder included) knows a segment whose lock it can take is orphaned, and replays
it. A segment is rotated after `rotate_rows` rows and deleted once each of its rows is
resolved (written to SQL, moved to the outage journal, or quarantined): the file holds the
unresolved tail, not the history.

Cost on the request path: one orjson encode and one `write(2)` to an O_APPEND descriptor
(a few microseconds; `bench/wal_overhead.py` measures it)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("greengate.wal")
_NAME = re.compile(r"^decisions\.wal\.(\d+)\.(\d+)\.jsonl(\.replay\.\d+)?$")


def encode_row(row: dict[str, Any]) -> bytes:
    """One journal line. orjson writes datetimes as ISO text; a value it refuses (an integer
    beyond 64 bits) goes through the standard library instead."""
    try:
        return orjson.dumps(row, default=str) + b"\n"
    except TypeError:
        return json.dumps(row, default=str).encode() + b"\n"


def decode_row(line: bytes) -> dict[str, Any]:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:  # a lone surrogate escaped by the fallback encoder
        row = json.loads(line)
    created = row.get("created_at")
    if isinstance(created, str):
        row["created_at"] = datetime.fromisoformat(created)
    return row


@dataclass
class _Segment:
    path: Path
    fd: int
    ids: set[str] = field(default_factory=set)  # appended here and not resolved yet
    rows: int = 0
    closed: bool = False  # rotated: no more appends, deleted once `ids` is empty


class DecisionWal:
    """Append-only, per-process journal segments; see the module docstring."""

    def __init__(self, folder: Path, rotate_rows: int = 20_000) -> None:
        self.folder = Path(folder)
        self.rotate_rows = rotate_rows
        self._pid = os.getpid()
        self._seq = 0
        self._segments: list[_Segment] = []
        self._where: dict[str, _Segment] = {}  # row id -> its segment
        self._dirty = False
        self.appended = 0

    # ---- writing -----------------------------------------------------------------------
    def _open_segment(self) -> _Segment:
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            self._seq += 1
            path = self.folder / f"decisions.wal.{self._pid}.{self._seq}.jsonl"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            except FileExistsError:  # a dead process with our pid left it: take the next
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seg = _Segment(path, fd)
            self._segments.append(seg)
            return seg

    def _current(self) -> _Segment:
        if self._pid != os.getpid():  # forked: the parent's segments and locks are not ours
            self._pid, self._segments, self._where = os.getpid(), [], {}
        if not self._segments or self._segments[-1].closed:
            return self._open_segment()
        seg = self._segments[-1]
        if seg.rows >= self.rotate_rows:
            seg.closed = True
            self._maybe_delete(seg)
            return self._open_segment()
        return seg

    def append(self, row: dict[str, Any]) -> None:
        """Journal `row` (one write; returns once the kernel has it)."""
        line = encode_row(row)
        seg = self._current()
        os.write(seg.fd, line)
        rid = row["id"]
        seg.ids.add(rid)
        seg.rows += 1
        self._where[rid] = seg
        self._dirty = True
        self.appended += 1

    def resolve(self, ids: Iterable[str]) -> None:
        """These rows are safe elsewhere (SQL, the outage journal, quarantine)."""
        touched: set[int] = set()
        for rid in ids:
            seg = self._where.pop(rid, None)
            if seg is not None:
                seg.ids.discard(rid)
                touched.add(id(seg))
        for seg in list(self._segments):
            if id(seg) in touched and not seg.ids:
                # The open segment is emptied too: rotating it keeps the file small.
                seg.closed = True
                self._maybe_delete(seg)

    def _maybe_delete(self, seg: _Segment) -> None:
        if not seg.closed or seg.ids:
            return
        with contextlib.suppress(OSError):
            seg.path.unlink()
        with contextlib.suppress(OSError):
            os.close(seg.fd)
        self._segments.remove(seg)

    def sync(self) -> None:
        """fsync the open segments (the writer calls it after a batch: power-loss bound)."""
        if not self._dirty:
            return
        self._dirty = False
        for seg in self._segments:
            with contextlib.suppress(OSError):
                os.fsync(seg.fd)

    @property
    def unresolved(self) -> int:
        return len(self._where)

    def close(self) -> None:
        """At a clean stop every row is resolved: the segments go; any left stay for replay."""
        self.sync()
        for seg in list(self._segments):
            seg.closed = True
            if not seg.ids:
                self._maybe_delete(seg)
            else:
                with contextlib.suppress(OSError):
                    os.close(seg.fd)  # releases the lock: the next start replays it
                self._segments.remove(seg)

    # ---- recovery ----------------------------------------------------------------------
    def claim_orphans(self) -> list[tuple[int, Path]]:
        """Segments no live process holds (left by one that died), each locked and renamed
        for this process alone: (descriptor holding the lock, path). A replay that dies
        half-way leaves its renamed file unlocked, and the next start claims it again."""
        if not self.folder.exists():
            return []
        mine = {seg.path for seg in self._segments}
        out = []
        for p in sorted(self.folder.iterdir()):
            if not _NAME.match(p.name) or p in mine:
                continue
            try:
                fd = os.open(p, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live process's segment (or its replay)
                continue
            if os.fstat(fd).st_nlink == 0:  # replayed and deleted while we waited
                os.close(fd)
                continue
            base = p.name.split(".replay.")[0]
            target = p.with_name(f"{base}.replay.{os.getpid()}")
            try:
                p.rename(target)
            except FileNotFoundError:
                os.close(fd)
                continue
            out.append((fd, target))
        return out

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The rows of a segment; a torn last line (killed mid-write) is skipped."""
        rows = []
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rows.append(decode_row(line))
                except (orjson.JSONDecodeError, ValueError):
                    log.error("unreadable decision WAL line skipped in %s: %r", path.name,
                              line[:200])
        return rows

    @staticmethod
    def release(fd: int, path: Path, done: bool) -> None:
        """After a replay: the file goes when its rows are safe, else it stays for next time."""
        if done:
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(fd)


__all__ = ["DecisionWal", "decode_row", "encode_row"]
