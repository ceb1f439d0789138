"""Grouped k-fold replay (bench/replay.py --kfold K): the router with its learned quality prior
against every single model, random, the oracle and each offline quality predictor, on folds
that never share a prompt (grouped by prompt text), or, with --by-dataset, one fold per
dataset (the predictors never saw the test task: the harder variant).

Per fold, everything is chosen on the training folds alone:
- each predictor kind's regularisation by inner grouped CV (train.quality_fit.tune_params);
- the router's prior: the kind with the lowest log loss on an inner grouped 20% of the
  training folds (or prior_kind), its per-model uncertainty calibrated on that 20%;
- the router's LinUCB width: the alpha in ALPHAS with the best mean reward when the router,
  with a prior fitted on the inner 80%, is replayed over the inner 20%;
- the price list: each model's expected cost and energy for a request from its context vector
  (PriceModel, fitted on the training folds), as the gateway prices a request by its tokens.
The test fold is replayed online in shuffled order through routing.bandit_router.BanditRouter
(prior mean + LinUCB residual, updated with the recorded quality minus the prior mean, as the
gateway's feedback does), once per setting:

    lambda=<l>          the team's lambda/mu objective (routing.reward), mu fixed
    mu=<m>              lambda 0, cost weight m: the quality-cost trade-off swept
    min_quality=<q>     cheapest member predicted to reach q (routing.constraints)
    max_cost_per_1k=<x> best predicted quality with expected cost <= $x per 1k requests

Two cold routers (same bandit, no prior) run the lambda and mu settings for the early-regret
check: `cold-bandit` with the gateway's alpha (what a deployment without outcome data runs) and
`cold-bandit-tuned` with an alpha chosen on the training folds as the router's is. Offline
predictors route by their prediction alone under the same settings and prices (no learning).

Metrics are over all rows of all test folds (each row is tested once): quality, cost per 1k
queries, energy per query (ESTIMATED, as in bench/replay.py), regret against the per-query
oracle of the same objective; early regret is over the first EARLY requests of each fold.
The quality-cost front of a policy is the best quality it reaches at or below each cost (at
least the cheapest single model's, which any policy can fall back to); its area over
[cheapest single, dearest single] cost is divided by the oracle's (linear cost axis, like
RouterBench's AIQ, and log cost). Fronts that may mix two settings at random (the upper hull,
as RouterBench draws them) are reported beside the step fronts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits import make_bandit
from routing.bandit_router import BanditRouter, residual_reward
from routing.constraints import Constraint
from routing.quality_data import QualityData
from routing.quality_predictors import KINDS, QualityPredictor, calibration, fit_predictor
from routing.quality_prior import MemberPriorSpec, PredictorBundle, QualityPrior, arm_prior
from routing.reward import RewardBounds
from routing.router import Candidate, RouteRequest
from train.quality_fit import grouped_split, log_loss, scores, tune_params

EARLY = 200
DEFAULT_LAMBDAS = (0.0, 0.2, 0.4, 0.6, 0.8)
DEFAULT_QUALITIES = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
DEFAULT_BUDGETS = (0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 2.0, 4.0)
# lambda 0, the cost weight mu swept: the quality-cost trade-off itself.
DEFAULT_MUS = (
    0.0,
    0.02,
    0.05,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    6.0,
    8.0,
    12.0,
    20.0,
)
# LinUCB widths the router may use; each fold picks one on its training folds (inner replay).
ALPHAS = (0.0, 0.1, 0.25, 0.5)
# The gateway's LinUCB width (gateway.settings bandit_alpha): what a deployment without outcome
# data starts with, having nothing to tune it on.
GATEWAY_ALPHA = 0.5
ORACLE_NUS = (0.0, *np.geomspace(0.5, 5000, 60).tolist())


@dataclass(frozen=True)
class Setting:
    kind: str  # "lambda" | "mu" | "min_quality" | "max_cost_per_1k"
    value: float

    @property
    def label(self) -> str:
        return f"{self.kind}={self.value:g}"

    def constraint(self) -> Constraint | None:
        if self.kind == "min_quality":
            return Constraint(min_quality=self.value)
        if self.kind == "max_cost_per_1k":
            return Constraint(max_cost_per_1k_usd=self.value)
        return None

    def lam(self) -> float:
        return self.value if self.kind == "lambda" else 0.0

    def cost_weight(self, default: float) -> float:
        return self.value if self.kind == "mu" else default


@dataclass(frozen=True)
class KfoldConfig:
    k: int = 5
    by_dataset: bool = False
    seed: int = 0
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    qualities: tuple[float, ...] = DEFAULT_QUALITIES
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    mus: tuple[float, ...] = DEFAULT_MUS
    mu: float = 0.1
    prior_kind: str = "auto"  # "auto": per fold, the kind with the lowest inner log loss
    kinds: tuple[str, ...] = tuple(KINDS)
    alphas: tuple[float, ...] = ALPHAS  # one value: fixed; several: chosen per fold (inner)
    early: int = EARLY

    def settings(self) -> list[Setting]:
        return (
            [Setting("lambda", v) for v in self.lambdas]
            + [Setting("mu", v) for v in self.mus]
            + [Setting("min_quality", v) for v in self.qualities]
            + [Setting("max_cost_per_1k", v) for v in self.budgets]
        )


def folds(data: QualityData, config: KfoldConfig) -> np.ndarray:
    """Fold index per row: whole prompt groups per fold, or one fold per dataset."""
    if config.by_dataset:
        names = sorted(set(data.datasets))
        return np.array([names.index(d) for d in data.datasets])
    ug = np.unique(data.groups)
    rng = np.random.default_rng(config.seed)
    of_group = dict(zip(rng.permutation(ug).tolist(), np.arange(len(ug)) % config.k, strict=True))
    return np.array([of_group[g] for g in data.groups.tolist()])


@dataclass(frozen=True)
class PriceModel:
    """Each model's expected cost and energy for one request, from its context vector (prompt
    length, task, expected output length): ridge regression of log cost and log energy per
    model on the training folds. The gateway prices a request from its tokens in the same
    spirit (tokens x price, tokens x J/token); one mean per model would make a long coding
    prompt look as cheap as a one-word answer."""

    W: np.ndarray  # (d + 1, 2k): [log cost | log energy] per model
    k: int

    @classmethod
    def fit(cls, ctx: np.ndarray, cost: np.ndarray, energy: np.ndarray, ridge: float = 1.0):
        Z = np.hstack([np.ones((len(ctx), 1)), ctx])
        T = np.log(np.hstack([np.maximum(cost, 1e-12), np.maximum(energy, 1e-9)]))
        A = Z.T @ Z + ridge * np.eye(Z.shape[1])
        A[0, 0] -= ridge  # the intercept is not shrunk
        return cls(np.linalg.solve(A, Z.T @ T), cost.shape[1])

    def predict(self, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Z = np.hstack([np.ones((len(ctx), 1)), np.atleast_2d(ctx)])
        out = np.exp(Z @ self.W)
        return out[:, : self.k], out[:, self.k :]


@dataclass
class FoldPrior:
    """What a fold's router starts from, all chosen on its training folds."""

    bundle: PredictorBundle
    alpha: float
    cold_alpha: float  # the cold start's own best width, chosen the same way without a prior
    inner_log_loss: dict[str, float]
    alpha_rewards: dict[str, float]
    cold_alpha_rewards: dict[str, float]


