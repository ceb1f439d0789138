"""OpenAI's fine-tuning jobs for the bundled engine's base models.

A create checks everything first (the body, the base member, the files line by line through
the engine's chat template) and only then writes the job and hands it to the engine, which
trains a LoRA adapter in the leftover token budget of the steps it serves in. The engine
reports from its step thread; the reports are handed to the event loop at once and persisted
in order (events, metrics, checkpoints, usage) by one consumer task, so SQL never runs on the
step thread. Training tokens and their energy are charged to the team's budgets as they come
(measured where the engine's meter measures, else estimated and labelled so). On success the
adapter becomes a pool member `ft:<base>:<suffix>:<id>` that only the job's team sees, with
a quality prior moved by its validation loss against the base's. On a gateway start, jobs
that were queued or running are handed to the engine again and resume from their newest
checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine as SqlEngine

from backends import CircuitBreaker
from backends.engine.finetune.job import JobStatus, TrainingJobSpec, TrainingProgress
from gateway import finetune_data, finetune_params
from gateway.auth import Principal
from gateway.errors import GatewayError
from gateway.files import FileNotFound, FileStore, namespace
from gateway.finetune_objects import checkpoint_object, event_cursor, event_object, job_object
from gateway.finetune_objects import page as list_page
from gateway.finetune_store import TERMINAL, FineTuningStore, JobNotFound, now
from gateway.pool import Pool, PoolMember
from gateway.settings import Settings
from store import FineTunedAdapter, FineTuningCheckpoint, FineTuningJob
from telemetry import Budgets, estimate_from_params

if TYPE_CHECKING:  # the engine (torch) is imported only where a pool has an engine member
    from backends import EngineMember

log = logging.getLogger("greengate.finetune")

# A trained token runs forward and backward (activation gradients through the frozen base
# weights, weight gradients for LoRA only): about three forward passes' worth of compute.
TRAIN_COST_FACTOR = 3.0
FINE_TUNED_TAG = "fine-tuned"
# How often a gateway looks for adapters other processes (workers, replicas) finished.
ADAPTER_POLL_S = 5.0


class JobLock:
    """One process trains a job: an exclusive flock on its checkpoint folder, held while the
    job runs here. Gateway workers on one machine share the state folder, so at a restart
    only the first to take the lock resumes the job (the others leave it alone)."""

    def __init__(self, folder: Path) -> None:
        self._path = folder / ".lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # not POSIX: one process per machine is assumed
            return True
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def not_found(job_id: str) -> GatewayError:
    return GatewayError(404, f"No fine-tuning job '{job_id}' for this team.",
                        param="fine_tuning_job_id", code="fine_tuning_job_not_found")


@dataclass
class _Run:
    """One engine run of a job (a resume is a new run): what has been charged of it."""

    job_id: str
    team: str
    key_id: int | None
    base: str
    handle: Any | None = None
    lock: JobLock | None = None
    tokens_seen: int = 0  # the engine's cumulative counters at the last charge
    joules_seen: float = 0.0
    started: bool = False
    fresh: bool = True  # started from step 0: its first validation loss is the base's
    resumed: bool = False  # resubmitted after a gateway restart
    cancel_requested: bool = False
    checkpoints: set[int] = field(default_factory=set)


class _Bridge:
    """The engine's TrainingListener: called on its step thread, so each call only queues."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self._loop = loop
        self._queue = queue

    def _put(self, *item: Any) -> None:
        # A closed loop: the gateway is gone and there is nothing left to record into.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def on_event(self, job_id: str, level: str, message: str) -> None:
        self._put("event", job_id, level, message)

    def on_metrics(self, job_id: str, progress: TrainingProgress) -> None:
        self._put("metrics", job_id, progress)

    def on_checkpoint(self, job_id: str, path: Path, progress: TrainingProgress) -> None:
        self._put("checkpoint", job_id, path, progress)

    def on_finished(self, job_id: str, status: JobStatus, adapter_path: Path | None,
                    progress: TrainingProgress, error: str | None) -> None:
        self._put("finished", job_id, status, adapter_path, progress, error)


def results_csv(curve: list[dict[str, Any]]) -> bytes:
    """OpenAI's result file: one row per optimizer step (empty cells: not measured then)."""
    rows = ["step,train_loss,valid_loss,tokens_trained"]
    for d in curve:
        rows.append(",".join("" if d.get(k) is None else f"{d[k]}" for k in (
            "step", "train_loss", "valid_loss", "tokens_trained")))
    return ("\n".join(rows) + "\n").encode()


