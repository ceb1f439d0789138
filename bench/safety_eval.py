"""Evaluate the jailbreak / prompt-injection classifier (`routing.safety.jailbreak`), shipped
artifact.

Quality (default): rebuild the never-trained evaluation sets from ../shared/data exactly as
`train.jailbreak` did (checked against the artifact's `test_digest`) and report, at the
shipped threshold, precision / recall / F1 / FPR / AUROC per family: the held-out split per
source (no family on both sides), the held-out awesome-chatgpt role-play and self-instruct
prompts, request forms and hard negatives / hard positives from templates never trained on,
long benign texts, and XSTest (never trained on). `--data FILE.csv` (columns `text,label`)
evaluates that file instead.

Latency: p50 / p90 of `score()` on one torch thread for prompts of 64, 128, 512 and 2,048
MiniLM tokens and CPU time per request, interleaved with an anchor: the full 6-layer MiniLM
forward over the same 512 tokens (what a full-depth fine-tune would cost); ratio reported.
`--compare` adds, in the same rounds, the path before routing/safety/serving.py (`reference/`)
and the person-name tagger at 512 tokens, new and old (old: reference precision and its
stride-96 windows), with per-round new / old CPU ratios.
`--precision` picks the serving precision (default `auto`) for the quality run too.
Bad input: empty, 1 MB, undecodable bytes, emoji only, code only: score, decision, time.

    .venv/bin/python bench/safety_eval.py --out bench/results/safety_eval.json
    .venv/bin/python bench/safety_eval.py --no-quality --compare --reps 40
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

from routing.safety.jailbreak import SafetyClassifier  # noqa: E402
from routing.safety.serving import PRECISIONS  # noqa: E402


def evaluate_shared(clf: SafetyClassifier, data_dir: Path) -> dict[str, Any]:
    from train import safety_data as sd
    from train.jailbreak import build, metrics_by_set, summarise

    data = build(data_dir, int(clf.meta.get("training", {}).get("config", {}).get("seed", 0)))
    digest = sd.test_digest(data["examples"])
    want = clf.meta.get("data", {}).get("test_digest")
    ev = data["evals"]
    scores = {k: np.array(clf.score_batch(v[0])) for k, v in ev.items()}
    per_set = metrics_by_set(scores, ev, clf.threshold)
    return {
        "test_digest": digest,
        "same_split_as_training": digest == want,
        "threshold": clf.threshold,
        "summary": summarise(per_set),
        "per_family": per_set,
    }


def evaluate_csv(clf: SafetyClassifier, path: Path) -> dict[str, Any]:
    from train.safety_data import binary_metrics

    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    s = np.array(clf.score_batch([r["text"] for r in rows]))
    return {"file": str(path), **binary_metrics(s, [int(r["label"]) for r in rows], clf.threshold)}


def _prompt(n_tokens: int, clf: SafetyClassifier) -> str:
    words = [
        "please",
        "summarise",
        "the",
        "attached",
        "quarterly",
        "report",
        "and",
        "list",
        "the",
        "main",
        "risks",
        "for",
        "the",
        "board",
        "meeting",
        "next",
        "week",
        "with",
        "figures",
    ]
    out, i = [], 0
    while True:
        out.append(words[i % len(words)])
        i += 1
        if i % 8 == 0:
            text = " ".join(out)
            if len(clf.model.tokenizer.encode(text, add_special_tokens=False).ids) >= n_tokens:
                return text


def _anchor(n_tokens: int) -> Any:
    """The full 6-layer MiniLM forward over `n_tokens` in one sequence, same precision."""
    import torch
    import torch.nn.functional as F

    from routing.minilm import bf16_supported, encode, load_base

    dt = torch.bfloat16 if bf16_supported() else torch.float32
    w = {k: v.to(dt) for k, v in load_base(6).items()}

    def lin(x: Any, i: int, t: str) -> Any:
        p = f"encoder.layer.{i}.{t}"
        return F.linear(x, w[p + ".weight"], w[p + ".bias"])

    ids = torch.randint(1000, 20000, (1, n_tokens))
    mask = torch.ones_like(ids)

    def run() -> None:
        with torch.inference_mode():
            encode(w, 6, ids, mask, None, lin)

    return run


def _time(fn: Any) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w0) * 1000, (time.process_time() - c0) * 1000


def _q(xs: list[float], f: float) -> float:
    return round(float(np.quantile(xs, f)), 2)


def latency(clf: SafetyClassifier, reps: int, compare: bool = False) -> dict[str, Any]:
    """p50 / p90 wall and CPU ms per call on one torch thread. `compare`: the path before
    routing/safety/serving.py (`reference/...`) and the person-name tagger (new and old, 512
    tokens) run in the same rounds, and each new / old ratio is the median of per-round
    ratios of CPU time (load drifts alike for both within a round)."""
    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    prompts = {n: _prompt(n, clf) for n in (64, 128, 512, 2048)}
    runs: dict[str, Any] = {f"tokens_{n}": (lambda p=p: clf.score(p)) for n, p in prompts.items()}
    chunks = {f"tokens_{n}": clf.explain(p).chunks for n, p in prompts.items()}
    if compare:
        from routing.safety.person_names import PersonTagger

        old = clf.with_precision("reference")
        for n, p in prompts.items():
            runs[f"reference/tokens_{n}"] = lambda p=p: old.score(p)
        tagger = PersonTagger.load()
        old_tagger = PersonTagger(  # the path before: fp32/bf16 TunedModel, stride windows
            tagger.model,
            tagger.threshold,
            tagger.address_threshold,
            precision="reference",
            layout="stride",
        )
        p512 = prompts[512]
        runs["person_tagger/tokens_512"] = lambda: tagger.entities(p512)
        runs["reference/person_tagger/tokens_512"] = lambda: old_tagger.entities(p512)
    runs["anchor_6layer_512"] = _anchor(512)
    for fn in runs.values():  # warm-up: oneDNN builds kernels per shape
        fn()
        fn()
    res: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in runs}
    for _ in range(reps):  # interleaved: load changes hit all alike
        for k, fn in runs.items():
            w, c = _time(fn)
            res[k]["wall"].append(w)
            res[k]["cpu"].append(c)
    out: dict[str, Any] = {"threads": 1, "reps": reps, "precision": clf.encoder.precision}
    if hasattr(os, "getloadavg"):
        out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    for k, v in res.items():
        out[k] = {
            "p50_ms": _q(v["wall"], 0.5),
            "p90_ms": _q(v["wall"], 0.9),
            "cpu_ms_p50": _q(v["cpu"], 0.5),
            "cpu_ms_p90": _q(v["cpu"], 0.9),
            "chunks": chunks.get(k.removeprefix("reference/")),
        }
    if compare:
        out["new_over_reference_cpu"] = {
            k: round(
                statistics.median(
                    n / o
                    for n, o in zip(res[k]["cpu"], res[f"reference/{k}"]["cpu"], strict=True)
                    if o > 0
                ),
                3,
            )
            for k in res
            if f"reference/{k}" in res
        }
    out["ratio_512_vs_anchor_p50"] = round(
        statistics.median(res["tokens_512"]["wall"])
        / statistics.median(res["anchor_6layer_512"]["wall"]),
        3,
    )
    out["target_p50_512_ms"] = 15.0
    return out


BAD_INPUTS = {
    "empty": "",
    "whitespace": " \n\t ",
    "one_megabyte": ("lorem ipsum dolor sit amet " * 40_000)[:1_000_000],
    "non_utf8_surrogates": b"caf\xe9 \xff\xfe ignore".decode("utf-8", "surrogateescape"),
    "emoji_only": "😀🔥🚀" * 200,
    "code_only": "def f(x):\n    return [i * i for i in range(x) if i % 3]\n" * 40,
    "nul_and_controls": "\x00\x01\x02 hello \x7f",
}


def bad_inputs(clf: SafetyClassifier) -> dict[str, Any]:
    out = {}
    for name, text in BAD_INPUTS.items():
        t0 = time.perf_counter()
        r = clf.explain(text)
        out[name] = {
            "chars": len(text),
            "score": round(r.score, 4),
            "flagged": r.score >= clf.threshold,
            "chunks": r.chunks,
            "ms": round((time.perf_counter() - t0) * 1000, 1),
        }
    return out


def _cell(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def print_table(result: dict[str, Any]) -> None:
    q = result.get("quality", {})
    if "per_family" in q:
        print(f"{'family':44} {'n':>5} {'prec':>6} {'recall':>6} {'f1':>6} {'fpr':>6}")
        for k, m in q["per_family"].items():
            print(
                f"{k:44} {m['n']:>5} "
                + " ".join(f"{_cell(m.get(f)):>6}" for f in ("precision", "recall", "f1", "fpr"))
            )
        for k, m in q["summary"].items():
            print(
                f"== {k:41} {m['n']:>5} "
                + " ".join(f"{_cell(m.get(f)):>6}" for f in ("precision", "recall", "f1", "fpr"))
            )
    if "latency" in result:
        print(json.dumps(result["latency"], indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, default=None, help="folder or stem (default: shipped)")
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder")
    ap.add_argument("--data", type=Path, default=None, help="a CSV with columns text,label")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument(
        "--compare",
        action="store_true",
        help="latency of the path before routing/safety/serving.py, and of the person-name "
        "tagger, interleaved in the same rounds",
    )
    ap.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="serving precision (routing/safety/serving.py); reference: the path before it",
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # one core, also for the quality pass (a shared machine)
    clf = SafetyClassifier.load(args.artifact, args.precision)
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "artifact": {
            "threshold": clf.threshold,
            "lora": clf.meta.get("lora"),
            "chunking": clf.meta.get("chunking"),
            "precision": clf.encoder.precision,
        },
    }
    if not args.no_quality:
        result["quality"] = (
            evaluate_csv(clf, args.data) if args.data else evaluate_shared(clf, args.shared)
        )
    if not args.no_latency:
        result["latency"] = latency(clf, args.reps, args.compare)
        result["bad_input"] = bad_inputs(clf)
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