class KfoldReplay:
    def __init__(
        self, data: QualityData, energy: np.ndarray, config: KfoldConfig, bounds: RewardBounds
    ) -> None:
        if energy.shape != data.quality.shape:
            raise ValueError("energy must match the quality table")
        if np.isnan(data.cost).any():
            raise ValueError("the k-fold replay needs a recorded cost per call")
        self.data = data
        self.energy = energy
        self.config = config
        self.bounds = bounds
        self.fold = folds(data, config)
        self.models = data.models

    # -- per fold ------------------------------------------------------------------------------

    def _bundle(
        self,
        kind: str,
        final: QualityPredictor,
        cal_pred: np.ndarray,
        cal_y: np.ndarray,
        Y: np.ndarray,
        X: np.ndarray,
    ) -> PredictorBundle:
        cal = calibration(cal_pred, cal_y)
        m = self.models
        return PredictorBundle(
            kind,
            [final],
            dict(zip(m, cal.sigma.tolist(), strict=True)),
            dict(zip(m, cal.noise.tolist(), strict=True)),
            dict(zip(m, Y.mean(axis=0).tolist(), strict=True)),
            dict(zip(m, np.percentile(final.predict(X), 99, axis=0).tolist(), strict=True)),
            self.data.layout,
            "fold",
            None,
            {},
        )

    def _prior(
        self,
        train: np.ndarray,
        params: dict[str, dict[str, Any]],
        finals: dict[str, QualityPredictor],
        prices: PriceModel,
    ) -> FoldPrior:
        """The router's prior and exploration width from the training folds alone: each kind is
        fitted on an inner grouped 80% and scored on the other 20%; the lowest log loss wins
        (or prior_kind), its per-model uncertainty calibrated on that 20%. Then the router is
        replayed over the inner 20% with that prior for every alpha in config.alphas, and the
        one with the highest mean reward over the lambda and mu settings is kept; the cold
        start (no prior) gets its own best width the same way, so that it is not handicapped."""
        d, cfg = self.data, self.config
        X, Y = d.inputs[train], d.quality[train]
        inner = grouped_split(d.groups[train], 0.2, seed=cfg.seed + 1)
        kinds = list(cfg.kinds) if cfg.prior_kind == "auto" else [cfg.prior_kind]
        probes: dict[str, QualityPredictor] = {}
        losses: dict[str, float] = {}
        for kind in kinds:
            probes[kind] = fit_predictor(kind, X[~inner], Y[~inner], self.models, **params[kind])
            losses[kind] = log_loss(probes[kind].predict(X[inner]), Y[inner])
        kind = min(losses, key=lambda kd: losses[kd])
        cal_pred = probes[kind].predict(X[inner])
        final = finals.get(kind) or fit_predictor(kind, X, Y, self.models, **params[kind])
        bundle = self._bundle(kind, final, cal_pred, Y[inner], Y, X)
        probe_bundle = self._bundle(kind, probes[kind], cal_pred, Y[inner], Y[~inner], X[~inner])
        rows = np.random.default_rng(cfg.seed + 7).permutation(train[inner])
        tuning = [s for s in cfg.settings() if s.kind in ("lambda", "mu")]

        def pick(b: PredictorBundle | None) -> tuple[float, dict[str, float]]:
            if len(cfg.alphas) == 1:
                return float(cfg.alphas[0]), {}
            got: dict[str, float] = {}
            for a in cfg.alphas:
                r = [
                    self._reward_of(rows, self._online(rows, s, prices, b, a), s).mean()
                    for s in tuning
                ]
                got[f"{a:g}"] = round(float(np.mean(r)), 6)
            return float(max(cfg.alphas, key=lambda a: got[f"{a:g}"])), got

        alpha, rewards = pick(probe_bundle)
        cold_alpha, cold_rewards = pick(None)
        return FoldPrior(
            bundle,
            alpha,
            cold_alpha,
            {k: round(v, 6) for k, v in losses.items()},
            rewards,
            cold_rewards,
        )

    def _candidates(self, cost: np.ndarray, energy: np.ndarray) -> list[Candidate]:
        return [
            Candidate(
                name=m,
                input_per_1m=0.0,
                output_per_1m=0.0,
                healthy=True,
                expected_cost_usd=float(cost[j]),
                expected_energy_j=float(energy[j]),
            )
            for j, m in enumerate(self.models)
        ]

    def _online(
        self,
        order: np.ndarray,
        setting: Setting,
        prices: PriceModel,
        bundle: PredictorBundle | None,
        alpha: float,
    ) -> np.ndarray:
        d, cfg = self.data, self.config
        dim = d.contexts.shape[1]
        bandit = make_bandit("linucb", dim, alpha=alpha, seed=cfg.seed)
        prior = None
        if bundle is not None:
            prior = QualityPrior(bundle, {m: MemberPriorSpec(model=m) for m in self.models})
            sq = float(np.mean(np.sum(d.contexts**2, axis=1)))
            for m in self.models:
                bandit.add_arm(m, arm_prior(bundle.sigma[m], bundle.noise[m], dim, sq))
        router = BanditRouter(bandit, self.bounds, prior)
        col = {m: j for j, m in enumerate(self.models)}
        cost, energy = prices.predict(d.contexts[order])
        chosen = np.empty(len(order), dtype=np.intp)
        for step, i in enumerate(order.tolist()):
            req = RouteRequest(
                endpoint="chat/completions",
                body={},
                team=None,
                context=d.contexts[i],
                embedding=d.embeddings[i],
                lambda_=setting.lam(),
                mu=setting.cost_weight(cfg.mu),
                constraint=setting.constraint(),
            )
            top = router.rank(req, self._candidates(cost[step], energy[step]))[0]
            j = col[top.name]
            chosen[step] = j
            q = float(d.quality[i, j])
            bandit.update(d.contexts[i], top.name, residual_reward(q, top.detail.get("prior_mean")))
        return chosen

    def _offline(
        self, P: np.ndarray, setting: Setting, cost: np.ndarray, energy: np.ndarray
    ) -> np.ndarray:
        """Columns an offline predictor picks under a setting (no learning, no exploration),
        from the same per-request price estimates (n, k) the router sees."""
        if setting.kind in ("lambda", "mu"):
            return np.argmax(self._value(P, energy, cost, setting), axis=1)
        best = np.argmax(P, axis=1)
        if setting.kind == "min_quality":
            order = np.argsort(cost, axis=1, kind="stable")
            ok = np.take_along_axis(P, order, axis=1) >= setting.value
            first = order[np.arange(len(P)), np.argmax(ok, axis=1)]
            return np.where(ok.any(axis=1), first, best)
        within = cost * 1000.0 <= setting.value
        masked = np.where(within, P, -np.inf)
        return np.where(within.any(axis=1), np.argmax(masked, axis=1), best)

    def _oracle(self, rows: np.ndarray, setting: Setting) -> np.ndarray:
        Q, C, E = self.data.quality[rows], self.data.cost[rows], self.energy[rows]
        if setting.kind in ("lambda", "mu"):
            return np.argmax(self._value(Q, E, C, setting), axis=1)
        best = np.argmax(Q - 1e-9 * C, axis=1)
        if setting.kind == "min_quality":
            ok = setting.value <= Q
            cheapest_ok = np.argmin(np.where(ok, C, np.inf), axis=1)
            return np.where(ok.any(axis=1), cheapest_ok, best)
        ok = setting.value >= C * 1000.0
        masked = np.where(ok, Q - 1e-9 * C, -np.inf)
        return np.where(ok.any(axis=1), np.argmax(masked, axis=1), best)

    def _value(self, Q: np.ndarray, E: np.ndarray, C: np.ndarray, setting: Setting) -> np.ndarray:
        """routing.reward.reward, vectorised, for the setting's lambda and mu."""
        lam, mu, b = setting.lam(), setting.cost_weight(self.config.mu), self.bounds
        return (
            (1.0 - lam) * Q
            - lam * np.clip(E / b.energy_max_j, 0, 1)
            - mu * np.clip(C / b.cost_max_usd, 0, 1)
        )

    def _reward_of(self, rows: np.ndarray, cols: np.ndarray, setting: Setting) -> np.ndarray:
        r = self._value(
            self.data.quality[rows], self.energy[rows], self.data.cost[rows], _objective(setting)
        )
        return r[np.arange(len(rows)), cols]

    # -- everything ----------------------------------------------------------------------------

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        d, cfg = self.data, self.config
        X, Y = d.inputs, d.quality
        settings = cfg.settings()
        n, k = Y.shape
        picks: dict[tuple[str, str], np.ndarray] = {}
        early: dict[tuple[str, str], list[float]] = {}
        rows_in_order = np.empty(0, dtype=np.intp)
        fold_ids = sorted(set(self.fold.tolist()))
        predictor_metrics: dict[str, list[dict[str, float]]] = {kd: [] for kd in cfg.kinds}
        fold_info: list[dict[str, Any]] = []
        for f in fold_ids:
            train = np.flatnonzero(self.fold != f)
            test = np.flatnonzero(self.fold == f)
            order = np.random.default_rng(cfg.seed + 100 + f).permutation(test)
            rows_in_order = np.concatenate([rows_in_order, order])
            prices = PriceModel.fit(d.contexts[train], d.cost[train], self.energy[train])
            cost, energy = prices.predict(d.contexts[order])
            preds: dict[str, np.ndarray] = {}
            params: dict[str, dict[str, Any]] = {}
            finals: dict[str, QualityPredictor] = {}
            kinds = sorted(set(cfg.kinds) | ({cfg.prior_kind} - {"auto"}))
            for kind in kinds:
                params[kind], _ = tune_params(
                    kind, X[train], Y[train], d.groups[train], self.models, seed=cfg.seed + f
                )
                finals[kind] = fit_predictor(kind, X[train], Y[train], self.models, **params[kind])
                if kind in cfg.kinds:
                    preds[kind] = finals[kind].predict(X[order])
                    predictor_metrics[kind].append(scores(preds[kind], Y[order]))
            fp = self._prior(train, params, finals, prices)
            fold_info.append(
                {
                    "fold": f,
                    "prior_kind": fp.bundle.kind,
                    "alpha": fp.alpha,
                    "params": params,
                    "inner_log_loss": fp.inner_log_loss,
                    "inner_reward_by_alpha": fp.alpha_rewards,
                    "cold_alpha": fp.cold_alpha,
                    "cold_inner_reward_by_alpha": fp.cold_alpha_rewards,
                }
            )

            def add(
                name: str, setting: Setting, cols: np.ndarray, order: np.ndarray = order
            ) -> None:
                key = (name, setting.label)
                picks[key] = np.concatenate([picks.get(key, np.empty(0, dtype=np.intp)), cols])
                early.setdefault(key, []).append(
                    self._regret(order[: cfg.early], cols[: cfg.early], setting)
                )

            for s in settings:
                add("router", s, self._online(order, s, prices, fp.bundle, fp.alpha))
                if s.kind in ("lambda", "mu"):
                    add("cold-bandit", s, self._online(order, s, prices, None, GATEWAY_ALPHA))
                    add("cold-bandit-tuned", s, self._online(order, s, prices, None, fp.cold_alpha))
                for kind in cfg.kinds:
                    add(f"predictor:{kind}", s, self._offline(preds[kind], s, cost, energy))
                add("oracle", s, self._oracle(order, s))
            for j, m in enumerate(self.models):
                add(f"single:{m}", Setting("lambda", 0.0), np.full(len(order), j))
            if progress:
                progress(
                    f"fold {f + 1}/{len(fold_ids)}: {len(test)} test rows, "
                    f"{len(train)} training rows; prior {fp.bundle.kind}, alpha {fp.alpha:g} "
                    f"(cold start {fp.cold_alpha:g})"
                )
        rows = []
        for (name, label), cols in picks.items():
            setting = _parse(label)
            rows.append(
                {
                    "policy": name,
                    "setting": label,
                    **self._metrics(rows_in_order, cols, setting),
                    "early_regret": float(np.mean(early[(name, label)])),
                }
            )
        # Random: the expectation of a uniform choice.
        rq, rc, re_ = Y.mean(), 1000 * d.cost.mean(), self.energy.mean()
        rows.append(
            {
                "policy": "random",
                "setting": "lambda=0",
                "quality": float(rq),
                "cost_per_1k": float(rc),
                "energy_j_per_query": float(re_),
            }
        )
        fronts = self._fronts(rows, rows_in_order)
        pm = {
            kd: {key: float(np.mean([m[key] for m in v if m[key] is not None])) for key in v[0]}
            for kd, v in predictor_metrics.items()
        }
        return {
            "rows": rows,
            "fronts": fronts,
            "predictor_metrics": pm,
            "targets": self._targets(rows, fronts),
            "folds": len(fold_ids),
            "fold_choices": fold_info,
            "n": n,
            "k": k,
        }

    def _regret(self, rows: np.ndarray, cols: np.ndarray, setting: Setting) -> float:
        """Mean regret against the per-query best of the setting's lambda/mu objective
        (settings with a constraint: lambda 0 and the configured mu)."""
        Q, C, E = self.data.quality[rows], self.data.cost[rows], self.energy[rows]
        r = self._value(Q, E, C, _objective(setting))
        return float((r.max(axis=1) - r[np.arange(len(rows)), cols]).mean())

    def _metrics(self, rows: np.ndarray, cols: np.ndarray, setting: Setting) -> dict[str, float]:
        ix = np.arange(len(rows))
        q = self.data.quality[rows, cols]
        c = self.data.cost[rows, cols]
        e = self.energy[rows, cols]
        return {
            "quality": float(q.mean()),
            "cost_per_1k": float(1000 * c.mean()),
            "energy_j_per_query": float(e.mean()),
            "regret_oracle": self._regret(rows, cols, setting) if len(ix) else 0.0,
        }

    def _fronts(self, rows: list[dict[str, Any]], order: np.ndarray) -> dict[str, Any]:
        singles = {r["policy"]: r for r in rows if r["policy"].startswith("single:")}
        lo = min(s["cost_per_1k"] for s in singles.values())
        hi = max(s["cost_per_1k"] for s in singles.values())
        floor = min(singles.values(), key=lambda s: s["cost_per_1k"])["quality"]
        Q, C = self.data.quality[order], self.data.cost[order]
        oracle_pts = []
        for nu in ORACLE_NUS:
            cols = np.argmax(Q - nu * C * 1000.0, axis=1)
            ix = np.arange(len(order))
            oracle_pts.append((float(1000 * C[ix, cols].mean()), float(Q[ix, cols].mean())))
        grid = np.linspace(lo, hi, 400)
        lgrid = np.geomspace(lo, hi, 400)

        def front(points: Sequence[tuple[float, float]], at: np.ndarray) -> np.ndarray:
            return np.array([max([q for c, q in points if c <= x + 1e-12] + [floor]) for x in at])

        def hull(points: Sequence[tuple[float, float]], at: np.ndarray) -> np.ndarray:
            return mixture_front([(lo, floor), *points], at)

        o_lin, o_log = front(oracle_pts, grid), front(oracle_pts, lgrid)
        out: dict[str, Any] = {
            "oracle": {"points": oracle_pts},
            "grid": [lo, hi],
            "floor_quality": floor,
        }
        policies = sorted(
            {
                r["policy"]
                for r in rows
                if not r["policy"].startswith("single:") and r["policy"] not in ("oracle", "random")
            }
        )
        for p in policies:
            pts = [(r["cost_per_1k"], r["quality"]) for r in rows if r["policy"] == p]
            out[p] = {
                "points": pts,
                "auc_ratio": float(
                    np.trapezoid(front(pts, grid), grid) / np.trapezoid(o_lin, grid)
                ),
                "auc_ratio_log": float(
                    np.trapezoid(front(pts, lgrid), np.log(lgrid))
                    / np.trapezoid(o_log, np.log(lgrid))
                ),
                "front_at_grid": front(pts, lgrid).tolist(),
                "hull_at_grid": hull(pts, lgrid).tolist(),
                "hull_auc_ratio": float(
                    np.trapezoid(hull(pts, grid), grid) / np.trapezoid(hull(oracle_pts, grid), grid)
                ),
            }
        out["grid_log"] = lgrid.tolist()
        return out

    def _targets(self, rows: list[dict[str, Any]], fronts: dict[str, Any]) -> dict[str, Any]:
        singles = {
            r["policy"].removeprefix("single:"): r
            for r in rows
            if r["policy"].startswith("single:")
        }
        best_name = max(singles, key=lambda m: singles[m]["quality"])
        best = singles[best_name]
        cap = 0.4 * best["cost_per_1k"]
        router = [r for r in rows if r["policy"] == "router"]
        within = [r for r in router if r["cost_per_1k"] <= cap]
        top = max(within, key=lambda r: r["quality"]) if within else None
        t1 = {
            "target": f"quality >= {best['quality']:.4f} - 0.01 at <= ${cap:.3f}/1k "
            f"(40% of always-{best_name})",
            "router_best_within_cap": top,
            "met": bool(top and top["quality"] >= best["quality"] - 0.01),
        }
        rpts = fronts["router"]["points"]

        def at(points: list[tuple[float, float]], c: float) -> float:
            return max([q for cc, q in points if cc <= c + 1e-12] + [fronts["floor_quality"]])

        undominated = sorted(
            m for m, s in singles.items() if at(rpts, s["cost_per_1k"]) < s["quality"]
        )
        preds = [p for p in fronts if p.startswith("predictor:")]
        best_pred = max(preds, key=lambda p: fronts[p]["auc_ratio"])
        grid = fronts["grid_log"]
        r_front = np.array(fronts["router"]["front_at_grid"])
        p_front = np.array(fronts[best_pred]["front_at_grid"])
        gap = r_front - p_front
        floor_pt = (float(fronts["grid"][0]), float(fronts["floor_quality"]))
        r_mix_at = {
            m: float(mixture_front([floor_pt, *rpts], np.array([s["cost_per_1k"]]))[0])
            for m, s in singles.items()
        }
        mix_gap = np.array(fronts["router"]["hull_at_grid"]) - np.array(
            fronts[best_pred]["hull_at_grid"]
        )
        undominated_mix = sorted(m for m, s in singles.items() if r_mix_at[m] < s["quality"])
        t2 = {
            "target": "router front >= every single model (at its cost) and >= the best "
            "offline predictor's front at every budget",
            "singles_not_dominated": undominated,
            "best_predictor": best_pred,
            "budgets_router_below_predictor": int((gap < -1e-9).sum()),
            "budgets": len(grid),
            "worst_gap": float(gap.min()),
            "met": not undominated and bool((gap >= -1e-9).all()),
            # The same with fronts that may mix two settings (upper hull, as RouterBench draws
            # them), for the router and the predictor alike: reported, not the target above.
            "with_mixtures": {
                "singles_not_dominated": undominated_mix,
                "budgets_router_below_predictor": int((mix_gap < -1e-9).sum()),
                "worst_gap": float(mix_gap.min()),
                "met": not undominated_mix and bool((mix_gap >= -1e-9).all()),
            },
        }
        router_rows = {r["setting"]: r for r in rows if r["policy"] == "router"}

        def ratios(cold_name: str, prefix: str) -> dict[str, float]:
            cold = {r["setting"]: r for r in rows if r["policy"] == cold_name}
            return {
                s: r["early_regret"] / cold[s]["early_regret"]
                for s, r in router_rows.items()
                if s.startswith(prefix) and s in cold and cold[s]["early_regret"] > 0
            }

        lam = ratios("cold-bandit", "lambda=")
        lam_tuned = ratios("cold-bandit-tuned", "lambda=")
        t3 = {
            "target": f"early regret (first {self.config.early} requests of each fold) <= "
            f"half of a cold start's (the gateway's LinUCB, alpha {GATEWAY_ALPHA:g}, no prior)",
            "ratio_by_setting": lam,
            "ratio_by_mu_setting (lambda 0)": ratios("cold-bandit", "mu="),
            "against a cold start whose alpha was tuned on the training folds": {
                "ratio_by_setting": lam_tuned,
                "ratio_by_mu_setting (lambda 0)": ratios("cold-bandit-tuned", "mu="),
                "met": bool(lam_tuned) and all(v <= 0.5 for v in lam_tuned.values()),
            },
            "met": bool(lam) and all(v <= 0.5 for v in lam.values()),
        }
        return {"quality_at_40pct_cost": t1, "front_dominates": t2, "early_regret": t3}


