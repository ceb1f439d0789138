"""Pair verifier for the semantic cache: given the new question, the cached one, the cosine
of their MiniLM embeddings and the embeddings themselves, P(the cached answer answers the
new question).

Why: cosine alone cannot tell "... first day at EP Energy?" from "... at CMS Energy?" while
it misses true rewordings; the threshold that kept wrong hits under 1% (0.97) served only
7-14% of true paraphrases.

Model: a logistic head over the pair's features (routing/cache/pair_features.py: the cosine,
lexical differences such as substituted content words and names, and the embeddings'
elementwise product and absolute difference), trained by `python -m train.cache_verifier`
on Quora Question Pairs with a question-disjoint split. It reuses the embeddings the cache
already has (the new question's, computed for routing, and the entry's, stored with it), so
a decision costs no model forward pass: tens of microseconds (bench/cache_eval.py measures
it). A MiniLM cross-encoder fine-tuned on the same pairs (LoRA, first 3 layers) did no
better than cosine alone under 1% wrong hits and cost a forward pass per lookup; see the
README's semantic-cache section for what was measured.

Modes (per team, `CachePolicy.semantic`): `strict` and `balanced` each have a cosine floor
and a score threshold chosen on validation pairs (`artifacts/cache_pair_head.json` has them
and the held-out figures); `off` serves exact hits only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routing.cache.pair_features import LEXICAL, pair_matrix

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
NAME = "cache_pair_head"
MODES = ("strict", "balanced", "off")


@dataclass(frozen=True)
class ModeRule:
    cosine_floor: float  # candidates below it are never verified (a miss)
    threshold: float  # verifier probability needed for a hit; 0: cosine alone decides


@dataclass(frozen=True)
class Verdict:
    hit: bool
    score: float | None  # verifier probability; None when it did not run
    reason: str  # "verified", "rejected", "below_floor", "off", "cosine", "legacy"


Z_CLIP = 6.0  # standardised features beyond this are clipped: no feature alone can swing it


@dataclass(frozen=True)
class PairHead:
    """Standardise the features (clipped to +-Z_CLIP), then a linear logit."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    bias: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.standardise(x) @ self.coef + self.bias

    def standardise(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.mean) / self.scale, -Z_CLIP, Z_CLIP)

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": [round(float(v), 7) for v in self.mean],
            "scale": [round(float(v), 7) for v in self.scale],
            "coef": [round(float(v), 7) for v in self.coef],
            "bias": float(self.bias),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PairHead:
        def arr(k: str) -> np.ndarray:
            return np.asarray(d[k], dtype=np.float32)

        head = cls(arr("mean"), arr("scale"), arr("coef"), float(d["bias"]))
        if not (head.mean.shape == head.scale.shape == head.coef.shape):
            raise ValueError("pair head: mean, scale and coef differ in length")
        return head


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


class PairVerifier:
    def __init__(
        self, head: PairHead, modes: dict[str, ModeRule], meta: dict | None = None
    ) -> None:
        self.head = head
        self.modes = modes
        self.meta = meta or {}

    @classmethod
    def load(cls, path: Path | str | None = None) -> PairVerifier:
        """The shipped artifact: `path` is its folder or its `.json` (None: the default)."""
        p = Path(path) if path else ARTIFACTS
        file = p / f"{NAME}.json" if p.is_dir() else p.with_suffix(".json")
        if not file.exists():
            raise FileNotFoundError(
                f"{file} not found: train it with "
                "`python -m train.cache_verifier --data ../shared/data`"
            )
        meta = json.loads(file.read_text())
        modes = {
            k: ModeRule(float(v["cosine_floor"]), float(v["threshold"]))
            for k, v in meta.get("modes", {}).items()
        }
        return cls(PairHead.from_json(meta["head"]), modes, meta)

    def score_many(
        self,
        pairs: list[tuple[str, str]],
        cosines: np.ndarray | list[float],
        va: np.ndarray,
        vb: np.ndarray,
    ) -> np.ndarray:
        """P(same question) for (new, cached) pairs, with their cosines and unit embeddings
        (rows of `va` belong to the new questions, of `vb` to the cached ones)."""
        if not pairs:
            return np.zeros(0)
        x = pair_matrix(pairs, np.asarray(cosines), va, vb)
        return _sigmoid(self.head.logits(x))

    def score(self, a: str, b: str, cosine: float, va: np.ndarray, vb: np.ndarray) -> float:
        s = float(self.score_many([(a, b)], [cosine], va[None, :], vb[None, :])[0])
        return s if math.isfinite(s) else 0.0

    def _fits(self, va: np.ndarray, vb: np.ndarray) -> bool:
        """The head was fitted on embeddings of one size (cosine, lexical, 2 x dim)."""
        dim = (len(self.head.coef) - 1 - len(LEXICAL)) // 2
        return va.shape == vb.shape == (dim,)

    def floor(self, mode: str) -> float:
        """Lowest cosine worth verifying in `mode` (above 1: no semantic hits)."""
        rule = self.modes.get(mode)
        return rule.cosine_floor if rule else 2.0

    def decide(
        self,
        mode: str,
        a: str,
        b: str | None,
        cosine: float,
        va: np.ndarray | None = None,
        vb: np.ndarray | None = None,
    ) -> Verdict:
        """Serve the cached question `b` (embedding `vb`) for the new question `a` (`va`)?"""
        rule = self.modes.get(mode)
        if rule is None:
            return Verdict(False, None, "off")
        if cosine < rule.cosine_floor:
            return Verdict(False, None, "below_floor")
        if rule.threshold <= 0.0:  # this mode is cosine alone (chosen so on validation)
            return Verdict(True, None, "cosine")
        va = None if va is None else np.asarray(va, np.float32).reshape(-1)
        vb = None if vb is None else np.asarray(vb, np.float32).reshape(-1)
        if b is None or va is None or vb is None or not self._fits(va, vb):
            # an older row without its question, or embeddings of another model: cosine only
            return Verdict(cosine >= float(self.meta.get("legacy_threshold", 0.97)), None, "legacy")
        s = self.score(a, b, cosine, va, vb)
        return Verdict(s >= rule.threshold, s, "verified" if s >= rule.threshold else "rejected")
