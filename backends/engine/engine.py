"""The engine: a step loop in its own thread over scheduler + model runner, with an asyncio face.

Every step the scheduler returns a `SchedulerOutput` of typed items (prefill chunks, decodes,
and, with speculative decoding, verify items of 1 + k tokens whose drafts the proposer fills in
first); the runner computes all of them in one flat batch and returns logits rows for what
samples; `spec.rejection.accept` turns those rows into each sequence's new tokens (a plain
decode is a verify item with no drafts); stop conditions are checked token by token, and one
`TokenEvent` per token is handed to the request's consumer. Anything that adds tokens to a step
(training tokens for LoRA co-serving next) extends the items, not this loop.

Threading: the scheduler and the request table are guarded by one lock, held only to plan and
to record a step, never during the forward pass (torch releases the GIL in its kernels, so the
event loop keeps serving meanwhile). `generate()` adds to the scheduler under that lock from the
caller's thread, so a full queue raises `QueueFull` at once; events cross back into asyncio
with `loop.call_soon_threadsafe`.

Energy: if the meter measures, it is read before and after each step and the step's joules are
shared among the step's sequences by tokens processed; each event carries the request's
cumulative figure, so the final event's joules are the request's total.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from collections.abc import Sequence as Seq
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from backends.engine.block_manager import BlockManager
from backends.engine.finetune.coserve import CoServeConfig, CoServePlanner
from backends.engine.finetune.job import (
    JobStatus,
    TrainExample,
    TrainingJobSpec,
    TrainingListener,
    TrainingProgress,
)
from backends.engine.finetune.trainer import LoraTrainer
from backends.engine.finetune.worker import RemoteTrainer, TrainWorker, share_weights
from backends.engine.loader import preferred_dtype
from backends.engine.runner import RunItem
from backends.engine.sampler import SamplingParams, TokenLogprobs, is_stop_token
from backends.engine.scheduler import QueueFull, Scheduler
from backends.engine.sequence import SeqStatus, Sequence
from backends.engine.spec import (
    Proposer,
    RowGroup,
    SpecFigures,
    SpeculativeConfig,
    Speculator,
    accept,
)
from backends.engine.spec.calibrate import calibration_sizes, measure_step_costs
from backends.engine.spec.cost import StepCostModel
from backends.engine.step import (
    ItemKind,
    ScheduledItem,
    SchedulerOutput,
    SeqOutput,
    StepOutput,
    TrainItem,
)
from telemetry import EnergyMeter, MeterError, NullMeter, share_by_tokens

__all__ = [
    "Completion", "Engine", "EngineClosed", "EngineConfig", "QueueFull", "TokenEvent",
    "TrainingHandle",
]

log = logging.getLogger(__name__)

DType = Literal["auto", "float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class EngineClosed(RuntimeError):
    """The engine was shut down (or its step loop died) before the request finished."""


@dataclass(frozen=True)
class EngineConfig:
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    dtype: DType = "auto"  # auto: the checkpoint's dtype on CUDA, float32 on the CPU
    block_size: int = 16
    max_num_seqs: int = 64
    token_budget: int = 512
    max_waiting: int = 256
    cpu_kv_bytes: int = 512 * 2**20
    gpu_memory_fraction: float = 0.85
    num_blocks: int | None = None  # fixed KV size, overriding the memory-based sizing
    max_model_len: int | None = None  # default: the checkpoint's max_position_embeddings
    prefix_caching: bool = True
    chunked_prefill: bool = True
    speculative: SpeculativeConfig | None = None  # off unless the member turns it on
    max_loras: int = 8  # resident LoRA adapter versions (LRU beyond); 0 turns LoRA off
    coserve: CoServeConfig = CoServeConfig()  # how training shares steps with inference


@dataclass(frozen=True)
class TokenEvent:
    """One sampled token of a request; the last event of a request has `finish_reason` set.

    `text` is the new text this token completes (may be "" while a multi-byte character or a
    possible stop string is held back). `logprobs` (when the request asked for them) is the
    sampler's raw figure: the token's logprob and the top alternatives as (token id, logprob).
    `joules` is cumulative for the request (None when the meter does not measure)."""

    request_id: int
    token_id: int | None
    text: str
    logprobs: TokenLogprobs | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    joules: float | None
    energy_source: str
    speculative: SpecFigures | None = None


@dataclass
class Completion:
    """A finished request, as collected by the synchronous helpers."""

    request_id: int
    token_ids: list[int]
    text: str
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    logprobs: list[TokenLogprobs]
    joules: float | None
    energy_source: str
    speculative: SpecFigures | None = None


class Runner(Protocol):
    """What the engine needs from the model side (backends.engine.runner.ModelRunner)."""

    kv: Any  # exposes num_blocks and block_size
    device: torch.device

    def run(
        self, items: Seq[RunItem], copies: Seq[tuple[int, int]] = (),
        num_layers: int | None = None,
    ) -> torch.Tensor: ...


class TextStopper:
    """Turns detokenized text into deltas that never show a stop string, nor text past it.

    A tail that could still grow into a stop string is held back until it can't (or until the
    request ends, when `flush` releases it)."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0

    def push(self, delta: str) -> tuple[str, bool]:
        """(text to emit now, whether a stop string was hit)."""
        self.text += delta
        if not self.stops:
            return self.flush(), False
        # A stop string can't start inside sent text: that text was checked not to begin one.
        hits = [at for s in self.stops if (at := self.text.find(s, self.sent)) >= 0]
        if hits:
            out = self.text[self.sent:min(hits)]
            self.sent = len(self.text)
            return out, True
        end = len(self.text) - self._held()
        out = self.text[self.sent:end]
        self.sent = end
        return out, False

    def flush(self) -> str:
        out = self.text[self.sent:]
        self.sent = len(self.text)
        return out

    def _held(self) -> int:
        tail = self.text[self.sent:]
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(tail)), best, -1):
                if tail.endswith(s[:k]):
                    best = k
                    break
        return best


