"""The records a fine-tuning job passes into the engine and gets back from it. No torch here.

The gateway's fine-tuning service (OpenAI's `/v1/fine_tuning/jobs`) validates and tokenizes the
files, then hands the engine a `TrainingJobSpec` and a `TrainingListener`; the engine trains the
job's LoRA adapter in the leftover token budget of its own steps (co-serving) and reports
through the listener, from its step thread. Persistence (SQL rows, events, files) stays on the
service side: the engine only writes adapter checkpoints into `checkpoint_dir`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "JobStatus", "LoraHyperparameters", "TrainExample", "TrainingJobSpec", "TrainingListener",
    "TrainingProgress",
]

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


class JobStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class LoraHyperparameters:
    n_epochs: int = 3
    batch_size: int = 4  # examples per optimizer step (gradient accumulation up to it)
    learning_rate: float = 2e-3
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_TARGETS
    weight_decay: float = 0.0
    max_seq_len: int = 512  # longer examples are cut to this (said in the job's events)
    checkpoint_every: int = 20  # optimizer steps between checkpoints (and published versions)

    def __post_init__(self) -> None:
        if self.n_epochs < 1 or self.batch_size < 1 or self.rank < 1 or self.max_seq_len < 2:
            raise ValueError("n_epochs, batch_size and rank must be >= 1, max_seq_len >= 2")
        if not self.learning_rate > 0 or not self.alpha > 0:
            raise ValueError("learning_rate and alpha must be > 0")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise ValueError(f"LoRA targets must be among {LORA_TARGETS}, got {bad or 'none'}")


@dataclass(frozen=True)
class TrainExample:
    """One tokenized conversation: the loss is taken on tokens whose `loss_mask` is True (the
    assistant's replies), predicting token i from tokens < i."""

    token_ids: list[int]
    loss_mask: list[bool]

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.loss_mask):
            raise ValueError("token_ids and loss_mask differ in length")

    @property
    def num_targets(self) -> int:
        return sum(self.loss_mask[1:])


@dataclass(frozen=True)
class TrainingJobSpec:
    job_id: str
    adapter_name: str  # what requests ask for once served, e.g. "ft:<base>:<suffix>:<id>"
    train: list[TrainExample]
    validation: list[TrainExample] = field(default_factory=list)
    hyper: LoraHyperparameters = field(default_factory=LoraHyperparameters)
    checkpoint_dir: Path = Path(".")
    seed: int = 0
    # Resume from the newest checkpoint in checkpoint_dir when there is one (a restart).
    resume: bool = True


@dataclass(frozen=True)
class TrainingProgress:
    step: int  # optimizer steps done
    total_steps: int
    epoch: int  # 0-based epoch the next example comes from
    train_loss: float | None  # mean over the last optimizer step's target tokens
    valid_loss: float | None  # mean over the validation set, when it was last evaluated
    tokens_trained: int  # tokens through forward+backward so far (all epochs; a resumed job
    # restores the count from its checkpoint, so it spans restarts)
    joules: float | None  # measured energy of the training share, restored on resume too;
    # None: not measured


class TrainingListener(Protocol):
    """Called from the engine's step thread: must return quickly (queue the work)."""

    def on_event(self, job_id: str, level: str, message: str) -> None: ...

    def on_metrics(self, job_id: str, progress: TrainingProgress) -> None: ...

    def on_checkpoint(self, job_id: str, path: Path, progress: TrainingProgress) -> None: ...

    def on_finished(self, job_id: str, status: JobStatus, adapter_path: Path | None,
                    progress: TrainingProgress, error: str | None) -> None: ...
