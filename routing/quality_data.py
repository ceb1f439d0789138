"""Per-query outcome data as arrays for the quality predictors: prompts, each model's recorded
quality (and cost), and the gateway's own view of every prompt (the MiniLM embedding and the
bandit's context vector from `routing.features.FeatureExtractor`).

Embedding ~8,000 prompts takes a minute of CPU, so the embeddings and contexts are cached under
`.greengate/quality_data/` (gitignored), keyed by the prompts and the feature layout; the
cache only ever saves time, a missing or stale file is recomputed.

A family is one folder of `../shared/data` whose files share one model set: `routerbench`
(11 models, recorded cost per call) and `routerdc7` (7 open models, no cost column)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routing.outcomes import load_outcomes

log = logging.getLogger(__name__)

FAMILIES = ("routerbench", "routerdc7")
DEFAULT_CACHE = Path(".greengate") / "quality_data"


@dataclass(frozen=True)
class QualityData:
    """Row i is one prompt; column k one model. cost is NaN where the file records none."""

    family: str
    models: tuple[str, ...]
    prompts: tuple[str, ...]
    datasets: tuple[str, ...]
    groups: np.ndarray  # (n,) int: rows with the same prompt text share a group
    quality: np.ndarray  # (n, k) in [0, 1]
    cost: np.ndarray  # (n, k) dollars per call, NaN when unknown
    embeddings: np.ndarray  # (n, 384) float32, L2-normalised
    contexts: np.ndarray  # (n, d) the bandit's context vectors
    layout: str  # FeatureExtractor.layout the contexts follow

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def inputs(self) -> np.ndarray:
        """What the predictors read: [embedding, context]."""
        return predictor_inputs(self.embeddings, self.contexts)

    def subset(self, idx: np.ndarray) -> QualityData:
        ix = np.asarray(idx, dtype=np.intp)
        return QualityData(
            self.family,
            self.models,
            tuple(self.prompts[i] for i in ix),
            tuple(self.datasets[i] for i in ix),
            self.groups[ix],
            self.quality[ix],
            self.cost[ix],
            self.embeddings[ix],
            self.contexts[ix],
            self.layout,
        )


def predictor_inputs(embeddings: np.ndarray, contexts: np.ndarray) -> np.ndarray:
    """The predictors' input rows: the embedding followed by the context vector."""
    e = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
    c = np.atleast_2d(np.asarray(contexts, dtype=np.float64))
    return np.concatenate([e, c], axis=1)


def family_files(data_dir: Path, family: str) -> list[Path]:
    folder = data_dir / family
    pattern = "*.csv" if family == "routerbench" else "*.json"
    return sorted(folder.glob(pattern))


def prompt_groups(prompts: tuple[str, ...]) -> np.ndarray:
    """Group ids by exact prompt text (after whitespace trimming)."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(p.strip(), len(ids)) for p in prompts], dtype=np.int64)


def load_family(
    data_dir: Path,
    family: str,
    extractor: object | None = None,
    cache_dir: Path | None = DEFAULT_CACHE,
) -> QualityData:
    """One family's rows with embeddings and contexts (from the cache when it is current).
    Only models scored in every row are kept, and rows with an empty cell were already
    dropped by `routing.outcomes`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    files = family_files(data_dir, family)
    if not files:
        raise FileNotFoundError(f"no {family} files under {data_dir / family}")
    rows = load_outcomes(files)
    models = tuple(sorted(set.intersection(*(set(o.quality) for o in rows))))
    prompts = tuple(o.prompt for o in rows)
    quality = np.array([[o.quality[m] for m in models] for o in rows], dtype=np.float64)
    cost = np.array([[o.cost.get(m, np.nan) for m in models] for o in rows], dtype=np.float64)
    fx = extractor if extractor is not None else _default_extractor()
    layout = str(fx.layout)  # type: ignore[attr-defined]
    emb, ctx = _features(fx, prompts, layout, cache_dir)
    return QualityData(
        family,
        models,
        prompts,
        tuple(o.dataset for o in rows),
        prompt_groups(prompts),
        quality,
        cost,
        emb,
        ctx,
        layout,
    )


def _default_extractor() -> object:
    from routing.features import FeatureExtractor

    return FeatureExtractor.default()


def _features(
    fx: object, prompts: tuple[str, ...], layout: str, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    h = hashlib.sha256(layout.encode())
    emb_cfg = getattr(fx, "embedder", None)
    h.update(
        repr(
            (getattr(emb_cfg, "max_seq_length", None), getattr(emb_cfg, "head_fraction", None))
        ).encode()
    )
    for p in prompts:
        h.update(hashlib.sha256(p.encode()).digest())
    path = cache_dir / f"features-{h.hexdigest()[:20]}.npz" if cache_dir else None
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as z:
            return z["embeddings"], z["contexts"]
    log.info("embedding %d prompts (cached afterwards in %s)", len(prompts), cache_dir)
    feats, emb = fx.analyse_many(list(prompts))  # type: ignore[attr-defined]
    ctx = np.stack(
        [
            np.asarray(fx.vector(f), dtype=np.float64)  # type: ignore[attr-defined]
            for f in feats
        ]
    )
    emb = np.asarray(emb, dtype=np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, embeddings=emb, contexts=ctx)
        tmp.replace(path)
    return emb, ctx
