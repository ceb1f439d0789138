"""The bandit's prior on each member's quality for one request: a mean with its uncertainty,
and where it came from (named in the decision row).

Sources, first that applies:

    predictor:<kind>:<model>  the shipped quality predictor has outcome data for the member's
                              model (`prior:` in greengate.yaml, default `model:`)
    like:<member>             `like: <member>` in greengate.yaml: that member's prior, with
                              its uncertainty widened by LIKE_SIGMA_FACTOR
    declared                  `quality: {mmlu: 0.71, gsm8k: 0.55, ...}` in greengate.yaml:
                              declared benchmark scores in [0, 1], keyed by dataset or task
                              name; the request's task picks one, else their mean
    params:<n>B               `energy.active_params_b`: mean quality of the predictor's models
                              as a function of log(parameters), fitted on the shipped models
    pool-mean                 nothing known: the mean prior of the members that have one,
                              with a wide uncertainty

The bandit then learns the residual (observed quality minus this mean), starting from a ridge
that makes its prior spread equal `sigma` (`arm_prior`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bandits import ArmPrior
from routing.quality_data import predictor_inputs
from routing.quality_predictors import QualityPredictor, restore_predictor
from routing.task_classifier import dataset_name, task_of

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
NPZ = ARTIFACTS / "quality_predictor.npz"
META = ARTIFACTS / "quality_predictor.json"
LIKE_SIGMA_FACTOR = 1.5
DECLARED_SIGMA = 0.10
PARAMS_SIGMA = 0.15
POOL_MEAN_SIGMA = 0.20
DEFAULT_NOISE = 0.2  # variance of a single 0/1 outcome near p = 0.7


@dataclass(frozen=True)
class PriorEstimate:
    mean: float
    sigma: float  # uncertainty of the mean
    noise: float  # variance of single outcomes
    source: str


@dataclass(frozen=True)
class MemberPriorSpec:
    """What greengate.yaml says about a member that bears on its quality."""

    model: str  # the name in the predictor's data
    like: str | None = None
    declared: dict[str, float] = field(default_factory=dict)
    params_b: float | None = None
    # A fine-tuned adapter (with like: its base): the share of the base's per-token perplexity
    # on the team's held-out data the adapter removed, in [-1, 1]; None: not validated.
    gain: float | None = None


@dataclass
class PredictorBundle:
    """The shipped predictors, one per data family (model sets do not overlap)."""

    kind: str
    predictors: list[QualityPredictor]
    sigma: dict[str, float]
    noise: dict[str, float]
    mean_quality: dict[str, float]
    ceiling: dict[str, float]
    layout: str
    fingerprint: str
    size_curve: tuple[float, float] | None  # quality = a + b * ln(params_b)
    meta: dict[str, Any]

    @property
    def models(self) -> list[str]:
        return [m for p in self.predictors for m in p.models]

    def predict(self, embedding: np.ndarray, context: np.ndarray) -> dict[str, float]:
        x = predictor_inputs(embedding, context)
        out: dict[str, float] = {}
        for p in self.predictors:
            out.update(zip(p.models, p.predict(x)[0].tolist(), strict=True))
        return out


def load_bundle(npz: Path = NPZ, meta_path: Path = META) -> PredictorBundle | None:
    """The shipped predictors, or None when they are missing."""
    if not (npz.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    preds: list[QualityPredictor] = []
    sigma: dict[str, float] = {}
    noise: dict[str, float] = {}
    mean: dict[str, float] = {}
    ceiling: dict[str, float] = {}
    with np.load(npz, allow_pickle=False) as z:
        for fam, info in meta["families"].items():
            arrays = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{fam}/")}
            models = tuple(info["models"])
            preds.append(restore_predictor(meta["kind"], models, arrays, info["params"]))
            for i, m in enumerate(models):
                sigma[m], noise[m] = info["sigma"][i], info["noise"][i]
                mean[m], ceiling[m] = info["mean_quality"][i], info["ceiling"][i]
    curve = meta.get("size_curve")
    return PredictorBundle(
        meta["kind"],
        preds,
        sigma,
        noise,
        mean,
        ceiling,
        meta["input"]["layout"],
        meta["fingerprint"],
        tuple(curve) if curve else None,
        meta,
    )


class QualityPrior:
    """Per-request prior means for the pool's members (see the module docstring)."""

    def __init__(
        self,
        bundle: PredictorBundle | None,
        specs: dict[str, MemberPriorSpec],
        layout: str | None = None,
    ) -> None:
        # A predictor fitted on another context layout would read the vector wrongly.
        self.bundle = (
            bundle if bundle is None or layout is None or bundle.layout == layout else None
        )
        self.specs = dict(specs)

    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint if self.bundle else "none"

    def _static(self, name: str, task: str | None, seen: frozenset[str]) -> PriorEstimate | None:
        """Priors that do not need the embedding: declared, params, like (recursively)."""
        spec = self.specs.get(name)
        if spec is None:
            return None
        b = self.bundle
        if b is not None and spec.model in b.mean_quality:
            m = spec.model
            return PriorEstimate(
                b.mean_quality[m], b.sigma[m], b.noise[m], f"predictor:{b.kind}:{m}"
            )
        if spec.like and spec.like not in seen:
            inner = self._static(spec.like, task, seen | {name})
            if inner is not None:
                return PriorEstimate(
                    inner.mean, inner.sigma * LIKE_SIGMA_FACTOR, inner.noise, f"like:{spec.like}"
                )
        if spec.declared:
            return PriorEstimate(
                declared_score(spec.declared, task), DECLARED_SIGMA, DEFAULT_NOISE, "declared"
            )
        if spec.params_b and b is not None and b.size_curve is not None:
            a, slope = b.size_curve
            q = min(0.95, max(0.05, a + slope * math.log(spec.params_b)))
            return PriorEstimate(q, PARAMS_SIGMA, DEFAULT_NOISE, f"params:{spec.params_b:g}B")
        return None

    def estimate(
        self,
        names: list[str],
        embedding: np.ndarray | None,
        context: np.ndarray | None,
        task: str | None = None,
    ) -> dict[str, PriorEstimate]:
        b = self.bundle
        predicted: dict[str, float] = {}
        if b is not None and embedding is not None and context is not None:
            predicted = b.predict(embedding, context)
        out: dict[str, PriorEstimate] = {}
        for n in names:
            est = self._static(n, task, frozenset())
            if est is not None and b is not None:
                model = self._model_behind(n)
                if model in predicted:
                    src = est.source
                    est = PriorEstimate(predicted[model], est.sigma, est.noise, src)
                elif model in b.mean_quality:
                    est = PriorEstimate(
                        est.mean, est.sigma, est.noise, est.source + " (no embedding: its mean)"
                    )
            gain = self.specs[n].gain if n in self.specs else None
            if est is not None and gain is not None:
                est = finetuned(est, gain)
            if est is not None:
                out[n] = est
        known = [e.mean for e in out.values()]
        fill = float(np.mean(known)) if known else 0.5
        for n in names:
            if n not in out:
                out[n] = PriorEstimate(fill, POOL_MEAN_SIGMA, DEFAULT_NOISE, "pool-mean")
        return out

    def _model_behind(self, name: str) -> str | None:
        """The predictor model a member's prior comes from (through like: chains)."""
        seen: set[str] = set()
        while name not in seen:
            seen.add(name)
            spec = self.specs.get(name)
            if spec is None:
                return None
            if self.bundle is not None and spec.model in self.bundle.mean_quality:
                return spec.model
            if not spec.like:
                return None
            name = spec.like
        return None

    def ceiling(self, name: str) -> float:
        """The highest quality this member can be predicted to reach (policy checks)."""
        model = self._model_behind(name)
        if model is not None and self.bundle is not None:
            return self.bundle.ceiling[model]
        est = self._static(name, None, frozenset())
        if est is None:
            return 1.0  # unknown: a constraint cannot be shown impossible
        top = max(self.specs[name].declared.values()) if self.specs[name].declared else est.mean
        return min(1.0, max(top, est.mean) + 2 * est.sigma)