@dataclass
class _Request:
    seq: Sequence
    params: SamplingParams
    emit: Callable[[TokenEvent | BaseException], None]
    detok: Any | None  # backends.engine.tokenizer.Detokenizer
    stopper: TextStopper
    adapter_key: int | None = None  # the LoRA version this request leased
    joules: float = 0.0
    # A step the meter failed to measure makes the request's total unknown, not smaller.
    measured: bool = True


class RequestStream:
    """One request's token events. Closing it aborts the request even if no event was read
    yet: an async generator closed before it started never runs its own clean-up."""

    def __init__(self, engine: Engine, request_id: int,
                 events: AsyncGenerator[TokenEvent, None]) -> None:
        self.engine = engine
        self.request_id = request_id
        self._events = events

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> TokenEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        self.engine.abort(self.request_id)
        await self._events.aclose()


class TrainingHandle:
    """The caller's view of a job the engine trains; `cancel` takes effect at the next step."""

    def __init__(self, engine: Engine, job_id: str) -> None:
        self.engine = engine
        self.job_id = job_id

    @property
    def status(self) -> JobStatus:
        return self.engine._job_status(self.job_id)

    @property
    def progress(self) -> TrainingProgress | None:
        return self.engine._job_progress(self.job_id)

    def cancel(self) -> bool:
        return self.engine.cancel_training(self.job_id)


@dataclass
class _Job:
    trainer: LoraTrainer | RemoteTrainer  # in the step (CUDA) or in the worker process (CPU)
    listener: TrainingListener
    cancelled: bool = False
    reported_step: int = -1
    reported_checkpoints: int = 0


@dataclass
class _Flight:
    """A training slice in flight on the worker process (overlap mode; a thread waits on it)."""

    job_id: str
    future: Future[int]
    started: float
    joules0: float | None
    tokens0: int  # inference tokens computed when it started, to share the window's energy