def mixture_front(points: Sequence[tuple[float, float]], at: np.ndarray) -> np.ndarray:
    """Best quality at or below each cost when a policy may also mix two of its settings at
    random (a fraction of requests under each): the non-decreasing upper hull of its points,
    as RouterBench draws its routers' fronts. Below the cheapest point: -inf."""
    pts = np.array(sorted(points), dtype=np.float64)
    c, q = pts[:, 0], pts[:, 1]
    out = np.full(len(at), -np.inf)
    for i, x in enumerate(np.asarray(at, dtype=np.float64)):
        below = c <= x + 1e-12
        if not below.any():
            continue
        best = q[below].max()
        above = ~below
        if above.any():
            ci, qi = c[below][:, None], q[below][:, None]
            cj, qj = c[above][None, :], q[above][None, :]
            mix = qi + (qj - qi) * (x - ci) / (cj - ci)
            best = max(best, float(mix.max()))
        out[i] = best
    return out


def _objective(setting: Setting) -> Setting:
    """The lambda/mu objective a setting is scored on: its own, or lambda 0 for constraints."""
    return setting if setting.kind in ("lambda", "mu") else Setting("lambda", 0.0)


def _parse(label: str) -> Setting:
    kind, value = label.split("=")
    return Setting(kind, float(value))


