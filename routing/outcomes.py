"""Per-query outcome files (which model answered how well, at what cost): RouterBench CSVs and
RouterDC JSON lists. They feed warm-start priors and the replay benchmark."""

from __future__ import annotations

import ast
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Active parameters (billions) of the models in those files, for energy estimates when a file
# has no energy column. Sources: the models' cards; closed models from public estimates,
# marked as such in MODEL_PARAMS_SOURCE.
MODEL_ACTIVE_PARAMS_B: dict[str, float] = {
    "WizardLM/WizardLM-13B-V1.2": 13, "claude-instant-v1": 20, "claude-v1": 52,
    "claude-v2": 70, "gpt-3.5-turbo-1106": 20, "gpt-4-1106-preview": 220,
    "meta/code-llama-instruct-34b-chat": 34, "meta/llama-2-70b-chat": 70,
    "mistralai/mistral-7b-chat": 7.2, "mistralai/mixtral-8x7b-chat": 12.9,
    "zero-one-ai/Yi-34B-Chat": 34,
    "mistralai/Mistral-7B-v0.1": 7.2, "meta-math/MetaMath-Mistral-7B": 7.2,
    "itpossible/Chinese-Mistral-7B-v0.1": 7.2, "HuggingFaceH4/zephyr-7b-beta": 7.2,
    "cognitivecomputations/dolphin-2.6-mistral-7b": 7.2, "meta-llama/Meta-Llama-3-8B": 8.0,
    "cognitivecomputations/dolphin-2.9-llama3-8b": 8.0,
}
MODEL_TOTAL_PARAMS_B: dict[str, float] = {"mistralai/mixtral-8x7b-chat": 46.7}
MODEL_PARAMS_SOURCE = ("open models: model cards; claude-*, gpt-3.5/4: public estimates, "
                       "not disclosed by their vendors")


@dataclass(frozen=True)
class Outcome:
    prompt: str
    dataset: str
    quality: dict[str, float]
    cost: dict[str, float]  # dollars per call; empty when the file records none
    answers: dict[str, str] = field(default_factory=dict)  # each model's recorded answer


def _answer_text(cell: str) -> str:
    """RouterBench stores most answers as a Python list literal of one string."""
    if cell.startswith("[") and cell.endswith("]"):
        try:
            value = ast.literal_eval(cell)
        except (ValueError, SyntaxError):
            return cell
        if isinstance(value, list):
            return " ".join(str(v) for v in value)
    return cell


def _prompt(cell: str) -> str:
    if cell.startswith("[") and cell.endswith("]"):
        try:
            value = ast.literal_eval(cell)
            if isinstance(value, list) and value:
                return str(value[0])
        except (ValueError, SyntaxError):
            pass
    return cell


def _routerbench(path: Path) -> list[Outcome]:
    csv.field_size_limit(sys.maxsize)
    out = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        models = [c for c in fields if f"{c}|total_cost" in fields]
        for row in reader:
            try:
                quality = {m: float(row[m]) for m in models}
                cost = {m: float(row[f"{m}|total_cost"]) for m in models}
            except (TypeError, ValueError):
                continue  # a few rows have empty cells
            if not row.get("prompt") or not row.get("eval_name"):
                continue
            answers = {m: _answer_text(a) for m in models
                       if (a := row.get(f"{m}|model_response"))}
            out.append(Outcome(_prompt(row["prompt"]), row["eval_name"], quality, cost, answers))
    return out


def _routerdc(path: Path) -> list[Outcome]:
    dataset = path.stem.replace("_train", "").replace("-train", "")
    out = []
    for item in json.loads(path.read_text()):
        scores = item.get("scores") or {}
        if item.get("question") and scores:
            out.append(Outcome(str(item["question"]), dataset,
                               {m: float(v) for m, v in scores.items()}, {}))
    return out


def load_outcomes(paths: list[Path]) -> list[Outcome]:
    rows: list[Outcome] = []
    for p in paths:
        rows.extend(_routerbench(p) if p.suffix == ".csv" else _routerdc(p))
    return rows
