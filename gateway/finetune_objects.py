"""OpenAI's fine-tuning objects (fine_tuning.job, .job.event, .job.checkpoint) from the rows,
plus greengate's figures under "greengate" (losses, step, energy with its source)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.finetune_store import utc
from store import FineTuningCheckpoint, FineTuningEvent, FineTuningJob


def _ts(t: datetime | None) -> int | None:
    t = utc(t)
    return int(t.timestamp()) if t is not None else None


def job_object(j: FineTuningJob) -> dict[str, Any]:
    hyper = dict(j.hyperparameters)
    done = j.status == "succeeded"
    return {
        "id": j.id, "object": "fine_tuning.job", "created_at": _ts(j.created_at),
        "error": j.error, "fine_tuned_model": j.fine_tuned_model if done else None,
        "finished_at": _ts(j.finished_at), "hyperparameters": hyper, "model": j.model,
        "organization_id": j.team, "result_files": list(j.result_files or []), "seed": j.seed,
        "status": j.status,
        "trained_tokens": j.trained_tokens if j.status in ("succeeded", "failed",
                                                             "cancelled") else None,
        "training_file": j.training_file, "validation_file": j.validation_file,
        "estimated_finish": _finish_estimate(j), "integrations": [],
        "metadata": j.user_metadata,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "suffix": j.suffix,
        "greengate": {
            "step": j.step, "total_steps": j.total_steps, "train_loss": j.train_loss,
            "valid_loss": j.valid_loss, "base_valid_loss": j.base_valid_loss,
            "trained_tokens": j.trained_tokens, "energy_j": j.energy_j,
            "energy_source": j.energy_source, "examples": j.examples, "lora": j.lora,
            "started_at": _ts(j.started_at),
        },
    }


def _finish_estimate(j: FineTuningJob) -> int | None:
    """A running job's finish at its pace so far (None before its first step)."""
    started = utc(j.started_at)
    if j.status != "running" or started is None or not j.step or not j.total_steps:
        return None
    elapsed = (datetime.now(UTC) - started).total_seconds()
    return int(started.timestamp() + elapsed * j.total_steps / j.step)


def event_object(e: FineTuningEvent) -> dict[str, Any]:
    return {"id": f"ftevent-{e.id}", "object": "fine_tuning.job.event",
            "created_at": _ts(e.created_at), "level": e.level, "message": e.message,
            "data": e.data or {}, "type": e.type}


def event_cursor(after: str | None) -> int | None:
    """The numeric id behind 'ftevent-<n>'; None for no cursor, ValueError for a bad one."""
    if after is None:
        return None
    head, _, n = after.partition("-")
    if head != "ftevent" or not n.isdigit():
        raise ValueError(after)
    return int(n)


def checkpoint_object(c: FineTuningCheckpoint, fine_tuned_model: str) -> dict[str, Any]:
    return {"id": c.id, "object": "fine_tuning.job.checkpoint", "created_at": _ts(c.created_at),
            "fine_tuned_model_checkpoint": f"{fine_tuned_model}:ckpt-step-{c.step_number}",
            "fine_tuning_job_id": c.job_id, "metrics": c.metrics,
            "step_number": c.step_number}


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if data:
        out["first_id"], out["last_id"] = data[0]["id"], data[-1]["id"]
    return out
