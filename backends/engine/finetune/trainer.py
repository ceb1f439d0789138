"""One fine-tuning job's training state, advanced a few tokens at a time inside engine steps.

Token-level co-serving: each step hands the trainer a number of tokens, and it runs the forward
pass of the next chunk of its current example (autograd graph kept across steps: the chunk
attends to the earlier chunks' K/V, which stay in the graph), so training advances in whatever
slices inference leaves. When an example's last chunk has run, its loss (summed over the
example's target tokens, divided by the targets of its whole optimizer batch) goes backward
into the LoRA weights only; after `batch_size` examples (gradient accumulation) AdamW steps.
The backward of an example runs in the step that finishes it: its cost is charged to the
chunks beforehand (`CoServeConfig.train_cost` budget units per token).

Base weights never require grad; the paged KV cache is never written. Serving reads published
snapshots (`LoraWeights.detached`), never these parameters. Validation runs forward-only in the
same token slices. Checkpoints (adapter in PEFT layout + optimizer and cursor state) go to
`checkpoint_dir/step-N/`; a new trainer with `resume` picks up from the newest one.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from backends.engine.finetune.job import (
    JobStatus,
    TrainExample,
    TrainingJobSpec,
    TrainingProgress,
)
from backends.engine.lora.layers import AdapterTensors, LoraContext, target_shapes
from backends.engine.lora.weights import LoraWeights, load_adapter, save_adapter

__all__ = ["LoraTrainer"]

STATE = "trainer_state.pt"


@dataclass
class _Open:
    """The example whose chunks are running: its graph lives in `past` and `loss`."""

    example: TrainExample
    divisor: int  # target tokens of its optimizer batch
    offset: int = 0
    past: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    loss: torch.Tensor | None = None
    targets: int = 0


@dataclass
class _Validation:
    pending: list[TrainExample]
    total: float = 0.0
    count: int = 0
    then_finish: bool = False


@dataclass
class _Cursor:
    epoch: int = 0
    pos: int = 0  # next example's index in this epoch's order
    step: int = 0  # optimizer steps done
    micro: int = 0  # examples accumulated towards the next step
    batch_loss: float = 0.0
    batch_targets: int = 0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)


class LoraTrainer:
    def __init__(
        self, spec: TrainingJobSpec, model: torch.nn.Module,
        slices: dict[str, list[tuple[str, int, int]]], ctx: LoraContext,
        publish: Callable[[LoraWeights], None], *, base_name: str = "",
    ) -> None:
        self.spec = spec
        self.hp = spec.hyper
        self.model = model
        self.ctx = ctx
        self.slices = slices
        self.publish = publish
        self.status = JobStatus.QUEUED
        self.error: str | None = None
        self.events: list[tuple[str, str]] = []  # (level, message) for the engine to hand on
        self.checkpoints: list[Path] = []
        self.final_path: Path | None = None
        self.valid_loss: float | None = None
        self.joules: float | None = 0.0
        cfg = model.config
        self.num_layers = cfg.num_hidden_layers
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.train_set = [self._cut(e) for e in spec.train]
        self.valid_set = [self._cut(e) for e in spec.validation]
        if not any(e.num_targets for e in self.train_set):
            raise ValueError("no training example has an assistant token to learn")
        self.steps_per_epoch = math.ceil(len(self.train_set) / self.hp.batch_size)
        self.total_steps = self.steps_per_epoch * self.hp.n_epochs
        gen = torch.Generator().manual_seed(spec.seed)
        self.params = self._init_params(cfg, gen)
        self.weights = LoraWeights(self.hp.rank, self.hp.alpha, self.params, base_name)
        flat = [p for pair in self.params.values() for p in pair]
        self.optimizer = torch.optim.AdamW(flat, lr=self.hp.learning_rate,
                                           weight_decay=self.hp.weight_decay)
        self.cur = _Cursor()
        self._open: _Open | None = None
        self._val: _Validation | None = None
        if spec.resume:
            self._resume()
        if self.cur.step == 0 and self._val is None:
            # LoRA starts at B = 0, so this is the base model's validation loss: the reference
            # the job's final figure is compared with.
            self._start_validation(then_finish=False)

    # --- the engine's calls --------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

    def run(self, budget: int) -> int:
        """Spend up to `budget` tokens (at least one chunk of work); returns tokens computed."""
        self.status = JobStatus.RUNNING
        if self._val is not None:
            return self._validate(budget)
        if self._open is None:
            self._open = self._next_example()
        return self._train_chunk(max(1, budget))

    def progress(self) -> TrainingProgress:
        last = self.cur.losses[-1] if self.cur.losses else None
        return TrainingProgress(step=self.cur.step, total_steps=self.total_steps,
                                epoch=self.cur.epoch, train_loss=last,
                                valid_loss=self.valid_loss, tokens_trained=self.cur.tokens,
                                joules=self.joules)

    def add_energy(self, joules: float | None) -> None:
        # One unmeasured step makes the job's total unknown, not smaller.
        self.joules = None if joules is None or self.joules is None else self.joules + joules

    def release(self) -> None:
        """Drop the graph and optimizer state (cancel, failure, end)."""
        self._open = None
        self.optimizer.state.clear()
        self.ctx.groups = []

    # --- training ------------------------------------------------------------------------

    def _train_chunk(self, budget: int) -> int:
        op = self._open
        assert op is not None
        ids = op.example.token_ids
        end = min(len(ids), op.offset + budget)
        chunk = torch.tensor(ids[op.offset:end], dtype=torch.long, device=self.device)
        self.ctx.groups = [(self._tensors(), None)]
        try:
            with torch.enable_grad():
                hidden, op.past = self.model.forward_dense(chunk, op.offset, op.past)
                # Row i predicts token i + 1: only rows whose next token is a target are scored.
                rows = [i - op.offset for i in range(op.offset, end)
                        if i + 1 < len(ids) and op.example.loss_mask[i + 1]]
                if rows:
                    idx = torch.tensor(rows, dtype=torch.long, device=self.device)
                    logits = self.model.logits(hidden.index_select(0, idx))
                    target = torch.tensor([ids[op.offset + r + 1] for r in rows],
                                          dtype=torch.long, device=self.device)
                    part = F.cross_entropy(logits, target, reduction="sum")
                    op.loss = part if op.loss is None else op.loss + part
                    op.targets += len(rows)
                n = end - op.offset
                op.offset = end
                if end == len(ids):
                    self._finish_example(op)
        finally:
            self.ctx.groups = []
        self.cur.tokens += n
        return n

    def _finish_example(self, op: _Open) -> None:
        if op.loss is not None:
            (op.loss / op.divisor).backward()
            self.cur.batch_loss += float(op.loss.detach())
            self.cur.batch_targets += op.targets
        self._open = None
        self.cur.micro += 1
        self.cur.pos += 1
        epoch_end = self.cur.pos >= len(self.train_set)
        if self.cur.micro >= self.hp.batch_size or epoch_end:
            self._optimizer_step()
        if epoch_end:
            self.cur.epoch += 1
            self.cur.pos = 0

    def _optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.cur.step += 1
        loss = self.cur.batch_loss / max(1, self.cur.batch_targets)
        self.cur.losses.append(loss)
        self.cur.micro = 0
        self.cur.batch_loss = 0.0
        self.cur.batch_targets = 0
        last = self.cur.step >= self.total_steps
        if last or self.cur.step % self.hp.checkpoint_every == 0:
            self._start_validation(then_finish=last)

    def _next_example(self) -> _Open:
        order = self._order(self.cur.epoch)
        first = self.cur.pos - self.cur.micro  # this optimizer batch's first example
        batch = order[first:first + self.hp.batch_size]
        divisor = max(1, sum(self.train_set[i].num_targets for i in batch))
        return _Open(self.train_set[order[self.cur.pos]], divisor)

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.train_set)))
        random.Random(self.spec.seed * 1_000_003 + epoch).shuffle(order)
        return order

    # --- validation, checkpoints ---------------------------------------------------------

    def _start_validation(self, then_finish: bool) -> None:
        if not self.valid_set:
            self._checkpoint(then_finish)
            return
        self._val = _Validation(list(self.valid_set), then_finish=then_finish)

    def _validate(self, budget: int) -> int:
        val = self._val
        assert val is not None
        spent = 0
        self.ctx.groups = [(self._tensors(), None)]
        try:
            with torch.no_grad():
                while val.pending and (spent == 0 or spent + len(val.pending[0].token_ids)
                                       <= budget * 3):
                    ex = val.pending.pop()
                    spent += len(ex.token_ids)
                    total, count = self._example_loss(ex)
                    val.total += total
                    val.count += count
        finally:
            self.ctx.groups = []
        if not val.pending:
            self._val = None
            self.valid_loss = val.total / max(1, val.count)
            self._checkpoint(val.then_finish)
        # Forward only: a third of a training token's cost.
        return math.ceil(spent / 3)

    def _example_loss(self, ex: TrainExample) -> tuple[float, int]:
        ids = torch.tensor(ex.token_ids, dtype=torch.long, device=self.device)
        hidden, _ = self.model.forward_dense(ids, 0, None)
        rows = [i for i in range(len(ex.token_ids) - 1) if ex.loss_mask[i + 1]]
        if not rows:
            return 0.0, 0
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        logits = self.model.logits(hidden.index_select(0, idx))
        target = ids[idx + 1]
        return float(F.cross_entropy(logits, target, reduction="sum")), len(rows)

    def _checkpoint(self, final: bool) -> None:
        snapshot = self.weights.detached()
        self.publish(snapshot)
        if self.cur.step == 0:
            self.events.append(("info", f"base model validation loss {self.valid_loss:.4f}"
                                if self.valid_loss is not None else "training started"))
            return
        folder = Path(self.spec.checkpoint_dir) / f"step-{self.cur.step}"
        save_adapter(folder, snapshot)
        # STATE last and by rename: `_resume` trusts a folder whose STATE exists, so a process
        # killed mid-write must leave none rather than half of one.
        tmp = folder / (STATE + ".tmp")
        torch.save({"cursor": self.cur.__dict__, "optimizer": self.optimizer.state_dict(),
                    "valid_loss": self.valid_loss, "joules": self.joules}, tmp)
        tmp.replace(folder / STATE)
        self.checkpoints.append(folder)
        if final:
            self.final_path = Path(self.spec.checkpoint_dir) / "final"
            if self.final_path.exists():
                shutil.rmtree(self.final_path)
            save_adapter(self.final_path, snapshot)
            self.status = JobStatus.SUCCEEDED
            self.release()

    def _resume(self) -> None:
        root = Path(self.spec.checkpoint_dir)
        found = sorted((p for p in root.glob("step-*") if (p / STATE).is_file()),
                       key=lambda p: int(p.name.split("-")[1]))
        if not found:
            return
        folder = found[-1]
        saved = load_adapter(folder)
        with torch.no_grad():
            for k, (a, b) in self.params.items():
                sa, sb = saved.tensors[k]
                a.copy_(sa)
                b.copy_(sb)
        state = torch.load(folder / STATE, weights_only=False)
        self.cur = _Cursor(**state["cursor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.valid_loss = state["valid_loss"]
        self.joules = state["joules"]
        self.checkpoints = found
        self.events.append(("info", f"resumed from checkpoint {folder.name} (step "
                                    f"{self.cur.step} of {self.total_steps})"))
        self.publish(self.weights.detached())
        if self.cur.step >= self.total_steps:
            self._start_validation(then_finish=True)

    # --- helpers ---------------------------------------------------------------------------

    def _cut(self, ex: TrainExample) -> TrainExample:
        n = self.hp.max_seq_len
        if len(ex.token_ids) <= n:
            return ex
        self.events.append(("warning", f"an example of {len(ex.token_ids)} tokens was cut to "
                                       f"max_seq_len {n}"))
        return TrainExample(ex.token_ids[:n], ex.loss_mask[:n])

    def _tensors(self) -> AdapterTensors:
        return AdapterTensors.build(self.weights, self.slices, self.num_layers, self.device,
                                    self.dtype)

    def _init_params(self, cfg: object, gen: torch.Generator
                     ) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
        shapes = target_shapes(cfg)
        params = {}
        r = self.hp.rank
        for layer in range(self.num_layers):
            for target in self.hp.targets:
                fan_in, out = shapes[target]
                # PEFT's init: A Kaiming-uniform, B zero, so training starts at the base model.
                bound = 1 / math.sqrt(fan_in)
                a = (torch.rand(r, fan_in, generator=gen) * 2 - 1) * bound
                params[(layer, target)] = (a.to(self.device).requires_grad_(),
                                           torch.zeros(out, r, device=self.device,
                                                       requires_grad=True))
        return params