def finetuned(base: PriorEstimate, gain: float) -> PriorEstimate:
    """A fine-tuned adapter's prior from its base's (already widened by like:): a positive
    gain moves the mean that share of the way to 1, a negative one that share towards 0. The
    validation data is the team's own, so the shift says most about the team's traffic; the
    widened sigma leaves feedback room to correct it."""
    mean = base.mean + gain * ((1.0 - base.mean) if gain >= 0 else base.mean)
    return PriorEstimate(mean, base.sigma, base.noise, f"{base.source} finetune:{gain:+.3f}")


def declared_score(declared: dict[str, float], task: str | None) -> float:
    if task:
        for key, v in declared.items():
            if key == task or task_of(key) == task or dataset_name(key) == task:
                return float(v)
    return float(np.mean(list(declared.values())))


def arm_prior(
    sigma: float, noise: float, dim: int, mean_sq_norm: float, min_ridge: float = 1.0
) -> ArmPrior:
    """A residual arm starting at 0 whose predictive spread at a typical context equals sigma:
    with posterior noise * A^-1 and A = ridge * I, x^T A^-1 x * noise = sigma^2 needs
    ridge = noise * |x|^2 / sigma^2. `n` counts the prior as that many observations."""
    ridge = max(min_ridge, noise * mean_sq_norm / max(sigma, 1e-3) ** 2)
    n = int(round(ridge / max(mean_sq_norm, 1e-9)))
    return ArmPrior(A=ridge * np.eye(dim), b=np.zeros(dim), n=n)
