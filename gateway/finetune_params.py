"""The body of POST /v1/fine_tuning/jobs: OpenAI's fields (method.supervised.hyperparameters or
the legacy top-level hyperparameters) plus greengate's LoRA options under the extension field,
checked into typed values; every refusal is a 400 naming the field."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from backends.engine.finetune.job import LORA_TARGETS, LoraHyperparameters
from gateway.errors import GatewayError

EXTENSION = "greengate"
BASE_LEARNING_RATE = LoraHyperparameters().learning_rate  # what a multiplier of 1 means
DEFAULT_EPOCHS = LoraHyperparameters().n_epochs
DEFAULT_BATCH = LoraHyperparameters().batch_size
_SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KNOWN = {"model", "training_file", "validation_file", "suffix", "seed", "metadata", "method",
          "hyperparameters", "integrations", EXTENSION}
_HYPER = {"batch_size", "learning_rate_multiplier", "n_epochs"}
_LORA = {"rank": (int, 1, 256), "alpha": (float, 1e-6, 1e6), "max_seq_len": (int, 2, 1 << 20),
         "checkpoint_every": (int, 1, 1 << 20), "weight_decay": (float, 0.0, 10.0)}


def bad(message: str, param: str, code: str = "invalid_request_error") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


@dataclass(frozen=True)
class JobRequest:
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    n_epochs: int | None  # None: "auto"
    batch_size: int | None
    lr_multiplier: float | None
    lora: dict[str, Any] = field(default_factory=dict)  # rank, alpha, targets, ...

    def hyper(self, examples: int) -> LoraHyperparameters:
        """The engine's hyperparameters, "auto" resolved for this many training examples."""
        return LoraHyperparameters(
            n_epochs=self.n_epochs or DEFAULT_EPOCHS,
            batch_size=self.batch_size or max(1, min(DEFAULT_BATCH, examples)),
            learning_rate=BASE_LEARNING_RATE * (self.lr_multiplier or 1.0),
            **{k: tuple(v) if k == "targets" else v for k, v in self.lora.items()})


def _number(value: Any, param: str, kind: type, lo: float, hi: float) -> Any:
    ok = not isinstance(value, bool) and (
        isinstance(value, int) if kind is int else isinstance(value, int | float))
    if not ok or not lo <= value <= hi:
        what = "an integer" if kind is int else "a number"
        raise bad(f"'{param}' must be {what} between {lo:g} and {hi:g} (or \"auto\").", param)
    return kind(value)


def _hyper(h: Any, prefix: str) -> dict[str, Any]:
    if h is None:
        return {}
    if not isinstance(h, dict):
        raise bad(f"'{prefix}' must be an object.", prefix)
    unknown = sorted(set(h) - _HYPER)
    if unknown:
        raise bad(f"'{prefix}.{unknown[0]}' is not a supervised hyperparameter "
                  f"({', '.join(sorted(_HYPER))}).", f"{prefix}.{unknown[0]}")
    out: dict[str, Any] = {}
    for name, kind, lo, hi in (("n_epochs", int, 1, 50), ("batch_size", int, 1, 256),
                               ("learning_rate_multiplier", float, 1e-3, 100.0)):
        v = h.get(name, "auto")
        out[name] = None if v == "auto" else _number(v, f"{prefix}.{name}", kind, lo, hi)
    return out


def _lora(ext: Any) -> dict[str, Any]:
    if ext is None:
        return {}
    if not isinstance(ext, dict):
        raise bad(f"'{EXTENSION}' must be an object.", EXTENSION)
    out: dict[str, Any] = {}
    for name, value in ext.items():
        param = f"{EXTENSION}.{name}"
        if name == "targets":
            if not isinstance(value, list) or not value or any(
                    t not in LORA_TARGETS for t in value):
                raise bad(f"'{param}' must be a non-empty list among {', '.join(LORA_TARGETS)}.",
                          param)
            out[name] = list(dict.fromkeys(value))
        elif name in _LORA:
            kind, lo, hi = _LORA[name]
            out[name] = _number(value, param, kind, lo, hi)
        else:
            raise bad(f"'{param}' is not a fine-tuning option (targets, "
                      f"{', '.join(_LORA)}).", param)
    return out


def parse(body: Any) -> JobRequest:
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.", "body")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise bad(f"Unknown field '{unknown[0]}'.", unknown[0], "unknown_parameter")
    for name in ("model", "training_file"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise bad(f"'{name}' is required and must be a non-empty string.", name)
    vf = body.get("validation_file")
    if vf is not None and (not isinstance(vf, str) or not vf):
        raise bad("'validation_file' must be a file id.", "validation_file")
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.fullmatch(suffix)):
        raise bad("'suffix' must be 1 to 64 letters, digits, '-' or '_'.", "suffix")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise bad("'seed' must be an integer between 0 and 2147483647.", "seed")
    meta = body.get("metadata")
    if meta is not None and (not isinstance(meta, dict) or len(meta) > 16 or any(
            not isinstance(k, str) or len(k) > 64 or not isinstance(v, str) or len(v) > 512
            for k, v in meta.items())):
        raise bad("'metadata' takes at most 16 string pairs (keys <= 64, values <= 512 chars).",
                  "metadata")
    if body.get("integrations"):
        raise bad("Integrations (wandb) are not supported by greengate.", "integrations",
                  "unsupported_parameter")
    hyper = _hyper(body.get("hyperparameters"), "hyperparameters")
    method = body.get("method")
    if method is not None:
        if not isinstance(method, dict) or method.get("type") != "supervised":
            kind = method.get("type") if isinstance(method, dict) else None
            raise bad(f"Only the 'supervised' method is supported (got {kind!r}).",
                      "method.type", "unsupported_parameter")
        sup = method.get("supervised") or {}
        if not isinstance(sup, dict):
            raise bad("'method.supervised' must be an object.", "method.supervised")
        from_method = _hyper(sup.get("hyperparameters"), "method.supervised.hyperparameters")
        if hyper and from_method and hyper != from_method:
            raise bad("Give hyperparameters in 'method' or at the top level, not two "
                      "different sets.", "hyperparameters")
        hyper = from_method or hyper
    return JobRequest(
        model=body["model"], training_file=body["training_file"], validation_file=vf,
        suffix=suffix, seed=seed, metadata=meta, n_epochs=hyper.get("n_epochs"),
        batch_size=hyper.get("batch_size"), lr_multiplier=hyper.get("learning_rate_multiplier"),
        lora=_lora(body.get(EXTENSION)))
