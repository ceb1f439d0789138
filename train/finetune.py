"""The training loop shared by the three LoRA fine-tunes (routing/minilm.py): length-bucketed
batches, AdamW with warm-up and linear decay, bf16 autocast where the CPU has native BF16,
a wall-clock budget, and the artifact written as safetensors + JSON.

Sequence tasks (`n_out == 1`) use a binary cross-entropy on one logit; token tasks
(`pooling == "none"`) a cross-entropy over `n_out` tags with -100 for ignored positions.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from routing.minilm import LoraConfig, LoraMiniLM, bf16_supported, load_base

log = logging.getLogger(__name__)


@dataclass
class Item:
    ids: list[int]  # with [CLS]/[SEP]
    label: float | list[int]  # a float for sequence tasks, per-token tags for token tasks
    types: list[int] | None = None
    weight: float = 1.0


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_tokens: int = 4096  # padded tokens per batch
    max_batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.06
    max_seconds: float = 600.0
    seed: int = 0
    threads: int = 1
    pos_weight: float | None = None
    class_weights: list[float] | None = None
    log_every: int = 20
    extra: dict[str, Any] = field(default_factory=dict)


def batches(items: Sequence[Item], cfg: TrainConfig, rng: random.Random) -> list[list[Item]]:
    """Items of similar length together (little padding), batches shuffled."""
    order = sorted(items, key=lambda it: (len(it.ids), rng.random()))
    out: list[list[Item]] = []
    cur: list[Item] = []
    for it in order:
        t = -(-max([len(it.ids)] + [len(c.ids) for c in cur]) // 8) * 8
        if cur and (t * (len(cur) + 1) > cfg.batch_tokens or len(cur) >= cfg.max_batch):
            out.append(cur)
            cur = []
        cur.append(it)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def collate(batch: Sequence[Item], token_task: bool) -> dict[str, torch.Tensor]:
    t = -(-max(len(it.ids) for it in batch) // 8) * 8
    n = len(batch)
    ids = torch.zeros(n, t, dtype=torch.long)
    mask = torch.zeros(n, t, dtype=torch.long)
    types = torch.zeros(n, t, dtype=torch.long)
    w = torch.tensor([it.weight for it in batch], dtype=torch.float32)
    if token_task:
        y = torch.full((n, t), -100, dtype=torch.long)
    else:
        y = torch.zeros(n, dtype=torch.float32)
    for r, it in enumerate(batch):
        k = len(it.ids)
        ids[r, :k] = torch.tensor(it.ids)
        mask[r, :k] = 1
        if it.types is not None:
            types[r, :k] = torch.tensor(it.types)
        if token_task:
            y[r, :k] = torch.tensor(it.label)
        else:
            y[r] = float(it.label)  # type: ignore[arg-type]
    return {"ids": ids, "mask": mask, "types": types, "y": y, "w": w}


def loss_fn(model: LoraMiniLM, b: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
    out = model(b["ids"], b["mask"], b["types"])
    if model.cfg.pooling == "none":
        cw = torch.tensor(cfg.class_weights) if cfg.class_weights else None
        return F.cross_entropy(
            out.reshape(-1, out.shape[-1]), b["y"].reshape(-1), weight=cw, ignore_index=-100
        )
    pw = torch.tensor(cfg.pos_weight) if cfg.pos_weight else None
    per = F.binary_cross_entropy_with_logits(out[:, 0], b["y"], pos_weight=pw, reduction="none")
    return (per * b["w"]).sum() / b["w"].sum()


def fit(items: Sequence[Item], lora: LoraConfig, cfg: TrainConfig) -> tuple[LoraMiniLM, dict]:
    """Train; returns the model (eval mode) and a training log."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    rng = random.Random(cfg.seed)
    model = LoraMiniLM(load_base(lora.n_layers), lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    token_task = lora.pooling == "none"
    per_epoch = len(batches(items, cfg, rng))
    total = max(1, int(per_epoch * cfg.epochs))
    warm = max(1, int(total * cfg.warmup))

    def lr_at(step: int, elapsed: float) -> float:
        """Warm-up, then linear decay over whichever ends first: the planned steps or the
        time budget (on a shared machine the budget usually decides)."""
        progress = max(step / total, elapsed / cfg.max_seconds)
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return cfg.lr * max(0.02, 1.0 - progress)

    use_bf16 = bf16_supported()
    t0 = time.perf_counter()
    step, seen, losses = 0, 0, []
    model.train()
    stopped = "steps"
    while step < total:
        for batch in batches(items, cfg, rng):
            if step >= total:
                break
            if time.perf_counter() - t0 > cfg.max_seconds:
                stopped = "time"
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, time.perf_counter() - t0)
            b = collate(batch, token_task)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = loss_fn(model, b, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            seen += len(batch)
            losses.append(float(loss.detach()))
            if step % cfg.log_every == 0:
                log.info(
                    "step %d/%d loss %.4f (%.0fs)",
                    step,
                    total,
                    sum(losses[-cfg.log_every :]) / cfg.log_every,
                    time.perf_counter() - t0,
                )
        if stopped == "time":
            break
    model.eval()
    info = {
        "steps": step,
        "planned_steps": total,
        "examples_seen": seen,
        "train_items": len(items),
        "stopped_by": stopped,
        "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
        "bf16_autocast": use_bf16,
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
    }
    return model, info


def save(model: LoraMiniLM, path: Path, meta: dict[str, Any]) -> None:
    """`path.safetensors` (deltas + head) and `path.json` (config, data, metrics)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.delta_state(), str(path.with_suffix(".safetensors")))
    lc = asdict(model.cfg)
    lc.pop("dropout", None)
    full = {"lora": lc, **meta}
    path.with_suffix(".json").write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n")