def format_report(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        f"{'policy':<40} {'setting':<22} {'quality':>8} {'$/1k q':>8} {'J/q est':>8} "
        f"{'regret*':>8} {'early':>8}"
    ]
    lines.append("-" * len(lines[0]))
    order = [
        "router",
        "cold-bandit",
        "cold-bandit-tuned",
        *sorted({r["policy"] for r in rows if r["policy"].startswith("predictor:")}),
        "oracle",
    ]
    for p in order:
        for r in (r for r in rows if r["policy"] == p):
            lines.append(
                f"{p:<40.40} {r['setting']:<22} {r['quality']:>8.4f} "
                f"{r['cost_per_1k']:>8.3f} {r['energy_j_per_query']:>8.1f} "
                f"{r['regret_oracle']:>8.4f} {r['early_regret']:>8.4f}"
            )
        lines.append("")
    for r in sorted(
        (r for r in rows if r["policy"].startswith("single:")), key=lambda r: r["cost_per_1k"]
    ):
        lines.append(
            f"{r['policy'].split('/')[-1]:<40.40} {'(always)':<22} "
            f"{r['quality']:>8.4f} {r['cost_per_1k']:>8.3f} "
            f"{r['energy_j_per_query']:>8.1f} {r['regret_oracle']:>8.4f}"
        )
    rnd = next(r for r in rows if r["policy"] == "random")
    lines.append(
        f"{'random':<40} {'(expected)':<22} {rnd['quality']:>8.4f} "
        f"{rnd['cost_per_1k']:>8.3f} {rnd['energy_j_per_query']:>8.1f}"
    )
    lines.append("")
    lines.append(
        "Offline predictors, out-of-fold: "
        + "; ".join(
            f"{k} AUC {v['auc_mean']:.4f} log loss {v['log_loss']:.4f}"
            for k, v in result["predictor_metrics"].items()
        )
    )
    f = result["fronts"]
    lines.append(
        "Area under the quality-cost front / oracle's (linear cost | log cost | linear, fronts "
        "that mix two settings):"
    )
    for p in sorted(k for k in f if isinstance(f[k], dict) and "auc_ratio" in f[k]):
        lines.append(
            f"  {p:<28} {f[p]['auc_ratio']:.4f} | {f[p]['auc_ratio_log']:.4f} | "
            f"{f[p]['hull_auc_ratio']:.4f}"
        )
    lines.append("Targets:")
    for name, t in result["targets"].items():
        lines.append(f"  [{'MET' if t['met'] else 'not met'}] {name}: {t['target']}")
        for key, v in t.items():
            if key not in ("target", "met"):
                lines.append(f"      {key}: {_short(v)}")
    return "\n".join(lines)


