"""The Batch API with carbon-aware scheduling.

A batch is validated whole at creation (a malformed line, an unknown endpoint or a duplicate
custom_id is a 400 naming the line, and nothing is created), planned into the start of its
completion window with the lowest grid carbon intensity and pool load (gateway.batch_scheduler),
and run by a background loop through the same path as live requests (routing, cache, safety,
budgets, one decision row per request). Every request line and its result is a SQL row, so a
restart resumes a batch where it stopped and any replica may run it (each line is claimed with
a conditional UPDATE, so one replica runs it; lines a stopped process left running run again
at the next start: at least once).

The batch reports the energy its requests used and their gCO2e at the hour they ran, next to
what the same energy would have emitted at submission; the energy is what the decision rows
say (measured or estimated, labelled), the counterfactual gCO2e is always an estimate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from gateway import batch_scheduler
from gateway.auth import Principal
from gateway.errors import GatewayError
from gateway.files import FileNotFound, FileStore
from store import BatchItem, BatchRow
from telemetry import J_PER_KWH, CarbonFeed

log = logging.getLogger("greengate.batches")
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
MAX_LINES = 50_000
_WINDOW = re.compile(r"^([1-9][0-9]{0,2})h$")


@dataclass(frozen=True, slots=True)
class ItemResult:
    status: int
    body: dict[str, Any]
    request_id: str | None
    energy_j: float | None
    energy_source: str | None


Execute = Callable[[Principal, str, dict[str, Any]], Awaitable[ItemResult]]


def _bad(message: str, param: str | None, code: str = "invalid_batch") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def _ts(t: datetime | None) -> int | None:
    if t is None:
        return None
    return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp())


def parse_lines(raw: bytes, endpoint: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(line, custom_id, body) per request; a 400 naming the first bad line otherwise."""
    out: list[tuple[int, str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise _bad(f"Input file {where} is not valid JSON: {e}", "input_file_id",
                       "invalid_jsonl") from None
        if not isinstance(item, dict):
            raise _bad(f"Input file {where} is not a JSON object.", "input_file_id",
                       "invalid_jsonl")
        cid = item.get("custom_id")
        if not isinstance(cid, str) or not cid or len(cid) > 512:
            raise _bad(f"Input file {where}: 'custom_id' must be a non-empty string of at most "
                       "512 characters.", "input_file_id", "invalid_custom_id")
        if cid in seen:
            raise _bad(f"Input file {where}: custom_id {cid!r} repeats line {seen[cid]}; "
                       "custom_ids must be unique.", "input_file_id", "duplicate_custom_id")
        seen[cid] = n
        if item.get("method", "POST") != "POST":
            raise _bad(f"Input file {where}: 'method' must be POST.", "input_file_id",
                       "invalid_method")
        if item.get("url") != endpoint:
            raise _bad(f"Input file {where}: 'url' is {item.get('url')!r} but the batch's "
                       f"endpoint is {endpoint!r}; every line must use the batch's endpoint.",
                       "input_file_id", "mismatched_endpoint")
        body = item.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise _bad(f"Input file {where}: 'body' must be a request object with a 'model'.",
                       "input_file_id", "invalid_body")
        if body.get("stream"):
            raise _bad(f"Input file {where}: batch requests cannot be streamed.",
                       "input_file_id", "invalid_body")
        out.append((n, cid, body))
        if len(out) > MAX_LINES:
            raise _bad(f"A batch holds at most {MAX_LINES} requests.", "input_file_id",
                       "too_many_requests")
    if not out:
        raise _bad("The input file holds no requests.", "input_file_id", "empty_batch")
    return out


class BatchService:
    """Creation and reads are blocking (run them off the event loop); `run_due` is the
    loop's one step (async: it calls the proxy)."""

    def __init__(self, engine: Engine, files: FileStore, feed: CarbonFeed, execute: Execute,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 concurrency: int = 4, est_request_s: float = 2.0,
                 slot_capacity: int = 2000) -> None:
        self.engine = engine
        self.files = files
        self.feed = feed
        self.execute = execute
        self.clock = clock
        self.concurrency = concurrency
        self.est_request_s = est_request_s
        self.slot_capacity = slot_capacity  # requests per 15-minute slot the pool takes easily
        self._task: asyncio.Task | None = None

    # ---- creation ------------------------------------------------------------------------
    def _load(self, start: datetime, run_s: float) -> float:
        """Planned requests of other active batches overlapping [start, start+run_s), as a
        share of what the pool takes in that time."""
        end = start + timedelta(seconds=run_s)
        with Session(self.engine) as s:
            rows = s.execute(select(BatchRow.schedule, func.count(BatchItem.line))
                             .join(BatchItem, BatchItem.batch_id == BatchRow.id)
                             .where(BatchRow.status.in_(ACTIVE))
                             .group_by(BatchRow.id, BatchRow.schedule)).all()
        planned = 0
        for sched, n in rows:
            s0 = datetime.fromtimestamp(sched["start"], UTC)
            s1 = s0 + timedelta(seconds=sched["run_s"])
            if s0 < end and start < s1:
                planned += n
        slots = max(1.0, run_s / batch_scheduler.STEP_S)
        return planned / (self.slot_capacity * slots)

    def create(self, principal: Principal, team: str, input_file_id: Any, endpoint: Any,
               completion_window: Any, metadata: Any) -> dict[str, Any]:
        if endpoint not in ENDPOINTS:
            raise _bad(f"'endpoint' must be one of {', '.join(ENDPOINTS)}.", "endpoint",
                       "invalid_endpoint")
        m = _WINDOW.match(completion_window) if isinstance(completion_window, str) else None
        if m is None or not 1 <= int(m.group(1)) <= 168:
            raise _bad("'completion_window' must be hours from '1h' to '168h' (OpenAI: '24h').",
                       "completion_window", "invalid_completion_window")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16 or
                                     not all(isinstance(v, str) for v in metadata.values())):
            raise _bad("'metadata' must be an object of at most 16 string values.", "metadata",
                       "invalid_metadata")
        schedule_now = (metadata or {}).get("schedule") == "now"
        if metadata and "schedule" in metadata and not schedule_now:
            raise _bad("metadata.schedule may only be 'now' (run at once).",
                       "metadata.schedule", "invalid_metadata")
        if not isinstance(input_file_id, str):
            raise _bad("'input_file_id' is required.", "input_file_id", "invalid_file")
        try:
            record = self.files.get(team, input_file_id)
            raw = self.files.open_bytes(team, input_file_id)
        except FileNotFound:
            raise GatewayError(404, f"No such File object: {input_file_id}",
                               param="input_file_id", code="file_not_found") from None
        if record.purpose != "batch":
            raise _bad(f"File {input_file_id} has purpose {record.purpose!r}; a batch reads a "
                       "file uploaded with purpose 'batch'.", "input_file_id", "invalid_file")
        lines = parse_lines(raw, endpoint)
        now = self.clock()
        deadline = now + timedelta(hours=int(m.group(1)))
        run_s = len(lines) * self.est_request_s / self.concurrency
        p = batch_scheduler.plan(now, deadline, run_s, self.feed, self._load, schedule_now)
        bid = "batch_" + uuid.uuid4().hex
        sched = {**p.to_json(), "allowed_models": None if principal.allowed_models is None
                 else list(principal.allowed_models), "key_prefix": principal.key_prefix,
                 "is_admin": principal.is_admin}
        with Session(self.engine) as s, s.begin():
            s.add(BatchRow(id=bid, team=team, key_id=principal.key_id, endpoint=endpoint,
                           input_file_id=input_file_id, completion_window=completion_window,
                           status="validating", created_at=now, expires_at=deadline, times={},
                           batch_metadata=metadata, schedule=sched))
            s.flush()
            s.add_all([BatchItem(batch_id=bid, line=n, custom_id=cid, body=body,
                                 status="pending") for n, cid, body in lines])
        return self.get(team, bid)

    # ---- reads ---------------------------------------------------------------------------
    def _row(self, s: Session, team: str, batch_id: Any) -> BatchRow:
        row = s.get(BatchRow, batch_id) if isinstance(batch_id, str) and len(batch_id) <= 40 \
            else None
        if row is None or row.team != team:
            raise GatewayError(404, f"No such Batch object: {batch_id}", param="batch_id",
                               code="batch_not_found")
        return row

    def _counts(self, s: Session, batch_id: str) -> dict[str, int]:
        counts = dict(s.execute(select(BatchItem.status, func.count()).where(
            BatchItem.batch_id == batch_id).group_by(BatchItem.status)).all())
        total = sum(counts.values())
        return {"total": total, "completed": counts.get("done", 0),
                "failed": counts.get("failed", 0)}

    def _object(self, s: Session, b: BatchRow) -> dict[str, Any]:
        t = b.times or {}
        sched = dict(b.schedule)
        for k in ("allowed_models", "key_prefix", "is_admin"):
            sched.pop(k, None)
        return {
            "id": b.id, "object": "batch", "endpoint": b.endpoint, "errors": b.errors,
            "input_file_id": b.input_file_id, "completion_window": b.completion_window,
            "status": b.status, "output_file_id": b.output_file_id,
            "error_file_id": b.error_file_id, "created_at": _ts(b.created_at),
            "in_progress_at": t.get("in_progress_at"), "expires_at": _ts(b.expires_at),
            "finalizing_at": t.get("finalizing_at"), "completed_at": t.get("completed_at"),
            "failed_at": t.get("failed_at"), "expired_at": t.get("expired_at"),
            "cancelling_at": t.get("cancelling_at"), "cancelled_at": t.get("cancelled_at"),
            "request_counts": self._counts(s, b.id), "metadata": b.batch_metadata,
            "schedule": sched, "carbon": b.carbon,
        }

    def get(self, team: str, batch_id: str) -> dict[str, Any]:
        with Session(self.engine) as s:
            return self._object(s, self._row(s, team, batch_id))

    def list(self, team: str, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        with Session(self.engine) as s:
            q = select(BatchRow).where(BatchRow.team == team)
            if after is not None:
                q = q.where(BatchRow.created_at < self._row(s, team, after).created_at)
            rows = list(s.scalars(q.order_by(BatchRow.created_at.desc(), BatchRow.id.desc())
                                  .limit(limit + 1)))
            data = [self._object(s, b) for b in rows[:limit]]
        return {"object": "list", "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}

    def cancel(self, team: str, batch_id: str) -> dict[str, Any]:
        now = _ts(self.clock())
        with Session(self.engine) as s, s.begin():
            b = self._row(s, team, batch_id)
            if b.status in ("validating", "in_progress"):
                b.status = "cancelling"
                b.times = {**(b.times or {}), "cancelling_at": now}
            elif b.status not in ("cancelling", "cancelled"):
                raise GatewayError(409, f"Batch {batch_id} is {b.status}; only a batch that is "
                                   "validating or in progress can be cancelled.",
                                   code="batch_not_cancellable")
        return self.get(team, batch_id)

    # ---- running -------------------------------------------------------------------------
    def _claim(self, batch_id: str, from_status: str, to_status: str,
               stamp: str | None) -> bool:
        """Move a batch between states only if it is still in `from_status` (replicas race)."""
        with Session(self.engine) as s, s.begin():
            b = s.get(BatchRow, batch_id)
            if b is None or b.status != from_status:
                return False
            n = s.execute(update(BatchRow).where(BatchRow.id == batch_id,
                                                 BatchRow.status == from_status)
                          .values(status=to_status, times={
                              **(b.times or {}), **({stamp: _ts(self.clock())} if stamp
                                                    else {})})).rowcount
            return bool(n)

    def _due(self) -> list[tuple[str, str]]:
        now = self.clock()
        with Session(self.engine) as s:
            rows = s.execute(select(BatchRow.id, BatchRow.status, BatchRow.schedule,
                                    BatchRow.expires_at).where(
                BatchRow.status.in_(("validating", "in_progress", "cancelling")))).all()
        due = []
        for bid, status, sched, expires in sorted(rows, key=lambda r: r[2]["start"]):
            expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
            if status == "cancelling" or now >= expires:
                due.append((bid, "close"))
            elif now.timestamp() >= sched["start"]:
                due.append((bid, "run"))
        return due

    async def run_due(self, max_items: int | None = None) -> int:
        """One pass: start what is due, run its pending requests (at most `max_items` in this
        pass, oldest planned start first), close what ended. Returns how many ran."""
        ran = 0
        for bid, what in await asyncio.to_thread(self._due):
            if what == "run":
                await asyncio.to_thread(self._claim, bid, "validating", "in_progress",
                                        "in_progress_at")
                left = None if max_items is None else max_items - ran
                if left is None or left > 0:
                    ran += await self._run(bid, left)
            await asyncio.to_thread(self._finish, bid)
        return ran

    def _pending(self, batch_id: str) -> tuple[BatchRow, list[BatchItem]]:
        with Session(self.engine) as s:
            b = s.get(BatchRow, batch_id)
            assert b is not None
            s.expunge(b)
            items = list(s.scalars(select(BatchItem).where(
                BatchItem.batch_id == batch_id, BatchItem.status == "pending")
                .order_by(BatchItem.line)))
            for it in items:
                s.expunge(it)
            return b, items

    def _still_running(self, batch_id: str) -> bool:
        with Session(self.engine) as s:
            b = s.get(BatchRow, batch_id)
            if b is None or b.status != "in_progress":
                return False
            exp = b.expires_at if b.expires_at.tzinfo else b.expires_at.replace(tzinfo=UTC)
            return self.clock() < exp

    async def _run(self, batch_id: str, limit: int | None = None) -> int:
        b, items = await asyncio.to_thread(self._pending, batch_id)
        items = items if limit is None else items[:limit]
        sched = b.schedule
        principal = Principal(bool(sched.get("is_admin")), None if sched.get("is_admin")
                              else b.team, b.key_id, sched.get("key_prefix"),
                              None if sched.get("allowed_models") is None
                              else tuple(sched["allowed_models"]))
        submitted_g = float(sched["submission_g_per_kwh"])
        sem = asyncio.Semaphore(self.concurrency)
        ran = 0

        async def one(it: BatchItem) -> None:
            nonlocal ran
            async with sem:
                if not await asyncio.to_thread(self._still_running, batch_id):
                    return  # cancelled or expired meanwhile: the item stays pending
                if not await asyncio.to_thread(self._claim_item, batch_id, it.line):
                    return  # another replica took it
                body = {**it.body, "stream": False}
                try:
                    res = await self.execute(principal, b.endpoint, body)
                except Exception as e:  # one bad request must not stop a batch
                    log.exception("batch %s line %d failed inside greengate", batch_id, it.line)
                    res = ItemResult(500, {"error": {"message": repr(e)[:500],
                                                     "type": "api_error"}}, None, None, None)
                g_now = self.feed.intensity_at(self.clock())
                ran += 1
                await asyncio.to_thread(self._store_result, batch_id, it.line, it.custom_id,
                                        res, g_now, submitted_g)

        await asyncio.gather(*(one(it) for it in items))
        return ran

    def _claim_item(self, batch_id: str, line: int) -> bool:
        """pending -> running, only if still pending: one replica runs each line."""
        with Session(self.engine) as s, s.begin():
            return bool(s.execute(update(BatchItem).where(
                BatchItem.batch_id == batch_id, BatchItem.line == line,
                BatchItem.status == "pending").values(status="running")).rowcount)

    def recover(self) -> int:
        """Lines left 'running' by a process that stopped mid-batch run again (at least once:
        a line another live replica is running at this moment would run twice)."""
        with Session(self.engine) as s, s.begin():
            return s.execute(update(BatchItem).where(BatchItem.status == "running")
                             .values(status="pending")).rowcount or 0

    def _store_result(self, batch_id: str, line: int, custom_id: str, res: ItemResult,
                      g_now: float, g_submitted: float) -> None:
        kwh = res.energy_j / J_PER_KWH if res.energy_j is not None else None
        result = {"id": "batch_req_" + uuid.uuid4().hex, "custom_id": custom_id,
                  "response": {"status_code": res.status, "request_id": res.request_id,
                               "body": res.body}, "error": None,
                  "energy_source": res.energy_source}
        with Session(self.engine) as s, s.begin():
            s.execute(update(BatchItem).where(BatchItem.batch_id == batch_id,
                                              BatchItem.line == line).values(
                status="done" if 200 <= res.status < 300 else "failed", result=result,
                energy_j=res.energy_j, gco2e=kwh * g_now if kwh is not None else None,
                gco2e_at_submission=kwh * g_submitted if kwh is not None else None))

    def _finish(self, batch_id: str) -> None:
        """Close a batch whose requests are all done, that was cancelled, or whose window
        ended: write its output and error files and the carbon summary."""
        now = self.clock()
        with Session(self.engine) as s:
            b = s.get(BatchRow, batch_id)
            if b is None or b.status not in ("in_progress", "cancelling", "validating"):
                return
            pending = s.scalar(select(func.count()).where(
                BatchItem.batch_id == batch_id,
                BatchItem.status.in_(("pending", "running")))) or 0
            exp = b.expires_at if b.expires_at.tzinfo else b.expires_at.replace(tzinfo=UTC)
            if b.status == "cancelling":
                final, stamp = "cancelled", "cancelled_at"
            elif pending and now >= exp:
                final, stamp = "expired", "expired_at"
            elif pending or b.status == "validating":
                return
            else:
                final, stamp = "completed", "completed_at"
            team, status, sched = b.team, b.status, dict(b.schedule)
            items = list(s.scalars(select(BatchItem).where(BatchItem.batch_id == batch_id)
                                   .order_by(BatchItem.line)))
        if not self._claim(batch_id, status, "finalizing", "finalizing_at"):
            return
        ok = [orjson.dumps(i.result) for i in items if i.status == "done"]
        bad = [orjson.dumps(i.result) for i in items if i.status == "failed"]
        for i in items:
            if i.status in ("pending", "running") and final == "expired":
                bad.append(orjson.dumps({
                    "id": "batch_req_" + uuid.uuid4().hex, "custom_id": i.custom_id,
                    "response": None, "error": {"code": "batch_expired", "message":
                                                "This request could not be executed before "
                                                "the completion window expired."}}))
        out_id = self.files.create(team, f"{batch_id}_output.jsonl", "batch_output",
                                   b"\n".join(ok) + b"\n").id if ok else None
        err_id = self.files.create(team, f"{batch_id}_error.jsonl", "batch_output",
                                   b"\n".join(bad) + b"\n").id if bad else None
        carbon = self._carbon(items, sched)
        with Session(self.engine) as s, s.begin():
            b = s.get(BatchRow, batch_id)
            assert b is not None
            b.status, b.output_file_id, b.error_file_id, b.carbon = final, out_id, err_id, carbon
            b.times = {**(b.times or {}), stamp: _ts(now)}

    def _carbon(self, items: list[BatchItem], sched: dict[str, Any]) -> dict[str, Any]:
        ran = [i for i in items if i.status in ("done", "failed")]
        known = [i for i in ran if i.energy_j is not None]
        energy = sum(i.energy_j or 0.0 for i in known)
        used = sum(i.gco2e or 0.0 for i in known)
        at_sub = sum(i.gco2e_at_submission or 0.0 for i in known)
        sources = sorted({(i.result or {}).get("energy_source") or "unknown" for i in known})
        best = energy / J_PER_KWH * float(sched["best_g_per_kwh"]) if known else None
        return {
            "requests_with_energy": len(known), "requests_without_energy": len(ran) - len(known),
            "energy_wh": energy / 3600 if known else None, "energy_sources": sources,
            "gco2e": used if known else None,
            "gco2e_at_submission_estimated": at_sub if known else None,
            "saved_gco2e_estimated": at_sub - used if known else None,
            # a batch run at once (metadata.schedule 'now'): what the cleanest start would have
            # emitted for the same energy (estimated)
            "gco2e_at_best_start_estimated": best,
            "waiting_would_save_gco2e_estimated": (used - best) if best is not None else None,
            "intensity_source": self.feed.source,
            "note": "gCO2e = each request's energy x the grid intensity when it ran; "
                    "at_submission: the same energy at the intensity when the batch was "
                    "created (an estimate: that run did not happen).",
        }

    # ---- the loop ------------------------------------------------------------------------
    def start(self, tick_s: float = 5.0) -> None:
        async def loop() -> None:
            try:
                n = await asyncio.to_thread(self.recover)
                if n:
                    log.info("batches: %d request lines left running by a stop run again", n)
            except Exception:
                log.exception("batches: recovering lines left running failed")
            while True:
                try:
                    await self.run_due()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("batch loop step failed")
                await asyncio.sleep(tick_s)

        self._task = asyncio.get_running_loop().create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