def finetune_gain(base_loss: float | None, tuned_loss: float | None) -> float | None:
    """How much of the base's per-token perplexity on the team's held-out data the adapter
    removed: 1 - exp(tuned - base), in (-inf, 1), clipped to [-1, 1]. Positive: better than
    the base on that data. None without both losses."""
    if base_loss is None or tuned_loss is None or not all(
            math.isfinite(x) for x in (base_loss, tuned_loss)):
        return None
    return max(-1.0, min(1.0, 1.0 - math.exp(tuned_loss - base_loss)))


class FineTuningService:
    def __init__(self, settings: Settings, sql: SqlEngine, pool: Pool, files: FileStore,
                 budgets: Budgets, routing: Any) -> None:
        self.settings = settings
        self.store = FineTuningStore(sql)
        self.pool = pool
        self.files = files
        self.budgets = budgets
        self.routing = routing  # gateway.routing_service.RoutingService
        self.root = Path(settings.state_dir) / "finetune"
        self._runs: dict[str, _Run] = {}
        self._queue: asyncio.Queue | None = None
        self._consumer: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._bridge: _Bridge | None = None
        self._stopping = False

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._bridge = _Bridge(asyncio.get_running_loop(), self._queue)
        self._consumer = asyncio.create_task(self._consume(), name="finetune-reports")
        await self._serve_new_adapters()
        for job in await asyncio.to_thread(self.store.unfinished):
            await self._resume(job)
        self._watcher = asyncio.create_task(self._watch(), name="finetune-adapters")

    async def _serve_new_adapters(self) -> None:
        for a in await asyncio.to_thread(self.store.adapters):
            if self.pool.get(a.name) is not None:
                continue
            try:
                await self._serve_adapter(a)
            except Exception:  # one broken adapter folder must not stop the gateway
                log.exception("adapter %s could not be served", a.name)

    async def _watch(self) -> None:
        """Adapters that jobs in other processes finished join this pool too."""
        while True:
            await asyncio.sleep(ADAPTER_POLL_S)
            try:
                await self._serve_new_adapters()
            except Exception:  # the database away: the next tick tries again
                log.exception("looking for new fine-tuned adapters failed")

    async def stop(self) -> None:
        """Before the engine stops: what it reports while shutting down must not mark its
        jobs failed or cancelled; they stay queued/running and resume at the next start."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def close(self) -> None:
        """After the engine stopped (its step thread joined, so every report is queued):
        persist what is left, so SQL knows every checkpoint that is on disk."""
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), 10.0)
            except TimeoutError:
                log.warning("fine-tuning: %d reports not persisted at shutdown",
                            self._queue.qsize())
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        for run in self._runs.values():
            if run.lock is not None:
                run.lock.release()

    # ---- the API -----------------------------------------------------------------------
    def _base(self, principal: Principal, name: str) -> EngineMember:
        m = self.pool.get(name)
        team = namespace(principal.team)
        if m is None or (m.team is not None and m.team != team):
            raise GatewayError(400, f"The model '{name}' does not exist in this greengate pool "
                               "or is not available for fine-tuning.", param="model",
                               code="model_not_available")
        if not m.is_engine:
            raise GatewayError(400, f"The model '{name}' cannot be fine-tuned here: only "
                               "members served by the bundled engine (kind: engine) can.",
                               param="model", code="model_not_available")
        if not principal.may_use(name):
            raise GatewayError(403, f"This key may not use the model '{name}'.", param="model",
                               code="model_not_allowed")
        if m.backend.engine.lora is None:
            raise GatewayError(400, f"The model '{name}' has LoRA turned off (max_loras 0).",
                               param="model", code="model_not_available")
        return m.backend  # type: ignore[return-value]

    def _dataset(self, team: str, file_id: str, param: str,
                 base: EngineMember) -> finetune_data.Dataset:
        """Blocking: the file's bytes and every line through the chat template."""
        try:
            rec = self.files.get(team, file_id)
        except FileNotFound:
            raise GatewayError(404, f"No such File object: {file_id}", param=param,
                               code="file_not_found") from None
        if rec.purpose != "fine-tune":
            raise GatewayError(400, f"{param}: file {file_id} has purpose '{rec.purpose}'; "
                               "upload it with purpose 'fine-tune'.", param=param,
                               code="invalid_file_purpose")
        limit = self.settings.finetune_max_file_bytes
        if rec.bytes > limit:
            raise GatewayError(400, f"{param}: file {file_id} is {rec.bytes} bytes, over the "
                               f"fine-tuning limit of {limit} bytes.", param=param,
                               code="file_too_large")
        raw = self.files.open_bytes(team, file_id)
        try:
            return finetune_data.load(raw, param, self.settings.finetune_max_examples,
                                      self.settings.finetune_max_tokens,
                                      base.engine.tokenize_chat)
        except finetune_data.DataProblem as e:
            raise GatewayError(400, str(e), param=param, code=f"invalid_{param}") from None

    def _over_budget(self, team: str | None, key_id: int | None) -> Any:
        """The exhausted rule, if any. Shared counters reserve on a check: the reservation
        is given back at once (training is charged as it is measured, not reserved)."""
        rid = "ft-" + uuid.uuid4().hex
        try:
            return self.budgets.check(team, key_id, rid=rid)
        finally:
            self.budgets.charge(team, key_id, None, None, rid=rid)

    def _check_budget(self, principal: Principal) -> None:
        try:
            over = self._over_budget(principal.team, principal.key_id)
        except GatewayError:  # shared counters away under redis_outage=fail_closed
            raise
        except Exception:  # counters unreachable: as on the request path, do not refuse
            log.exception("budget counters unavailable; fine-tuning without the check")
            return
        if over is not None:
            raise GatewayError(429, f"Budget exhausted: {over.rule.describe()} is spent; it "
                               f"resets at {over.resets_at.isoformat()}.",
                               code="budget_exceeded", headers={"x-should-retry": "false"})

    async def create(self, principal: Principal, body: Any) -> dict[str, Any]:
        req = finetune_params.parse(body)
        team = namespace(principal.team)
        base = self._base(principal, req.model)
        self._check_budget(principal)
        train = await asyncio.to_thread(self._dataset, team, req.training_file,
                                        "training_file", base)
        valid = None
        if req.validation_file is not None:
            valid = await asyncio.to_thread(self._dataset, team, req.validation_file,
                                            "validation_file", base)
        try:
            hyper = req.hyper(len(train.examples))
        except ValueError as e:
            raise GatewayError(400, str(e), param="method.supervised.hyperparameters",
                               code="invalid_hyperparameters") from None
        job_id = "ftjob-" + uuid.uuid4().hex[:24]
        name = f"ft:{req.model}:{req.suffix or ''}:{job_id[-8:]}"
        steps = math.ceil(len(train.examples) / hyper.batch_size) * hyper.n_epochs
        job = FineTuningJob(
            id=job_id, team=team, key_id=principal.key_id, model=req.model, status="queued",
            training_file=req.training_file, validation_file=req.validation_file,
            suffix=req.suffix, fine_tuned_model=name,
            hyperparameters={"batch_size": hyper.batch_size,
                             "learning_rate_multiplier": req.lr_multiplier or 1.0,
                             "n_epochs": hyper.n_epochs},
            lora={"rank": hyper.rank, "alpha": hyper.alpha, "targets": list(hyper.targets),
                  "learning_rate": hyper.learning_rate, "max_seq_len": hyper.max_seq_len,
                  "checkpoint_every": hyper.checkpoint_every,
                  "weight_decay": hyper.weight_decay},
            seed=req.seed, user_metadata=req.metadata, created_at=now(), step=0,
            total_steps=steps, trained_tokens=0, examples=len(train.examples),
            checkpoint_dir=str(self.root / job_id))
        v = (f"; validation file {req.validation_file}: {len(valid.examples)} examples"
             if valid else "; no validation file (no validation loss will be reported)")
        await asyncio.to_thread(self.store.create, job, [
            ("info", f"Validated training file {req.training_file}: {len(train.examples)} "
                     f"examples, {train.tokens} tokens ({train.targets} trained on){v}"),
            ("info", f"Fine-tuning job created: LoRA rank {hyper.rank} on {req.model}, "
                     f"{steps} steps")])
        await self._submit(job, base, train, valid, resumed=False)
        return job_object(await asyncio.to_thread(self.store.get, None, job_id))

    async def _submit(self, job: FineTuningJob, base: EngineMember,
                      train: finetune_data.Dataset, valid: finetune_data.Dataset | None,
                      resumed: bool, lock: JobLock | None = None) -> None:
        assert self._bridge is not None, "FineTuningService.start() was not called"
        lora = job.lora
        req = finetune_params.JobRequest(
            job.model, job.training_file, job.validation_file, job.suffix, job.seed, None,
            job.hyperparameters["n_epochs"], job.hyperparameters["batch_size"],
            job.hyperparameters["learning_rate_multiplier"],
            {k: lora[k] for k in ("rank", "alpha", "targets", "max_seq_len",
                                  "checkpoint_every", "weight_decay")})
        spec = TrainingJobSpec(
            job_id=job.id, adapter_name=job.fine_tuned_model, train=train.examples,
            validation=valid.examples if valid else [], hyper=req.hyper(len(train.examples)),
            checkpoint_dir=Path(job.checkpoint_dir), seed=job.seed, resume=True)
        cp = await asyncio.to_thread(self.store.newest_checkpoint, job.id) if resumed else None
        run = _Run(job.id, job.team, job.key_id, job.model, fresh=cp is None, resumed=resumed)
        if cp is not None:
            # The engine's counters restart from the checkpoint it resumes from.
            run.tokens_seen = int(cp.metrics.get("tokens_trained") or 0)
            run.joules_seen = float(cp.metrics.get("joules") or 0.0)
        run.lock = lock or JobLock(Path(job.checkpoint_dir))
        if lock is None and not await asyncio.to_thread(run.lock.acquire):
            raise RuntimeError(f"job {job.id} is locked by another process")  # a fresh id
        self._runs[job.id] = run
        try:
            run.handle = await asyncio.to_thread(base.engine.start_training, spec, self._bridge)
        except (ValueError, RuntimeError, OSError) as e:
            # ValueError: the engine refused the spec; RuntimeError: it is shut down
            # (EngineClosed) or its training process died (WorkerDied); OSError: the process
            # could not be started. The job fails with the reason, the request does not.
            self._runs.pop(job.id, None)
            run.lock.release()
            await asyncio.to_thread(self._fail, job.id, f"the engine refused the job: {e}",
                                    "engine_refused")

    def _fail(self, job_id: str, message: str, code: str) -> None:
        self.store.update(job_id, only_if_active=True, status="failed", finished_at=now(),
                          error={"code": code, "message": message, "param": None})
        self.store.add_event(job_id, "error", f"Job failed: {message}")

    async def _resume(self, job: FineTuningJob) -> None:
        lock = JobLock(Path(job.checkpoint_dir))
        if not await asyncio.to_thread(lock.acquire):
            log.info("job %s runs in another gateway process; not resubmitted here", job.id)
            return
        m = self.pool.get(job.model)
        if m is None or not m.is_engine:
            lock.release()
            await asyncio.to_thread(self._fail, job.id, f"the base member '{job.model}' is no "
                                    "longer in the pool", "base_model_gone")
            return
        try:
            base: EngineMember = m.backend  # type: ignore[assignment]
            train = await asyncio.to_thread(self._dataset, job.team, job.training_file,
                                            "training_file", base)
            valid = None if job.validation_file is None else await asyncio.to_thread(
                self._dataset, job.team, job.validation_file, "validation_file", base)
        except GatewayError as e:
            lock.release()
            await asyncio.to_thread(self._fail, job.id, f"cannot resume: {e.message}",
                                    "resume_failed")
            return
        cp = await asyncio.to_thread(self.store.newest_checkpoint, job.id)
        # The engine resumes from the newest checkpoint on disk and says which in its own
        # event; one written as the gateway stopped may be newer than the last one reported.
        where = (f"the last one recorded here is at step {cp.step_number}" if cp is not None
                 else "none was recorded here")
        await asyncio.to_thread(self.store.add_event, job.id, "info",
                                "Gateway restarted: the job was resubmitted to the engine, which "
                                f"resumes from its newest checkpoint ({where})", "message",
                                {"resumed": True, "step": cp.step_number if cp else 0})
        await self._submit(job, base, train, valid, resumed=True, lock=lock)

    async def get(self, principal: Principal, job_id: str) -> dict[str, Any]:
        try:
            job = await asyncio.to_thread(self.store.get, namespace(principal.team), job_id)
        except JobNotFound:
            raise not_found(job_id) from None
        return job_object(job)

    async def list(self, principal: Principal, after: str | None, limit: int,
                   team: str | None = None, any_team: bool = False) -> dict[str, Any]:
        scope = team if any_team else namespace(principal.team)
        try:
            rows, more = await asyncio.to_thread(self.store.list, scope, after, limit)
        except JobNotFound:
            raise GatewayError(400, f"'after': no job '{after}' for this team.", param="after",
                               code="invalid_cursor") from None
        return list_page([job_object(j) for j in rows], more)

    async def cancel(self, principal: Principal, job_id: str) -> dict[str, Any]:
        team = namespace(principal.team)
        try:
            job = await asyncio.to_thread(self.store.get, team, job_id)
        except JobNotFound:
            raise not_found(job_id) from None
        if job.status in TERMINAL:
            raise GatewayError(400, f"Job {job_id} has already {job.status}; only a queued or "
                               "running job can be cancelled.", param="fine_tuning_job_id",
                               code="job_not_cancellable")
        run = self._runs.get(job_id)
        if run is not None:
            run.cancel_requested = True
            if run.handle is not None:
                await asyncio.to_thread(run.handle.cancel)
        await asyncio.to_thread(self._cancelled, job_id)
        return job_object(await asyncio.to_thread(self.store.get, team, job_id))

    def _cancelled(self, job_id: str) -> None:
        if self.store.update(job_id, only_if_active=True, status="cancelled",
                             finished_at=now()):
            self.store.add_event(job_id, "info", "Job cancelled")

    async def events(self, principal: Principal, job_id: str, after: str | None,
                     limit: int, any_team: bool = False) -> dict[str, Any]:
        try:
            cursor = event_cursor(after)
        except ValueError:
            raise GatewayError(400, f"'after' must be an event id (ftevent-<n>), not "
                               f"{after!r}.", param="after", code="invalid_cursor") from None
        scope = None if any_team else namespace(principal.team)
        try:
            rows, more = await asyncio.to_thread(self.store.events, scope, job_id, cursor,
                                                 limit)
        except JobNotFound:
            raise not_found(job_id) from None
        return list_page([event_object(e) for e in rows], more)

    async def checkpoints(self, principal: Principal, job_id: str, after: str | None,
                          limit: int, any_team: bool = False) -> dict[str, Any]:
        scope = None if any_team else namespace(principal.team)
        try:
            job = await asyncio.to_thread(self.store.get, scope, job_id)
            rows, more = await asyncio.to_thread(self.store.checkpoints, scope, job_id, after,
                                                 limit)
        except JobNotFound:
            raise not_found(job_id) from None
        return list_page([checkpoint_object(c, job.fine_tuned_model) for c in rows], more)

    async def detail(self, job_id: str) -> dict[str, Any]:
        """For the admin pages: the job (any team), its loss curve and checkpoints."""
        try:
            job = await asyncio.to_thread(self.store.get, None, job_id)
            curve = await asyncio.to_thread(self.store.metrics, None, job_id)
        except JobNotFound:
            raise not_found(job_id) from None
        out = job_object(job)
        out["greengate"]["curve"] = curve
        out["greengate"]["serving"] = self.pool.get(job.fine_tuned_model) is not None
        return out

    # ---- reports from the engine --------------------------------------------------------
    async def _consume(self) -> None:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            try:
                await self._handle(*item)
            except Exception:  # one bad report must not stop the others being recorded
                log.exception("fine-tuning report %s for %s failed", item[0], item[1])
            finally:
                self._queue.task_done()

    async def _handle(self, kind: str, job_id: str, *args: Any) -> None:
        run = self._runs.get(job_id)
        if run is None:
            return  # not ours (a job started by someone else on the same engine)
        if kind == "event":
            level, message = args
            await asyncio.to_thread(self.store.add_event, job_id,
                                    level if level in ("info", "warn", "error") else "info",
                                    message)
        elif kind == "metrics":
            await asyncio.to_thread(self._metrics, run, args[0])
        elif kind == "checkpoint":
            await asyncio.to_thread(self._checkpoint, run, *args)
        elif kind == "finished":
            await self._finished(run, *args)

    def _progress_columns(self, run: _Run, p: TrainingProgress) -> dict[str, Any]:
        values: dict[str, Any] = {"step": p.step, "total_steps": p.total_steps,
                                  "train_loss": p.train_loss}
        if p.valid_loss is not None:
            values["valid_loss"] = p.valid_loss
            if run.fresh:
                # LoRA starts at B = 0 and validation runs first: the base model's loss.
                values["base_valid_loss"] = p.valid_loss
                run.fresh = False
        if not run.started:
            run.started = True
            values["status"] = "running"
            if not run.resumed:  # a resumed job keeps the time it first started
                values["started_at"] = now()
        return values

    def _charge(self, run: _Run, p: TrainingProgress) -> None:
        """Charge the work since the last report: tokens, energy (measured by the engine's
        meter, else estimated from the base's size x TRAIN_COST_FACTOR), and cost."""
        if p.tokens_trained < run.tokens_seen:  # an engine that counts per run from 0
            run.tokens_seen, run.joules_seen = 0, 0.0
        tokens = p.tokens_trained - run.tokens_seen
        run.tokens_seen = p.tokens_trained
        meter = self.pool.meter
        energy_j: float | None = None
        source: str | None = None
        if p.joules is not None and meter is not None and meter.measures:
            if p.joules < run.joules_seen:
                run.joules_seen = 0.0
            energy_j, source = p.joules - run.joules_seen, meter.source
            run.joules_seen = p.joules
        elif tokens > 0:
            member = self.pool.get(run.base)
            e = member.cfg.energy if member is not None else None
            est = estimate_from_params(e.active_params_b, e.total_params_b, tokens) if e else None
            if est is not None:
                energy_j = est.joules * TRAIN_COST_FACTOR
                source = f"{est.source}-train-x{TRAIN_COST_FACTOR:g}"
        if tokens <= 0 and not energy_j:
            return
        member = self.pool.get(run.base)
        # Forward + backward per trained token, priced as prompt tokens of the base member.
        cost = member.cost(tokens, 0) if member is not None else None
        self.store.add_usage(run.job_id, tokens, energy_j, source, cost)
        team = None if run.team == namespace(None) else run.team
        try:
            self.budgets.charge(team, run.key_id, cost, energy_j)
        except Exception:  # the ledger row above still counts at the next start
            log.exception("charging training to budgets failed for %s", run.job_id)
        try:
            over = self._over_budget(team, run.key_id)
        except Exception:
            log.exception("budget counters unavailable; training goes on unchecked")
            return
        if over is not None and not run.cancel_requested:
            run.cancel_requested = True
            if run.handle is not None:
                run.handle.cancel()
            self._fail(run.job_id, "the team's budget is exhausted; training stopped",
                       "budget_exceeded")

    def _metrics(self, run: _Run, p: TrainingProgress) -> None:
        active = self.store.update(run.job_id, only_if_active=True,
                                   **self._progress_columns(run, p))
        if not active and not run.cancel_requested and run.handle is not None:
            # Cancelled (or failed) through another gateway process: stop training here.
            run.cancel_requested = True
            run.handle.cancel()
        self._charge(run, p)
        data = {"step": p.step, "total_steps": p.total_steps, "epoch": p.epoch,
                "train_loss": p.train_loss, "valid_loss": p.valid_loss,
                "tokens_trained": p.tokens_trained}
        parts = [f"Step {p.step}/{p.total_steps}"]
        if p.train_loss is not None:
            parts.append(f"training loss={p.train_loss:.4f}")
        if p.valid_loss is not None:
            parts.append(f"validation loss={p.valid_loss:.4f}")
        self.store.add_event(run.job_id, "info", ", ".join(parts), "metrics", data)

    def _checkpoint(self, run: _Run, path: Path, p: TrainingProgress) -> None:
        if p.step in run.checkpoints:
            return
        run.checkpoints.add(p.step)
        self.store.add_checkpoint(FineTuningCheckpoint(
            id="ftckpt-" + uuid.uuid4().hex[:24], job_id=run.job_id, created_at=now(),
            step_number=p.step, path=str(path),
            metrics={"step": p.step, "train_loss": p.train_loss, "valid_loss": p.valid_loss,
                     "full_valid_loss": p.valid_loss, "tokens_trained": p.tokens_trained,
                     "joules": p.joules}))
        self.store.add_event(run.job_id, "info", f"Checkpoint saved at step {p.step}")

    async def _finished(self, run: _Run, status: JobStatus, adapter_path: Path | None,
                        p: TrainingProgress, error: str | None) -> None:
        await asyncio.to_thread(self._charge, run, p)
        if self._stopping and status is not JobStatus.SUCCEEDED:
            return  # the engine is shutting down: the job resumes at the next start
        self._runs.pop(run.job_id, None)
        if run.lock is not None:
            run.lock.release()
        if status is JobStatus.SUCCEEDED and adapter_path is not None:
            await asyncio.to_thread(self._succeeded, run, adapter_path, p)
            job = await asyncio.to_thread(self.store.get, None, run.job_id)
            if not self._stopping:
                await self._serve_adapter(FineTunedAdapter(
                    name=job.fine_tuned_model, team=job.team, base_member=job.model,
                    job_id=job.id, path=str(adapter_path), created_at=now(),
                    valid_loss=job.valid_loss, base_valid_loss=job.base_valid_loss))
        elif status is JobStatus.CANCELLED or run.cancel_requested:
            await asyncio.to_thread(self._cancelled, run.job_id)
        else:
            await asyncio.to_thread(self._fail, run.job_id, error or "training failed",
                                    "training_failed")

    def _succeeded(self, run: _Run, adapter_path: Path, p: TrainingProgress) -> None:
        values = self._progress_columns(run, p)
        values.pop("status", None)
        if not self.store.update(run.job_id, only_if_active=True, status="succeeded",
                                 finished_at=now(), **values):
            return  # cancelled meanwhile
        job = self.store.get(None, run.job_id)
        self.store.add_adapter(FineTunedAdapter(
            name=job.fine_tuned_model, team=job.team, base_member=job.model, job_id=job.id,
            path=str(adapter_path), created_at=now(), valid_loss=job.valid_loss,
            base_valid_loss=job.base_valid_loss))
        try:
            results = self.files.create(job.team, "step_metrics.csv", "fine-tune-results",
                                        results_csv(self.store.metrics(None, job.id)))
            self.store.update(job.id, result_files=[results.id])
        except Exception:  # the adapter is trained and served; the CSV is a convenience
            log.exception("writing the results file of %s failed", job.id)
        gain = finetune_gain(job.base_valid_loss, job.valid_loss)
        vs = "" if gain is None else (
            f"; validation loss {job.valid_loss:.4f} against the base's "
            f"{job.base_valid_loss:.4f}")
        self.store.add_event(run.job_id, "info", f"New fine-tuned model created: "
                             f"{job.fine_tuned_model}{vs}")
        self.store.add_event(run.job_id, "info", "The job has successfully completed")

    async def _serve_adapter(self, a: FineTunedAdapter) -> None:
        """Load the adapter into its base's engine and add it to the pool (its team only)."""
        base = self.pool.get(a.base_member)
        if base is None or not base.is_engine:
            log.warning("adapter %s: base member %s is not in the pool; not served", a.name,
                        a.base_member)
            return
        if not (Path(a.path) / "adapter_config.json").is_file():
            log.warning("adapter %s: %s holds no adapter; not served", a.name, a.path)
            return
        from backends import AdapterMember

        engine_member: EngineMember = base.backend  # type: ignore[assignment]
        await asyncio.to_thread(engine_member.engine.load_adapter, a.name, Path(a.path))
        backend = AdapterMember(engine_member, a.name)
        cfg = base.cfg.model_copy(update={
            "name": a.name, "fallbacks": [], "like": base.name,
            "tags": [*base.cfg.tags, FINE_TUNED_TAG]})
        member = PoolMember(cfg=cfg, backend=backend, breaker=CircuitBreaker(
            self.settings.cooldown_failures, self.settings.cooldown_s,
            self.settings.cooldown_window_s, self.settings.cooldown_failure_ratio),
            prices=base.prices, context_window=base.context_window, retries=base.retries,
            team=a.team, base_member=base.name)
        self.pool.add(member)
        gain = finetune_gain(a.base_valid_loss, a.valid_loss)
        self.routing.add_member(member, like=base.name, gain=gain)
        log.info("serving fine-tuned adapter %s for team %s (prior gain %s)", a.name, a.team,
                 "unknown" if gain is None else f"{gain:+.3f}")