def _short(v: Any) -> str:
    if isinstance(v, dict):
        if "policy" in v:  # a result row: only what names it
            return ", ".join(f"{k}={_short(v[k])}" for k in ("setting", "quality", "cost_per_1k"))
        return ", ".join(
            f"{k}=({_short(x)})" if isinstance(x, dict) else f"{k}={_short(x)}"
            for k, x in v.items()
        )
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def plot(result: dict[str, Any], path: Any, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows, f = result["rows"], result["fronts"]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    styles = {
        "router": ("tab:green", "o", "-"),
        "cold-bandit": ("tab:gray", "s", "--"),
        "cold-bandit-tuned": ("tab:olive", "s", ":"),
        "oracle": ("black", "*", ":"),
    }
    colors = iter(["tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink"])
    for ax, key, label in (
        (axes[0], "cost_per_1k", "cost per 1,000 queries ($, log)"),
        (axes[1], "energy_j_per_query", "energy per query (J, estimated, log)"),
    ):
        for p in [
            "router",
            "cold-bandit",
            *sorted({r["policy"] for r in rows if r["policy"].startswith("predictor:")}),
        ]:
            col, mk, ls = styles.get(p) or (next(colors, "tab:olive"), ".", "-.")
            pts = sorted((r[key], r["quality"]) for r in rows if r["policy"] == p)
            # Draw the front (best quality so far by cost), points as markers.
            xs, ys, best = [], [], -1.0
            for x, y in pts:
                if y > best:
                    xs.append(x)
                    ys.append(y)
                    best = y
            ax.plot(xs, ys, color=col, marker=mk, linestyle=ls, label=p, alpha=0.85)
        if key == "cost_per_1k":
            o = sorted(f["oracle"]["points"])
            ax.plot(
                [x for x, _ in o], [y for _, y in o], color="black", linestyle=":", label="oracle"
            )
        for r in rows:
            if r["policy"].startswith("single:"):
                ax.scatter([r[key]], [r["quality"]], color="red", marker="x", zorder=3)
                ax.annotate(
                    r["policy"].rsplit("/", 1)[-1].removeprefix("single:"),
                    (r[key], r["quality"]),
                    fontsize=7,
                    xytext=(3, -8),
                    textcoords="offset points",
                )
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("mean quality")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0.0, 0.08, 1.0, 1.0))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
