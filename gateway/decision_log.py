"""The decision log writer: rows are queued in memory and inserted in batches by one task, so
no request waits on the database. Shutdown drains the queue: SIGTERM loses nothing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import Engine, insert

from gateway.schema import Decision

log = logging.getLogger("greengate.decisions")
_STOP: Any = object()


class DecisionLog:
    def __init__(
        self, engine: Engine, queue_size: int, batch_size: int, flush_interval_s: float
    ) -> None:
        self._engine = engine
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._task: asyncio.Task | None = None
        self._waiting: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-log-writer")

    def submit(self, row: dict[str, Any]) -> None:
        """Queue a row without waiting. A full queue parks the row in a task that waits for
        room (backpressure on memory, never a dropped row)."""
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            t = asyncio.get_running_loop().create_task(self._queue.put(row))
            self._waiting.add(t)
            t.add_done_callback(self._waiting.discard)

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._waiting)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self._engine.begin() as conn:
            conn.execute(insert(Decision), rows)

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        delay = 0.2
        while True:
            try:
                await asyncio.to_thread(self._insert, rows)
                self.written += len(rows)
                return
            except Exception:  # the database may be restarting: keep the rows, try again
                log.exception("decision insert failed for %d rows; retrying", len(rows))
                if self._stopping.is_set() and delay > 5:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _next(self, timeout: float | None) -> Any:
        if timeout is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                raise TimeoutError from None
            return await asyncio.wait_for(self._queue.get(), timeout=timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._next(None)
            batch: list[dict[str, Any]] = []
            deadline = loop.time() + self._interval
            while item is not _STOP and len(batch) < self._batch_size - 1:
                batch.append(item)
                try:
                    item = await self._next(deadline - loop.time())
                except TimeoutError:
                    item = None
                    break
            if item is not None and item is not _STOP:
                batch.append(item)
            if batch:
                await self._write(batch)
            if item is _STOP:
                rest = []
                while not self._queue.empty():
                    rest.append(self._queue.get_nowait())
                for i in range(0, len(rest), self._batch_size):
                    await self._write(rest[i : i + self._batch_size])
                return

    async def stop(self) -> None:
        """Flush everything queued, then stop."""
        if self._waiting:
            await asyncio.gather(*self._waiting, return_exceptions=True)
        self._stopping.set()
        await self._queue.put(_STOP)  # type: ignore[arg-type]
        if self._task is not None:
            await self._task
        log.info("decision log drained: %d rows written", self.written)
