"""CPU co-serving: fine-tuning jobs train in a worker process beside the engine's step loop.

On the CPU a training slice runs on another core while the step's forward pass runs. On a
thread it would share the interpreter lock with the inference thread on every small kernel (a
small model on the CPU is bound by Python overhead, not FLOPs), so the two threads take turns
rather than run side by side. The slices run in one spawned child process instead: the base
weights are in shared memory (`share_memory_()`: moved once, never copied per job), the LoRA
weights being trained and their optimizer live in the child, and each slice's news comes back
in one `SliceReport`: tokens computed, status, events, checkpoints, and the snapshots published
for serving (their tensors travel through shared memory too). The engine paces slices with its
co-serving share as before; `RemoteTrainer` is the part of `LoraTrainer` the engine uses, so the
step loop does not know where a job trains. Checkpoints are written by the child, so resume is
the trainer's own.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

from backends.engine.finetune.job import JobStatus, TrainingJobSpec, TrainingProgress
from backends.engine.finetune.trainer import LoraTrainer
from backends.engine.lora.layers import LoraContext, enable_lora
from backends.engine.lora.weights import LoraWeights

__all__ = ["RemoteTrainer", "SliceReport", "TrainWorker", "WorkerDied", "share_weights"]

log = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """The training process exited (killed, out of memory): its jobs are lost."""


# --- messages (parent -> child) --------------------------------------------------------------


@dataclass(frozen=True)
class _Start:
    spec: TrainingJobSpec
    base_name: str


@dataclass(frozen=True)
class _Run:
    job_id: str
    tokens: int
    # Joules measured for the job's earlier slices since its last run (None: not measured),
    # applied before this slice so the checkpoints it writes carry them.
    energy: tuple[float | None, ...] = ()


@dataclass(frozen=True)
class _Drop:
    job_id: str  # cancelled: free its trainer (no reply)


@dataclass(frozen=True)
class SliceReport:
    """What the child says after each call (child -> parent)."""

    job_id: str
    tokens: int = 0
    status: JobStatus = JobStatus.QUEUED
    error: str | None = None
    events: list[tuple[str, str]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)  # all of the job's so far
    final_path: Path | None = None
    progress: TrainingProgress | None = None
    published: list[LoraWeights] = field(default_factory=list)  # in order, for serving
    cpu_s: float = 0.0  # CPU time the slice took in the child
    generation: int = 0  # which process answered (set by the parent)
    refused: tuple[str, str] | None = None  # a job the child could not start: (type, message)


def share_weights(model: nn.Module, shm: Path = Path("/dev/shm")) -> bool:
    """Move the model's weights into shared memory, in place (call before any forward runs on
    another thread: the storage is swapped under the tensors). False, and nothing moved, when
    the shared-memory filesystem cannot hold them (a container's default is 64 MiB), since a
    full tmpfs kills the process on the copy rather than raising."""
    tensors = list(model.state_dict().values())
    need = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tensors}.values())
    if shm.is_dir() and need * 1.05 > shutil.disk_usage(shm).free:
        return False
    for t in tensors:
        t.share_memory_()
    return True


class TrainWorker:
    """The child process and its two queues, started on the first job; one call at a time."""

    def __init__(self, model: nn.Module, threads: int = 1, nice: int = 0) -> None:
        self._model_cls = type(model)
        self._config = model.config
        self._state = model.state_dict()  # the tensors the parent serves with, shared
        self._threads = threads
        self._nice = nice
        self._lock = threading.Lock()
        self._proc: Any = None
        self._inbox: Any = None
        self._outbox: Any = None
        self.cpu_s = 0.0  # CPU seconds the child spent on calls, all jobs
        self.generation = 0  # processes started so far: a job lives in one of them

    def call(self, msg: _Start | _Run, generation: int | None = None) -> SliceReport:
        """Send and wait for the reply; a `generation` other than the running process's means
        the process that held the job is gone (and with it the job's state)."""
        with self._lock:
            if generation is None:
                self._ensure_started()
            elif generation != self.generation or self._proc is None:
                raise WorkerDied("the training process that held this job exited")
            self._inbox.put(msg)
            while True:
                try:
                    report: SliceReport = self._outbox.get(timeout=1.0)
                except queue.Empty:
                    if not self._proc.is_alive():
                        code = self._proc.exitcode
                        self._proc = None
                        raise WorkerDied(f"the training process exited (code {code})") from None
                    continue
                self.cpu_s += report.cpu_s
                return replace(report, generation=self.generation)

    def send(self, msg: _Drop) -> None:
        """No reply expected: the child handles it in order, after the call in flight."""
        if self._proc is not None and self._proc.is_alive():
            self._inbox.put(msg)

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._proc is None:
                return
            self._inbox.put(None)
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout)
            self._proc = None

    def _ensure_started(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        ctx = mp.get_context("spawn")  # fork would copy the engine's threads' locks mid-use
        self.generation += 1
        self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(
            target=_serve, name="engine-train",
            args=(self._model_cls, self._config, self._state, self._threads, self._nice,
                  self._inbox, self._outbox),
            daemon=True)
        self._proc.start()


class RemoteTrainer:
    """A job trained in the worker process, seen from the engine as a `LoraTrainer`."""

    def __init__(self, worker: TrainWorker, spec: TrainingJobSpec,
                 publish: Callable[[LoraWeights], None], *, base_name: str = "") -> None:
        self.spec = spec
        self._worker = worker
        self._publish = publish
        self.status = JobStatus.QUEUED
        self.error: str | None = None
        self.events: list[tuple[str, str]] = []
        self.checkpoints: list[Path] = []
        self.final_path: Path | None = None
        self._energy: list[float | None] = []
        report = worker.call(_Start(spec, base_name))
        self._generation = report.generation
        if report.refused is not None:
            kind, message = report.refused
            # A bad spec is the caller's error, as when the trainer is built in-process.
            raise ValueError(message) if kind == "ValueError" else RuntimeError(
                f"{kind}: {message}")
        assert report.progress is not None
        self._progress = report.progress
        self.joules = report.progress.joules
        self._apply(report)

    @property
    def done(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

    def run(self, budget: int) -> int:
        report = self._worker.call(_Run(self.spec.job_id, budget, tuple(self._energy)),
                                   self._generation)
        self._energy.clear()
        self._apply(report)
        return report.tokens

    def progress(self) -> TrainingProgress:
        return replace(self._progress, joules=self.joules)

    def add_energy(self, joules: float | None) -> None:
        # One unmeasured step makes the job's total unknown, not smaller (as LoraTrainer).
        self.joules = None if joules is None or self.joules is None else self.joules + joules
        self._energy.append(joules)

    def release(self) -> None:
        self._worker.send(_Drop(self.spec.job_id))

    def _apply(self, report: SliceReport) -> None:
        for weights in report.published:
            self._publish(weights)
        self.events.extend(report.events)
        self.checkpoints = report.checkpoints
        self.final_path = report.final_path
        self.error = report.error
        if report.progress is not None:
            self._progress = report.progress
        self.status = report.status


# --- the child ---------------------------------------------------------------------------------


def _serve(model_cls: type, config: Any, state: dict[str, torch.Tensor], threads: int,
           nice: int, inbox: Any, outbox: Any) -> None:
    torch.set_num_threads(threads)
    if nice:
        os.nice(nice)  # the kernel caps it at 19
    with torch.device("meta"):
        model = model_cls(config)
    ctx = LoraContext()
    slices = enable_lora(model, ctx)
    model.load_state_dict(state, assign=True)  # the parent's shared tensors, not copies
    model.requires_grad_(False)
    trainers: dict[str, LoraTrainer] = {}
    while (msg := inbox.get()) is not None:
        if isinstance(msg, _Drop):
            dropped = trainers.pop(msg.job_id, None)
            if dropped is not None:
                dropped.release()
            continue
        c0 = time.thread_time()
        published: list[LoraWeights] = []
        if isinstance(msg, _Start):
            job_id, tokens = msg.spec.job_id, 0
            try:
                trainers[job_id] = LoraTrainer(msg.spec, model, slices, ctx, published.append,
                                               base_name=msg.base_name)
            except Exception as e:
                outbox.put(SliceReport(job_id, refused=(type(e).__name__, str(e))))
                continue
        else:
            job_id = msg.job_id
            trainer = trainers.get(job_id)
            if trainer is not None:
                trainer.publish = published.append
            tokens = 0 if trainer is None else _run(trainer, msg)
        trainer = trainers.get(job_id)
        outbox.put(_report(trainer, job_id, tokens, published, time.thread_time() - c0))
        if trainer is not None and trainer.done:
            del trainers[job_id]


def _run(trainer: LoraTrainer, msg: _Run) -> int:
    """One slice; a failing job fails alone, as in the engine's own `_run_slice`."""
    for joules in msg.energy:
        trainer.add_energy(joules)
    try:
        return trainer.run(msg.tokens)
    except Exception as e:
        log.exception("fine-tuning job %s failed", msg.job_id)
        trainer.status = JobStatus.FAILED
        trainer.error = f"{type(e).__name__}: {e}"
        trainer.release()
        return 0


def _report(trainer: LoraTrainer | None, job_id: str, tokens: int, published: list[LoraWeights],
            cpu_s: float) -> SliceReport:
    if trainer is None:  # dropped meanwhile
        return SliceReport(job_id, status=JobStatus.CANCELLED, cpu_s=cpu_s)
    events = list(trainer.events)
    trainer.events.clear()
    return SliceReport(job_id, tokens, trainer.status, trainer.error, events,
                       list(trainer.checkpoints), trainer.final_path, trainer.progress(),
                       published, cpu_s)