class _JobPlanner:
    """The scheduler's TrainPlanner: the co-serving share of the leftover budget, given to the
    jobs in turn (one job per step keeps each step's training a single chunk)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._turn = 0

    def plan(self, leftover: int, num_decodes: int) -> list[TrainItem]:
        eng = self.engine
        jobs = [j for j, job in eng._jobs.items() if not job.cancelled and not job.trainer.done]
        if not jobs:
            return []
        if eng._overlap:
            if eng._flight is not None or (num_decodes and time.perf_counter() < eng._resume_at):
                return []
            leftover = self.engine.config.token_budget  # the worker's slice is not the step's
        n = self.engine.coserve.tokens(leftover, num_decodes, paced=eng._overlap)
        if n <= 0:
            return []
        self._turn += 1
        return [TrainItem(jobs[self._turn % len(jobs)], n)]


class Engine:
    def __init__(
        self,
        runner: Runner,
        *,
        config: EngineConfig | None = None,
        tokenizer: Any | None = None,
        eos_token_ids: Iterable[int] = (),
        meter: EnergyMeter | None = None,
        max_model_len: int | None = None,
        vocab_size: int | None = None,
        proposer: Proposer | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(eos_token_ids)
        self.meter = meter or NullMeter()
        self.energy_source = self.meter.source
        self.device = torch.device(runner.device)
        model = getattr(runner, "model", None)
        model_cfg = getattr(model, "config", None)
        self.vocab_size = vocab_size or getattr(model_cfg, "vocab_size", None)
        self.max_model_len = max_model_len or self.config.max_model_len or getattr(
            model_cfg, "max_position_embeddings", 1 << 30)
        self.num_params = sum(p.numel() for p in model.parameters()) if model is not None else 0
        self.attention_name = str(getattr(runner, "attention_name", "unknown"))
        self.blocks = BlockManager(runner.kv.num_blocks, runner.kv.block_size,
                                   prefix_caching=self.config.prefix_caching)
        self.scheduler = Scheduler(
            self.blocks, max_num_seqs=self.config.max_num_seqs,
            token_budget=self.config.token_budget, max_waiting=self.config.max_waiting,
            chunked_prefill=self.config.chunked_prefill)
        self.spec: Speculator | None = None
        if self.config.speculative is not None and proposer is not None:
            self.spec = Speculator(self.config.speculative, proposer, self._calibrate())
        self.lora: Any = None  # AdapterRegistry once LoRA is enabled
        self._lora_ctx: Any = None
        self._lora_slices: dict[str, list[tuple[str, int, int]]] = {}
        if self.config.max_loras > 0 and hasattr(model, "layers"):
            self._enable_lora(model)
        self.coserve = CoServePlanner(self.config.coserve)
        self._jobs: dict[str, _Job] = {}
        self._starting: set[str] = set()  # job ids whose trainer is being built
        self._ended: dict[str, JobStatus] = {}  # jobs that left `_jobs`, by how they ended
        self._job_planner = _JobPlanner(self)
        self._train_tokens = 0
        overlap = self.config.coserve.overlap
        self._overlap = self.device.type == "cpu" if overlap is None else overlap
        self._train_worker: ThreadPoolExecutor | None = None  # runs or waits on the slices
        self._train_process: TrainWorker | None = None
        # Now, before any forward pass can run beside the swap into shared memory.
        if self._overlap and self.lora is not None:
            if share_weights(model):
                cs = self.config.coserve
                self._train_process = TrainWorker(model, cs.worker_threads, cs.worker_nice)
            else:  # slices then run on the worker thread, in this process
                log.warning("shared memory cannot hold the model's weights: co-served "
                            "training runs on a thread of the engine's process")
        self._flight: _Flight | None = None
        self._train_busy_s = 0.0  # overlap mode: seconds a slice was in flight
        self._resume_at = 0.0  # overlap mode: when the next slice may start under inference
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count(1)
        self._cv = threading.Condition()
        self._stopping = False
        self._dead: BaseException | None = None
        self._steps = 0
        self._tokens_computed = 0
        self._meter_failing = False
        self._thread = threading.Thread(target=self._loop, name="engine-step", daemon=True)
        self._thread.start()

    @property
    def num_blocks(self) -> int:
        return self.blocks.num_blocks

    def _enable_lora(self, model: Any) -> None:
        from backends.engine.lora import AdapterRegistry, AdapterTensors, LoraContext, enable_lora

        self._lora_ctx = LoraContext()
        self._lora_slices = enable_lora(model, self._lora_ctx)
        param = next(model.parameters())
        n_layers = model.config.num_hidden_layers
        self.lora = AdapterRegistry(self.config.max_loras, lambda w: AdapterTensors.build(
            w, self._lora_slices, n_layers, param.device, param.dtype))
        self.runner.lora = (self._lora_ctx, self.lora.tensors)

    # --- LoRA adapters and fine-tuning jobs ----------------------------------------------

    def _need_lora(self) -> Any:
        if self.lora is None:
            raise ValueError("LoRA is off in this engine (max_loras is 0, or the model has no "
                             "decoder layers)")
        return self.lora

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Serve the PEFT LoRA folder at `path` as `name` (weights loaded on first use)."""
        reg = self._need_lora()
        with self._cv:
            reg.register(name, Path(path))

    def unload_adapter(self, name: str) -> None:
        with self._cv:
            if self.lora is not None:
                self.lora.unregister(name)

    def adapter_names(self) -> list[str]:
        with self._cv:
            return self.lora.names() if self.lora is not None else []

    def tokenize_chat(self, messages: Seq[dict[str, Any]]) -> TrainExample:
        """A conversation as training tokens, the loss on the assistant's turns only: each
        assistant turn's tokens are those its rendering adds after the generation prompt."""
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer")
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        # OpenAI's `weight: 0` on an assistant turn: keep it as context, learn nothing from it.
        learn = [m["role"] == "assistant" and m.get("weight", 1) != 0 for m in messages]
        if not any(learn):
            raise ValueError("the conversation has no assistant message to learn")
        ids: list[int] = []
        mask: list[bool] = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prompt = self.tokenizer.encode(
                self.tokenizer.apply_chat_template(msgs[:i], add_generation_prompt=True))
            full = self.tokenizer.encode(
                self.tokenizer.apply_chat_template(msgs[:i + 1], add_generation_prompt=False))
            if full[:len(ids)] != ids or full[:len(prompt)] != prompt:
                # Re-rendering changed earlier tokens (a template that rewrites history):
                # restart from this rendering, keeping the assistant mask honest.
                ids, mask = [], []
            mask.extend([False] * (len(prompt) - len(ids)))
            ids = list(prompt)
            mask.extend([learn[i]] * (len(full) - len(ids)))
            ids = list(full)
        eos = self.eos_token_ids[0] if self.eos_token_ids else None
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)  # so the adapter learns where an answer ends
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            mask.append(learn[last])
        return TrainExample(ids, mask)

    def start_training(self, spec: TrainingJobSpec,
                       listener: TrainingListener) -> TrainingHandle:
        """Train `spec`'s LoRA adapter in the leftover budget of this engine's steps."""
        self._need_lora()
        with self._cv:
            if self._stopping or self._dead is not None:
                raise EngineClosed("the engine is shut down")
            if spec.job_id in self._jobs or spec.job_id in self._starting:
                raise ValueError(f"job {spec.job_id} is already training")
            self._starting.add(spec.job_id)
        try:
            # Outside the lock: a resume reads files, and the first job starts the process.
            trainer = self._new_trainer(spec)
        finally:
            with self._cv:
                self._starting.discard(spec.job_id)
        with self._cv:
            if self._stopping or self._dead is not None:
                trainer.release()
                raise EngineClosed("the engine is shut down")
            self._jobs[spec.job_id] = _Job(trainer, listener)
            self._cv.notify()
        return TrainingHandle(self, spec.job_id)

    def _new_trainer(self, spec: TrainingJobSpec) -> LoraTrainer | RemoteTrainer:
        model = self.runner.model
        base_name = str(getattr(model.config, "name", ""))
        publish = lambda w: self._publish(spec.adapter_name, w)  # noqa: E731
        if self._train_process is not None:
            return RemoteTrainer(self._train_process, spec, publish, base_name=base_name)
        model.requires_grad_(False)
        return LoraTrainer(spec, model, self._lora_slices, self._lora_ctx, publish,
                           base_name=base_name)

    def cancel_training(self, job_id: str) -> bool:
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None or job.trainer.done:
                return False
            job.cancelled = True
            self._cv.notify()
            return True

    def _job_status(self, job_id: str) -> JobStatus:
        with self._cv:
            job = self._jobs.get(job_id)
            if job is not None:
                return job.trainer.status
            return self._ended.get(job_id, JobStatus.CANCELLED)

    def _job_progress(self, job_id: str) -> TrainingProgress | None:
        with self._cv:
            job = self._jobs.get(job_id)
            return job.trainer.progress() if job is not None else None

    def _calibrate(self) -> StepCostModel | None:
        cfg = self.config.speculative
        if cfg is None or not cfg.calibrate:
            return None
        # Sizes past 128 tokens follow the fitted line; measuring them only slows start-up.
        limit = min(128, self.config.token_budget, self.config.max_num_seqs * (1 + cfg.max_k))
        return measure_step_costs(self.runner.run, calibration_sizes(limit))

    # --- construction --------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, config: EngineConfig | None = None, *,
        meter: EnergyMeter | None = None,
    ) -> Engine:
        """Load a llama/qwen2 Hugging Face folder (weights, tokenizer) and start the engine."""
        from backends.engine.attention_cuda import select_attention
        from backends.engine.config import ModelConfig
        from backends.engine.kv_cache import KVCache, block_bytes, kv_budget_bytes
        from backends.engine.loader import load_model
        from backends.engine.runner import ModelRunner
        from backends.engine.spec.factory import (
            build_proposer,
            draft_block_bytes,
            load_draft_model,
        )
        from backends.engine.tokenizer import Tokenizer

        config = config or EngineConfig()
        folder = Path(path)
        device = resolve_device(config.device)
        mcfg = ModelConfig.from_path(folder)
        dtype = resolve_dtype(config.dtype, mcfg.dtype, device)
        model = load_model(folder, dtype=dtype, device=device, attention=select_attention(device))
        max_len = min(mcfg.max_position_embeddings,
                      config.max_model_len or mcfg.max_position_embeddings)
        spec = config.speculative
        draft = None
        if spec is not None and spec.method == "draft":
            draft = load_draft_model(Path(str(spec.draft_model)).expanduser(), mcfg,
                                     dtype=dtype, device=device,
                                     attention=select_attention(device))
        shape = dict(num_layers=mcfg.num_hidden_layers, block_size=config.block_size,
                     n_kv_heads=mcfg.num_key_value_heads, head_dim=mcfg.head_dim,
                     dtype=dtype, device=device)
        if config.num_blocks is not None:
            kv = KVCache(num_blocks=config.num_blocks, **shape)  # type: ignore[arg-type]
        else:
            # More blocks than every slot of every sequence at full length would never be used.
            cap = config.max_num_seqs * math.ceil(max_len / config.block_size)
            budget = kv_budget_bytes(device, gpu_fraction=config.gpu_memory_fraction,
                                     cpu_bytes=config.cpu_kv_bytes)
            if draft is not None:
                # Each block holds both models' KV for its positions: size blocks by the sum.
                target_b = block_bytes(mcfg.num_hidden_layers, config.block_size,
                                       mcfg.num_key_value_heads, mcfg.head_dim, dtype)
                draft_b = draft_block_bytes(draft, config.block_size, dtype)
                budget = budget * target_b // (target_b + draft_b)
            kv = KVCache.from_budget(budget, max_blocks=cap, **shape)  # type: ignore[arg-type]
        tokenizer = Tokenizer(folder)
        eos = set(mcfg.eos_token_ids)
        tok_eos = getattr(tokenizer, "eos_token_id", None)
        if tok_eos is not None:
            eos.add(int(tok_eos))
        runner = ModelRunner(model, kv)
        proposer = None
        if spec is not None:
            proposer = build_proposer(spec, runner, draft, max_num_seqs=config.max_num_seqs)
        return cls(runner, config=config, tokenizer=tokenizer,
                   eos_token_ids=sorted(eos), meter=meter, max_model_len=max_len,
                   vocab_size=mcfg.vocab_size, proposer=proposer)

    # --- requests ------------------------------------------------------------------------

    def generate(
        self, prompt_ids: Seq[int], params: SamplingParams, *, priority: int = 0,
        speculative: bool = True, adapter: str | None = None,
    ) -> RequestStream:
        """Queue a request and stream its tokens. Call from a running event loop.

        Raises at once: `QueueFull` when the waiting queue is full, `ValueError` for a request
        that can never run, `EngineClosed` after shutdown. Closing the iterator (or the task
        that iterates it being cancelled, as on a client disconnect) aborts the request and
        frees its KV blocks. `speculative=False` opts this request out of speculation;
        `adapter` names a loaded LoRA adapter (ValueError if unknown)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()

        def emit(item: TokenEvent | BaseException) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        request_id = self._submit(prompt_ids, params, priority, emit, speculative, adapter)
        return RequestStream(self, request_id, self._stream(request_id, events))

    async def _stream(
        self, request_id: int, events: asyncio.Queue[TokenEvent | BaseException],
    ) -> AsyncGenerator[TokenEvent, None]:
        try:
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self.abort(request_id)  # no-op once finished

    def abort(self, request_id: int) -> bool:
        """Stop a request and free its blocks; False if it had already finished."""
        with self._cv:
            self._forget(request_id)
            return self.scheduler.abort(request_id) is not None

    def generate_sync(
        self, prompt_ids: Seq[int], params: SamplingParams, *, priority: int = 0,
        speculative: bool = True, adapter: str | None = None,
    ) -> Completion:
        return self.generate_batch_sync([prompt_ids], params, priority=priority,
                                        speculative=speculative, adapters=[adapter])[0]

    def generate_batch_sync(
        self, prompts: Seq[Seq[int]], params: SamplingParams | Seq[SamplingParams], *,
        priority: int = 0, timeout: float | None = None,
        speculative: bool | Seq[bool] = True, adapters: Seq[str | None] | None = None,
    ) -> list[Completion]:
        """Run prompts concurrently from a plain thread and wait for all of them (benchmarks,
        tests). Prompts beyond the waiting queue's room are fed in as room frees up."""
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts):
            raise ValueError("one SamplingParams per prompt")
        specs = ([speculative] * len(prompts) if isinstance(speculative, bool)
                 else list(speculative))
        names = list(adapters) if adapters is not None else [None] * len(prompts)
        if len(names) != len(prompts):
            raise ValueError("one adapter (or None) per prompt")
        inbox: queue.SimpleQueue[tuple[int, TokenEvent | BaseException]] = queue.SimpleQueue()
        results: list[Completion] = []
        done = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while done < len(prompts):
                while len(results) < len(prompts):
                    i = len(results)
                    try:
                        rid = self._submit(prompts[i], plist[i], priority,
                                           lambda item, i=i: inbox.put((i, item)), specs[i],
                                           names[i])
                    except QueueFull:
                        if done == len(results):
                            raise  # none of ours in flight: no room will come from us
                        break
                    results.append(Completion(rid, [], "", None, len(prompts[i]), 0, [], None,
                                              self.energy_source))
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    i, item = inbox.get(timeout=left)
                except queue.Empty:
                    raise TimeoutError("generate_batch_sync timed out") from None
                if isinstance(item, BaseException):
                    raise item
                _collect(results[i], item)
                done += item.finish_reason is not None
        except BaseException:
            for c in results:
                self.abort(c.request_id)
            raise
        return results

    def _submit(
        self, prompt_ids: Seq[int], params: SamplingParams, priority: int,
        emit: Callable[[TokenEvent | BaseException], None], speculative: bool = True,
        adapter: str | None = None,
    ) -> int:
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("the prompt is empty")
        if self.vocab_size is not None and any(t < 0 or t >= self.vocab_size for t in prompt):
            # Checked here: a bad id would fail the whole batch's forward pass, not just ours.
            raise ValueError("prompt holds token ids outside the vocabulary")
        room = self.max_model_len - len(prompt)
        if room <= 0:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in the context "
                             f"of {self.max_model_len}")
        detok = None
        if self.tokenizer is not None:
            detok = self.tokenizer.detokenizer()
        with self._cv:
            if self._stopping or self._dead is not None:
                raise EngineClosed("the engine is shut down")
            seq = Sequence(seq_id=next(self._ids), prompt_ids=prompt,
                           max_tokens=min(params.max_tokens, room), priority=priority,
                           arrival=time.monotonic())
            # Tried before queueing: a bad seed must fail this call, not the step loop (the
            # sampler makes the request's generators per output position).
            params.make_generator(self.device)
            req = _Request(seq, params, emit, detok, TextStopper(params.stop),
                           measured=self.meter.measures)
            if adapter is not None:
                req.adapter_key = seq.adapter_id = self._need_lora().acquire(adapter)
            try:
                self.scheduler.add(seq)
            except BaseException:
                if req.adapter_key is not None:
                    self.lora.release(req.adapter_key)
                raise
            self._requests[seq.seq_id] = req
            if self.spec is not None:
                self.spec.add(seq.seq_id, speculative)
            self._cv.notify()
        return seq.seq_id

    # --- the step loop -------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stopping and not self.scheduler.has_work and not self._jobs:
                        self._cv.wait()
                    if self._stopping:
                        return
                    self._collect_slice()
                    self._drop_cancelled()
                    sched = self.scheduler.schedule(self.spec.planner if self.spec else None,
                                                    self._job_planner if self._jobs else None)
                    reqs = {it.seq.seq_id: self._requests[it.seq.seq_id] for it in sched.items}
                if sched.is_empty:
                    # Everything was preempted and the next plan admits from waiting (or a
                    # training slice runs on the worker, which wakes us when it ends); the
                    # short wait only guards against spinning.
                    with self._cv:
                        self._cv.wait(0.02 if self._flight is not None else 0.001)
                    continue
                try:
                    self._step(sched, reqs)
                except Exception as e:
                    log.exception("engine step failed; failing its %d requests", len(reqs))
                    self._fail(list(reqs), e)
        except BaseException as e:  # pragma: no cover - a bug in the loop itself
            log.exception("engine step loop died")
            with self._cv:
                self._dead = e
            with self._cv:
                pending = list(self._requests)
            self._fail(pending, EngineClosed(f"engine step loop died: {e!r}"))

    def _step(self, sched: SchedulerOutput, reqs: dict[int, _Request]) -> None:
        overlapped = self._flight is not None
        if self._overlap and sched.train:
            with self._cv:
                self._launch_slice(sched.train[0])
            overlapped = True
            if not sched.items:
                return
        e0 = self._read_meter()
        verifying = sched.verifying()
        draft_probs = self.spec.propose(verifying, [reqs[it.seq.seq_id].params
                                                    for it in verifying]) if verifying else {}
        t0 = time.perf_counter()
        logits = self.runner.run([_run_item(it) for it in sched.items], sched.copies)
        sampling = sched.sampling()
        gained = accept(logits, [RowGroup(reqs[it.seq.seq_id].params, it.draft_ids,
                                          draft_probs.get(it.seq.seq_id),
                                          len(it.seq.output_ids)) for it in sampling])
        seconds = time.perf_counter() - t0  # accept()'s .tolist() waits for the GPU
        # In the step, after inference (its tokens are already out); or beside it (overlap).
        trained = {} if self._overlap else self._train(sched.train)
        step_s = time.perf_counter() - t0
        e1 = self._read_meter()
        step_j = e1 - e0 if e0 is not None and e1 is not None else None
        with self._cv:
            self._steps += 1
            # What the forward pass computed: draft slots a proposer left empty cost nothing.
            computed = {it.seq.seq_id: it.num_query_tokens for it in sched.items}
            self._tokens_computed += sum(computed.values())
            self._train_tokens += sum(trained.values())
            self._share_energy(computed, trained, step_j)
            if all(it.kind is not ItemKind.PREFILL for it in sched.items):
                if self.spec is not None and sched.items:
                    self.spec.observe_forward(sum(computed.values()), seconds)
                self.coserve.observe(step_s, sched.num_decodes,
                                     sum(trained.values()) + overlapped)
            # An abort that landed during the forward pass already finished its sequence.
            live = {it.seq.seq_id: out for it, out in zip(sampling, gained, strict=True)
                    if it.seq.status is SeqStatus.RUNNING}
            self.scheduler.complete(sched, StepOutput(live))
            for it in sampling:
                out = live.get(it.seq.seq_id)
                if out is not None:
                    if self.spec is not None and it.kind is not ItemKind.PREFILL:
                        self.spec.record(it.seq.seq_id, out)
                    self._after_tokens(it.seq, reqs[it.seq.seq_id], out)
            self._report_jobs(trained)

    def _train(self, items: Seq[TrainItem]) -> dict[str, int]:
        """Run the step's training slices in the step (outside inference mode)."""
        done: dict[str, int] = {}
        for item in items:
            job = self._jobs.get(item.job_id)
            if job is not None and not job.cancelled and not job.trainer.done:
                done[item.job_id] = self._run_slice(job, item.num_tokens)
        return done

    def _launch_slice(self, item: TrainItem) -> None:
        """Overlap mode: start a job's slice on the worker thread (under the lock), which waits
        on the training process running it (or runs it, where shared memory was short)."""
        job = self._jobs.get(item.job_id)
        if job is None or self._flight is not None:
            return
        if self._train_worker is None:
            self._train_worker = ThreadPoolExecutor(1, thread_name_prefix="engine-train")
        future = self._train_worker.submit(self._run_slice, job, item.num_tokens)
        self._flight = _Flight(item.job_id, future, time.perf_counter(), self._read_meter(),
                               self._tokens_computed)
        future.add_done_callback(lambda _f: self._wake())

    def _run_slice(self, job: _Job, n: int) -> int:
        """One slice of a job, in the step or on the worker; a failing job fails alone."""
        try:
            return job.trainer.run(n)
        except Exception as e:
            log.exception("fine-tuning job %s failed", job.trainer.spec.job_id)
            job.trainer.status = JobStatus.FAILED
            job.trainer.error = f"{type(e).__name__}: {e}"
            job.trainer.release()
            return 0

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _collect_slice(self) -> None:
        """Overlap mode: account a finished slice (under the lock) and pace the next one."""
        flight = self._flight
        if flight is None or not flight.future.done():
            return
        self._flight = None
        n = flight.future.result()
        now = time.perf_counter()
        e1 = self._read_meter()
        job = self._jobs.get(flight.job_id)
        self._train_tokens += n
        self._train_busy_s += now - flight.started
        if job is not None:
            if flight.joules0 is None or e1 is None:
                job.trainer.add_energy(None)
            else:
                # The window's joules, shared with the inference tokens computed meanwhile.
                cost = round(n * self.config.coserve.train_cost)
                inference = self._tokens_computed - flight.tokens0
                job.trainer.add_energy((e1 - flight.joules0) * cost / max(1, cost + inference))
        share = max(self.coserve.share, 1e-3)
        # Under inference the worker rests so its duty cycle is the co-serving share.
        self._resume_at = now + (now - flight.started) * (1 / share - 1)
        self._report_jobs({flight.job_id: n})

    def _report_jobs(self, trained: dict[str, int]) -> None:
        """Hand each job's news to its listener (under the lock; listeners only queue)."""
        busy = self._flight.job_id if self._flight is not None else None
        for job_id in list(self._jobs):
            job = self._jobs[job_id]
            t = job.trainer
            if job_id == busy or (job_id not in trained and not t.done):
                continue
            for level, message in t.events:
                job.listener.on_event(job_id, level, message)
            t.events.clear()
            progress = t.progress()
            if progress.step != job.reported_step:
                job.reported_step = progress.step
                job.listener.on_metrics(job_id, progress)
            for path in t.checkpoints[job.reported_checkpoints:]:
                job.listener.on_checkpoint(job_id, path, progress)
            job.reported_checkpoints = len(t.checkpoints)
            if t.done:
                del self._jobs[job_id]
                self._ended[job_id] = t.status
                job.listener.on_finished(job_id, t.status, t.final_path, progress, t.error)

    def _drop_cancelled(self) -> None:
        busy = self._flight.job_id if self._flight is not None else None
        for job_id in [j for j, job in self._jobs.items() if job.cancelled and j != busy]:
            job = self._jobs.pop(job_id)
            job.trainer.status = self._ended[job_id] = JobStatus.CANCELLED
            job.trainer.release()
            if self.lora is not None:
                self.lora.unregister(job.trainer.spec.adapter_name)
            job.listener.on_finished(job_id, JobStatus.CANCELLED, None, job.trainer.progress(),
                                     None)

    def _publish(self, name: str, weights: Any) -> None:
        with self._cv:  # the registry is shared with submitting threads
            self.lora.publish(name, weights)

    def _share_energy(self, computed: dict[int, int], trained: dict[str, int],
                      step_j: float | None) -> None:
        """Split the step's joules among its sequences and jobs by the tokens each computed
        (a training token counted at its budget cost: forward and backward)."""
        cost = self.config.coserve.train_cost
        weights = {str(sid): n for sid, n in computed.items()}
        weights.update({f"train:{j}": round(n * cost) for j, n in trained.items()})
        if step_j is not None and weights:
            shares = share_by_tokens(step_j, weights)
        for sid in computed:
            req = self._requests.get(sid)
            if req is None:
                continue
            if step_j is None:
                req.measured = False
            else:
                req.joules += shares[str(sid)]
        for job_id in trained:
            job = self._jobs.get(job_id)
            if job is not None:
                job.trainer.add_energy(None if step_j is None else shares[f"train:{job_id}"])

    def _after_tokens(self, seq: Sequence, req: _Request, out: SeqOutput) -> None:
        """Stop conditions and events, token by token: a stop inside an accepted run drops the
        tokens after it, as if they had never been sampled."""
        base = len(seq.output_ids) - len(out.token_ids)
        for j, token in enumerate(out.token_ids):
            lp = out.logprobs[j] if j < len(out.logprobs) else None
            if self._after_token(seq, req, token, lp, base + j + 1):
                del seq.output_ids[base + j + 1:]
                return

    def _after_token(self, seq: Sequence, req: _Request, token: int,
                     lp: TokenLogprobs | None, count: int) -> bool:
        """Emit one token (the `count`-th of the output); True when the request ended."""
        reason: str | None = None
        text = ""
        hit = False
        if is_stop_token(token, req.params, self.eos_token_ids):
            reason = "stop"
        else:
            delta = req.detok.add(token) if req.detok is not None else ""
            text, hit = req.stopper.push(delta)
            if hit:
                reason = "stop"
        if reason is None and (count >= seq.max_tokens
                               or seq.num_prompt_tokens + count >= self.max_model_len):
            reason = "length"
        if reason is not None and not hit:
            if req.detok is not None:
                more, hit = req.stopper.push(req.detok.flush())
                text += more
            if not hit:
                # Text held back as a possible stop string's start turned out not to be one.
                text += req.stopper.flush()
        event = TokenEvent(
            request_id=seq.seq_id, token_id=token, text=text,
            logprobs=lp,
            finish_reason=reason, prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=count, cached_tokens=seq.num_cached,
            joules=req.joules if req.measured else None,
            energy_source=self.energy_source,
            speculative=self.spec.figures(seq.seq_id) if self.spec is not None else None)
        if reason is not None:
            self.scheduler.finish(seq, reason)
            self._forget(seq.seq_id)
        try:
            req.emit(event)
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening
            if reason is None:
                self._forget(seq.seq_id)
                self.scheduler.abort(seq.seq_id)
                return True
        return reason is not None

    def _forget(self, request_id: int) -> _Request | None:
        if self.spec is not None:
            self.spec.remove(request_id)
        req = self._requests.pop(request_id, None)
        if req is not None and req.adapter_key is not None:
            self.lora.release(req.adapter_key)
        return req

    def _read_meter(self) -> float | None:
        if not self.meter.measures:
            return None
        try:
            joules = self.meter.read()
        except MeterError:
            if not self._meter_failing:
                log.warning("energy meter read failed; steps go unmeasured", exc_info=True)
            self._meter_failing = True
            return None
        self._meter_failing = False
        return joules

    def _fail(self, request_ids: Iterable[int], error: BaseException) -> None:
        with self._cv:
            reqs = [(rid, self._forget(rid)) for rid in list(request_ids)]
            for rid, _ in reqs:
                self.scheduler.abort(rid)
        for _, req in reqs:
            if req is not None:
                with contextlib.suppress(RuntimeError):  # its event loop is gone
                    req.emit(error)

    # --- introspection and lifecycle -----------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._cv:
            running, waiting = self.scheduler.running, self.scheduler.waiting
            return {
                "device": str(self.device),
                "attention": self.attention_name,
                "kv_blocks": self.blocks.num_blocks,
                "kv_blocks_free": self.blocks.num_free_blocks,
                "kv_block_size": self.blocks.block_size,
                "kv_usage": self.blocks.usage(),
                "kv_waste": self.blocks.kv_waste(running),
                "running": len(running),
                "waiting": len(waiting),
                "prefix_cache_hit_tokens": self.blocks.hit_tokens,
                "preemptions": self.scheduler.num_preemptions,
                "steps": self._steps,
                "tokens_computed": self._tokens_computed,
                "energy_source": self.energy_source,
                "speculative": self.spec.stats() if self.spec is not None else None,
                "lora": self.lora.stats() if self.lora is not None else None,
                "training_tokens": self._train_tokens,
                "training_share": round(self.coserve.share, 3),
                # Overlap mode: seconds a slice was in flight, and the CPU seconds the
                # training process spent on them (the rest is waiting for a core).
                "training_busy_s": round(self._train_busy_s, 3),
                "training_cpu_s": round(self._train_process.cpu_s, 3)
                if self._train_process is not None else None,
                "training": [{"job_id": j, "status": job.trainer.status.value,
                              **job.trainer.progress().__dict__}
                             for j, job in self._jobs.items()],
            }

    @property
    def alive(self) -> bool:
        """The step loop runs and takes requests (an engine server's /health reads this)."""
        return self._thread.is_alive() and self._dead is None and not self._stopping

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the step loop (after the step in flight) and fail every unfinished request
        with `EngineClosed`. Idempotent."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._train_worker is not None:
            self._train_worker.shutdown(wait=True)
        if self._train_process is not None:
            self._train_process.close()
        with self._cv:
            pending = list(self._requests)
        self._fail(pending, EngineClosed("the engine was shut down"))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _run_item(item: ScheduledItem) -> RunItem:
    return RunItem(token_ids=item.query_tokens, start_pos=item.start,
                   block_table=list(item.seq.block_table), num_logits=item.num_logits,
                   short=item.kind is ItemKind.VERIFY, adapter=item.seq.adapter_id)


def _collect(c: Completion, ev: TokenEvent) -> None:
    if ev.token_id is not None:
        c.token_ids.append(ev.token_id)
    c.text += ev.text
    if ev.logprobs is not None:
        c.logprobs.append(ev.logprobs)
    c.cached_tokens = ev.cached_tokens
    c.joules = ev.joules
    c.finish_reason = ev.finish_reason
    c.speculative = ev.speculative


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but CUDA is not available")
    return dev


def resolve_dtype(dtype: str, checkpoint: torch.dtype, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    return preferred_dtype(device, checkpoint)
