"""Offline replay of real per-query outcomes through greengate's own routing code.

What it does
    Each evaluated query is routed the way the gateway routes model "auto": the query's
    context vector comes from `routing.features.FeatureExtractor` (MiniLM embedding, task and
    cluster features: whatever the gateway uses), `routing.bandit_router.BanditRouter` ranks
    the candidates (a `bandits` bandit's quality estimate plus exploration bonus, traded
    against each candidate's expected energy and cost by `routing.reward.reward` with the
    team's lambda and mu), the top one is "called", and the replay pays it what that model
    really scored on that query in the data file. The bandit is then updated with that
    QUALITY, as the gateway's feedback endpoint does; lambda and mu act only through the
    router's score. Nothing of the routing logic is copied here: it is all imported.

Data
    `--data` files in RouterBench CSV format (default: the three RouterBench files under
    ../shared/data/routerbench/, 2,205 usable rows) or RouterDC JSON lists, read with
    `routing.outcomes.load_outcomes`. The arms are the models present in every row.

    Cost per query: RouterBench's recorded `<model>|total_cost`. RouterDC files record none,
    so a price profile is attached: OPEN_MODEL_PRICE_PER_1M dollars per 1M tokens (a typical
    hosted price of a 7-8B open model) times prompt tokens + FALLBACK_OUTPUT_TOKENS.

    Energy per query (ESTIMATED, never measured): `telemetry.estimator.shipped_fit()`'s joules
    per output token for the model's active/total parameters (`routing.outcomes`
    MODEL_ACTIVE_PARAMS_B / MODEL_TOTAL_PARAMS_B; the closed models' sizes are public
    estimates) times the output tokens of that model's recorded answer (counted with
    `routing.tokens.count_text`; FALLBACK_OUTPUT_TOKENS when a file has no answer text).
    Prompt processing energy is not included.

Price list the router sees
    The gateway knows each member's price and J/token before the call. The replay gives each
    candidate, as expected_cost_usd / expected_energy_j, that model's MEAN cost and MEAN
    energy per query over the evaluated rows (a per-model price list known in advance). The
    realised cost and energy of the chosen model on that query are what is accounted.

Protocol
    For each seed: the rows are shuffled. Warm-start priors (`routing.priors.fit_priors`,
    the gateway's fit-priors code) are fitted on rows that are never evaluated: the files of
    `--prior-data`, or by default a random half of the data (`--prior-fraction`); the other
    half is replayed online in shuffled order, by cold bandits (no prior) and warm ones
    (prior per arm) alike, so both see the same queries. Each (algorithm, mode, lambda, mu)
    run starts a fresh bandit.

Metrics (per policy, mode, lambda, mu; averaged over seeds)
    quality            mean recorded quality of the chosen model
    cost_per_1k        dollars per 1,000 queries
    energy_j_per_query joules per query (estimated)
    regret_oracle      mean over queries of max_m r(q, m) - r(q, chosen)
    regret_best_fixed  mean over queries of r(q, best fixed model of q's task) - r(q, chosen);
                       the best fixed model of a task has the best mean r on its evaluated rows
    with r = reward(quality, energy, cost, lambda, mu, bounds) and bounds RewardBounds from the
    data (95th percentile of per-query energy and cost over all rows and models).
    Baselines (mode "baseline"): "oracle" (per-query best r), "random" (uniform choice; its
    expected value is reported) and "single:<model>" for every model.

Output
    a table on stdout; `--out` a JSON list of rows; `<out stem>.meta.json` the run metadata
    (bounds, price list, row counts, parameters, target checks, timings); `--png` two panels,
    quality against cost per 1k queries and against estimated energy per query.

How to run
    .venv/bin/python bench/replay.py --out bench/results/replay.json
    .venv/bin/python bench/replay.py --quick          # one seed, two lambdas, 400 rows
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from bandits import ArmPrior, make_bandit
from routing.bandit_router import BanditRouter
from routing.outcomes import MODEL_ACTIVE_PARAMS_B, MODEL_TOTAL_PARAMS_B, Outcome, load_outcomes
from routing.priors import fit_priors
from routing.reward import RewardBounds, reward
from routing.router import Candidate, RouteRequest
from routing.tokens import count_text
from telemetry.estimator import shipped_fit

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO.parent / "shared" / "data"
DEFAULT_DATA = tuple(
    DATA_DIR / "routerbench" / f"{n}_train.csv" for n in ("arc_challenge", "mbpp", "winograde")
)
DEFAULT_OUT = REPO / "bench" / "results" / "replay.json"

ALGORITHMS = ("linucb", "lints", "egreedy")
MODES = ("cold", "warm")
DEFAULT_LAMBDAS = (0.0, 0.2, 0.4, 0.6, 0.8)
DEFAULT_MU = 0.1
# The bandits' exploration parameters: the gateway's defaults (GREENGATE_BANDIT_ALPHA=0.5 for
# LinUCB; the library defaults for the others, which the gateway does not override).
DEFAULT_PARAMS: dict[str, dict[str, float]] = {
    "linucb": {"alpha": 0.5},
    "lints": {"v": 0.5},
    "egreedy": {"epsilon0": 1.0},
}
FALLBACK_OUTPUT_TOKENS = 256
OPEN_MODEL_PRICE_PER_1M = 0.20  # $ per 1M tokens (input and output) for 7-8B open models
BOUND_PERCENTILE = 95.0
EARLY_QUERIES = 100  # "early" metrics: the first this many evaluated queries of a run
GPT4 = "gpt-4-1106-preview"
GREENSERV_LINUCB_QUALITY = 0.717  # GreenServ: LinUCB, average over full RouterBench
QUICK_ROWS = 400
QUICK_LAMBDAS = (0.0, 0.6)
ENERGY_NOTE = (
    "energy is ESTIMATED: J/output token from telemetry.estimator (power law fitted on "
    "ML.ENERGY leaderboard measurements) x output tokens of the recorded answer; "
    "closed models' parameter counts are public estimates"
)


# ---- the outcome table -----------------------------------------------------------------------


@dataclass(frozen=True)
class OutcomeTable:
    """Per-query outcomes as arrays: row i, model column k."""

    models: tuple[str, ...]
    prompts: tuple[str, ...]
    datasets: tuple[str, ...]
    quality: np.ndarray  # (n, k) in [0, 1]
    cost: np.ndarray  # (n, k) dollars per call
    energy: np.ndarray  # (n, k) joules per call, estimated

    def __post_init__(self) -> None:
        n, k = len(self.prompts), len(self.models)
        for name in ("quality", "cost", "energy"):
            if getattr(self, name).shape != (n, k):
                raise ValueError(f"{name} must have shape ({n}, {k})")
        if len(self.datasets) != n:
            raise ValueError("one dataset name per row is needed")

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: Sequence[int] | np.ndarray) -> OutcomeTable:
        ix = np.asarray(idx, dtype=np.intp)
        return OutcomeTable(
            self.models,
            tuple(self.prompts[i] for i in ix),
            tuple(self.datasets[i] for i in ix),
            self.quality[ix],
            self.cost[ix],
            self.energy[ix],
        )

    def outcomes(self, idx: Sequence[int] | np.ndarray | None = None) -> list[Outcome]:
        """Rows as routing.outcomes.Outcome, for routing.priors.fit_priors."""
        rows = range(len(self)) if idx is None else np.asarray(idx, dtype=np.intp)
        return [
            Outcome(
                self.prompts[i],
                self.datasets[i],
                dict(zip(self.models, self.quality[i].tolist(), strict=True)),
                dict(zip(self.models, self.cost[i].tolist(), strict=True)),
            )
            for i in rows
        ]


def _output_tokens(outcomes: list[Outcome]) -> list[dict[str, int]]:
    """Output tokens of every model's recorded answer (RouterBench files carry them; others
    do not, and count FALLBACK_OUTPUT_TOKENS per call)."""
    return [{m: count_text(a) for m, a in o.answers.items()} for o in outcomes]


@cache
def j_per_output_token(model: str) -> float | None:
    active = MODEL_ACTIVE_PARAMS_B.get(model)
    if active is None:
        return None
    return shipped_fit().j_per_output_token(active, MODEL_TOTAL_PARAMS_B.get(model))


def load_table(paths: Sequence[Path]) -> tuple[OutcomeTable, dict[str, Any]]:
    """All rows of `paths` with cost and (estimated) energy per model; notes for the metadata."""
    outcomes: list[Outcome] = []
    out_tokens: list[dict[str, int]] = []
    files = []
    for p in paths:
        rows = load_outcomes([p])
        tokens = _output_tokens(rows)
        outcomes += rows
        out_tokens += tokens
        files.append(
            {
                "path": str(p),
                "rows": len(rows),
                "format": "routerbench-csv" if p.suffix == ".csv" else "routerdc-json",
            }
        )
    if not outcomes:
        raise ValueError(f"no usable rows in {[str(p) for p in paths]}")
    every = set.intersection(*(set(o.quality) for o in outcomes))
    dropped = sorted(set().union(*(set(o.quality) for o in outcomes)) - every)
    if not every:
        raise ValueError(
            "no model is scored in every row: do not mix files with different "
            "model sets (RouterBench and RouterDC) in one replay"
        )
    models = tuple(sorted(every))
    jpt = {m: j_per_output_token(m) for m in models}
    known = [v for v in jpt.values() if v is not None]
    unknown = sorted(m for m, v in jpt.items() if v is None)
    worst = max(known) if known else 1.0  # unknown size: charged like the hungriest known one
    n, k = len(outcomes), len(models)
    quality = np.empty((n, k))
    cost = np.empty((n, k))
    energy = np.empty((n, k))
    priced = 0
    for i, (o, toks) in enumerate(zip(outcomes, out_tokens, strict=True)):
        prompt_tokens = None
        for j, m in enumerate(models):
            quality[i, j] = o.quality[m]
            tokens = toks.get(m, FALLBACK_OUTPUT_TOKENS)
            energy[i, j] = (jpt[m] if jpt[m] is not None else worst) * tokens
            if m in o.cost:
                cost[i, j] = o.cost[m]
            else:
                if prompt_tokens is None:
                    prompt_tokens = count_text(o.prompt)
                    priced += 1
                cost[i, j] = OPEN_MODEL_PRICE_PER_1M * (prompt_tokens + tokens) / 1e6
    table = OutcomeTable(
        models,
        tuple(o.prompt for o in outcomes),
        tuple(o.dataset for o in outcomes),
        quality,
        cost,
        energy,
    )
    notes = {
        "files": files,
        "models_dropped_not_in_every_row": dropped,
        "models_energy_size_unknown": unknown,
        "rows_priced_by_profile": priced,
        "price_profile": (
            f"${OPEN_MODEL_PRICE_PER_1M} per 1M tokens x (prompt tokens + "
            f"{FALLBACK_OUTPUT_TOKENS}) for rows without a recorded cost"
        ),
        "j_per_output_token": {m: v for m, v in jpt.items()},
    }
    return table, notes


def data_bounds(table: OutcomeTable, percentile: float = BOUND_PERCENTILE) -> RewardBounds:
    """Normalisation bounds from the data: the percentile of per-query energy and cost over all
    rows and models (so one outlier query does not squash everything else to ~0)."""
    return RewardBounds(
        energy_max_j=float(np.percentile(table.energy, percentile)),
        cost_max_usd=float(np.percentile(table.cost, percentile)),
    )


# ---- the replay ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayConfig:
    algorithms: tuple[str, ...] = ALGORITHMS
    modes: tuple[str, ...] = MODES
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    mus: tuple[float, ...] = (DEFAULT_MU,)
    seeds: int = 3
    params: dict[str, dict[str, float]] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    ridge: float = 1.0
    prior_fraction: float = 0.5  # share of the data that fits priors when no --prior-data
    early: int = EARLY_QUERIES
    jobs: int = 1


@dataclass(frozen=True)
class SeedData:
    eval_idx: np.ndarray  # rows replayed, in order
    prior_idx: np.ndarray  # rows the priors were fitted on (of the prior table)
    priors: dict[str, ArmPrior]
    candidates: list[Candidate]  # the price list: mean cost / energy over the evaluated rows


Metrics = dict[str, float]
Task = tuple[int, str, str, float, float]  # seed, algorithm, mode, lambda, mu


class Replay:
    """The replay of one outcome table with precomputed contexts (row i -> contexts[i])."""

    def __init__(
        self,
        table: OutcomeTable,
        contexts: np.ndarray,
        config: ReplayConfig,
        layout: str,
        bounds: RewardBounds | None = None,
        prior_table: OutcomeTable | None = None,
        prior_contexts: np.ndarray | None = None,
    ) -> None:
        if contexts.ndim != 2 or contexts.shape[0] != len(table):
            raise ValueError(f"contexts must be ({len(table)}, dim), got {contexts.shape}")
        if (prior_table is None) != (prior_contexts is None):
            raise ValueError("prior_table and prior_contexts go together")
        if prior_contexts is not None and prior_contexts.shape[1] != contexts.shape[1]:
            raise ValueError("prior contexts have another dimension than the contexts")
        if not 0.0 < config.prior_fraction < 1.0:
            raise ValueError("prior_fraction must be in (0, 1)")
        self.table = table
        self.contexts = np.asarray(contexts, dtype=np.float64)
        self.config = config
        self.layout = layout
        self.bounds = bounds or data_bounds(table)
        self.prior_table = prior_table
        self.prior_contexts = (
            None if prior_contexts is None else np.asarray(prior_contexts, dtype=np.float64)
        )
        self.dim = int(contexts.shape[1])
        self._col = {m: j for j, m in enumerate(table.models)}
        self._seeds: dict[int, SeedData] = {}
        self._rewards: dict[tuple[int, float, float], np.ndarray] = {}

    # -- per seed ---------------------------------------------------------------------------

    def seed_data(self, seed: int) -> SeedData:
        if seed in self._seeds:
            return self._seeds[seed]
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(self.table))
        if self.prior_table is not None:
            eval_idx, prior_idx = perm, np.arange(len(self.prior_table))
            p_table, p_ctx = self.prior_table, self.prior_contexts
        else:
            cut = int(round(len(perm) * self.config.prior_fraction))
            prior_idx, eval_idx = perm[:cut], perm[cut:]
            p_table, p_ctx = self.table, self.contexts
        priors: dict[str, ArmPrior] = {}
        if "warm" in self.config.modes:
            assert p_ctx is not None
            fitted = fit_priors(
                p_table.outcomes(prior_idx), p_ctx[prior_idx], self.layout, ridge=self.config.ridge
            )
            priors = {
                m: ArmPrior(
                    A=np.asarray(v["A"], dtype=np.float64),
                    b=np.asarray(v["b"], dtype=np.float64),
                    n=int(v["n"]),
                )
                for m, v in fitted["models"].items()
            }
        cost = self.table.cost[eval_idx].mean(axis=0)
        energy = self.table.energy[eval_idx].mean(axis=0)
        candidates = [
            Candidate(
                name=m,
                input_per_1m=0.0,
                output_per_1m=0.0,
                healthy=True,
                expected_cost_usd=float(cost[j]),
                expected_energy_j=float(energy[j]),
            )
            for j, m in enumerate(self.table.models)
        ]
        data = SeedData(eval_idx, prior_idx, priors, candidates)
        self._seeds[seed] = data
        return data

    def rewards(self, seed: int, lambda_: float, mu: float) -> np.ndarray:
        """r for every (evaluated row, model), in replay order, by routing.reward.reward."""
        key = (seed, lambda_, mu)
        if key not in self._rewards:
            idx = self.seed_data(seed).eval_idx
            q, e, c = self.table.quality[idx], self.table.energy[idx], self.table.cost[idx]
            r = np.empty(q.shape)
            for i in range(q.shape[0]):
                for j in range(q.shape[1]):
                    r[i, j] = reward(
                        float(q[i, j]), float(e[i, j]), float(c[i, j]), lambda_, mu, self.bounds
                    )
            self._rewards[key] = r
        return self._rewards[key]

    # -- one online run ------------------------------------------------------------------------

    def run_policy(
        self, seed: int, algorithm: str, mode: str, lambda_: float, mu: float
    ) -> np.ndarray:
        """Column of the model chosen at each step of an online run (a fresh bandit)."""
        sd = self.seed_data(seed)
        bandit = make_bandit(
            algorithm,
            self.dim,
            ridge=self.config.ridge,
            seed=seed,
            **self.config.params.get(algorithm, {}),
        )
        for m in self.table.models:
            bandit.add_arm(m, sd.priors.get(m) if mode == "warm" else None)
        router = BanditRouter(bandit, self.bounds)
        choices = np.empty(len(sd.eval_idx), dtype=np.intp)
        for step, i in enumerate(sd.eval_idx.tolist()):
            context = self.contexts[i]
            request = RouteRequest(
                endpoint="chat/completions",
                body={
                    "model": "auto",
                    "messages": [{"role": "user", "content": self.table.prompts[i]}],
                },
                team=None,
                context=context,
                lambda_=lambda_,
                mu=mu,
                explore=True,
            )
            arm = router.rank(request, sd.candidates)[0].name
            col = self._col[arm]
            choices[step] = col
            bandit.update(context, arm, float(self.table.quality[i, col]))
        return choices

    # -- metrics -----------------------------------------------------------------------------

    def metrics(self, seed: int, lambda_: float, mu: float, probs: np.ndarray) -> Metrics:
        """Metrics of a policy given as choice probabilities per (step, model) (one-hot for a
        deterministic record of choices, uniform for random)."""
        sd = self.seed_data(seed)
        idx = sd.eval_idx
        r = self.rewards(seed, lambda_, mu)
        best = r.max(axis=1)
        fixed = self.best_fixed(seed, lambda_, mu)
        fixed_r = r[np.arange(len(idx)), fixed]
        chosen_r = (probs * r).sum(axis=1)
        early = min(self.config.early, len(idx))

        def mean(a: np.ndarray) -> float:
            return float(a.mean())

        return {
            "quality": mean((probs * self.table.quality[idx]).sum(axis=1)),
            "cost_per_1k": 1000.0 * mean((probs * self.table.cost[idx]).sum(axis=1)),
            "energy_j_per_query": mean((probs * self.table.energy[idx]).sum(axis=1)),
            "reward": mean(chosen_r),
            "regret_oracle": mean(best - chosen_r),
            "regret_best_fixed": mean(fixed_r - chosen_r),
            "early_quality": mean((probs[:early] * self.table.quality[idx[:early]]).sum(axis=1)),
            "early_regret_oracle": mean(best[:early] - chosen_r[:early]),
        }

    def best_fixed(self, seed: int, lambda_: float, mu: float) -> np.ndarray:
        """Per evaluated row: the column of the model with the best mean r on its task."""
        idx = self.seed_data(seed).eval_idx
        r = self.rewards(seed, lambda_, mu)
        tasks = np.array([self.table.datasets[i] for i in idx])
        out = np.empty(len(idx), dtype=np.intp)
        for t in np.unique(tasks):
            rows = tasks == t
            out[rows] = int(np.argmax(r[rows].mean(axis=0)))
        return out

    def baselines(self, seed: int, lambda_: float, mu: float) -> dict[str, Metrics]:
        n, k = len(self.seed_data(seed).eval_idx), len(self.table.models)
        r = self.rewards(seed, lambda_, mu)
        out = {
            "oracle": self.metrics(seed, lambda_, mu, _one_hot(r.argmax(axis=1), k)),
            "random": self.metrics(seed, lambda_, mu, np.full((n, k), 1.0 / k)),
        }
        for j, m in enumerate(self.table.models):
            out[f"single:{m}"] = self.metrics(
                seed, lambda_, mu, _one_hot(np.full(n, j, dtype=np.intp), k)
            )
        return out

    # -- everything --------------------------------------------------------------------------

    def tasks(self) -> list[Task]:
        c = self.config
        return [
            (s, a, m, lam, mu)
            for s in range(c.seeds)
            for a in c.algorithms
            for m in c.modes
            for lam in c.lambdas
            for mu in c.mus
        ]

    def run(self, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """All runs and baselines, aggregated over seeds into the output rows."""
        c = self.config
        for s in range(c.seeds):
            self.seed_data(s)  # priors fitted once, before any worker is forked
        per: dict[tuple[str, str, float, float], list[Metrics]] = {}
        tasks = self.tasks()
        k = len(self.table.models)
        t0 = time.perf_counter()
        step = max(1, len(tasks) // 10)

        def tick(done: int) -> None:
            if progress and (done % step == 0 or done == len(tasks)):
                progress(f"{done}/{len(tasks)} bandit runs, {time.perf_counter() - t0:.1f} s")

        choices = self._run_all(tasks, tick)
        for (seed, algorithm, mode, lam, mu), chosen in zip(tasks, choices, strict=True):
            m = self.metrics(seed, lam, mu, _one_hot(chosen, k))
            per.setdefault((algorithm, mode, lam, mu), []).append(m)
        for s in range(c.seeds):
            for lam in c.lambdas:
                for mu in c.mus:
                    for name, m in self.baselines(s, lam, mu).items():
                        per.setdefault((name, "baseline", lam, mu), []).append(m)
        return [
            _aggregate(policy, mode, lam, mu, ms) for (policy, mode, lam, mu), ms in per.items()
        ]

    def _run_all(self, tasks: list[Task], tick: Callable[[int], None]) -> list[np.ndarray]:
        results: dict[int, np.ndarray] = {}
        if self.config.jobs <= 1 or len(tasks) < 2 or "fork" not in _start_methods():
            for i, t in enumerate(tasks):
                results[i] = self.run_policy(*t)
                tick(len(results))
            return [results[i] for i in range(len(tasks))]
        global _WORKER
        _WORKER = self  # inherited by the forked workers: nothing big is pickled per task
        try:
            with ProcessPoolExecutor(self.config.jobs, mp_context=get_context("fork")) as ex:
                # Longest first (LinTS, then LinUCB, then e-greedy) balances the workers.
                order = sorted(range(len(tasks)), key=lambda i: _COST.get(tasks[i][1], 1))
                futures = {ex.submit(_run_task, tasks[i]): i for i in order}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    tick(len(results))
        finally:
            _WORKER = None
        return [results[i] for i in range(len(tasks))]


_WORKER: Replay | None = None
_COST = {"lints": 0, "linucb": 1, "egreedy": 2}


def _run_task(task: Task) -> np.ndarray:
    assert _WORKER is not None
    return _WORKER.run_policy(*task)


def _start_methods() -> list[str]:
    from multiprocessing import get_all_start_methods

    return get_all_start_methods()


def _one_hot(cols: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(cols), k))
    out[np.arange(len(cols)), cols] = 1.0
    return out


def _aggregate(
    policy: str, mode: str, lambda_: float, mu: float, per_seed: list[Metrics]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "policy": policy,
        "mode": mode,
        "lambda": lambda_,
        "mu": mu,
        "seed_count": len(per_seed),
    }
    for key in per_seed[0]:
        row[key] = float(np.mean([m[key] for m in per_seed]))
    row["quality_sd"] = float(np.std([m["quality"] for m in per_seed]))
    return row


# ---- contexts --------------------------------------------------------------------------------


class Contexts:
    """The gateway's FeatureExtractor (routing.features), its vectors cached in memory and,
    unless disabled, on disk keyed by the prompts, the extractor's layout and its source."""

    def __init__(self, clusters: int = 3, cache_dir: Path | None = None) -> None:
        from routing.features import FeatureExtractor

        t0 = time.perf_counter()
        self.extractor = FeatureExtractor.default(clusters)
        self.load_s = time.perf_counter() - t0
        self.dim = int(self.extractor.dim)
        self.layout = str(getattr(self.extractor, "layout", None) or f"dim={self.dim}")
        self.cache_dir = cache_dir
        self.clusters = clusters
        classifier = getattr(self.extractor, "classifier", None)
        meta = getattr(classifier, "meta", None)
        training = meta.get("training", {}) if isinstance(meta, dict) else {}
        # Files the shipped task classifier / centroids were fitted on (in-sample check).
        self.training_files: list[str] = [str(f) for f in training.get("files", [])]
        self.extract_s = 0.0
        self.cache_hits = 0
        self._memo: dict[str, np.ndarray] = {}

    def _key(self, prompts: Sequence[str]) -> str:
        h = hashlib.sha256(f"{self.layout}|{self.dim}|{self.clusters}".encode())
        # Any change to the routing code or its feature artifacts invalidates the cache.
        routing = REPO / "routing"
        for src in sorted([*routing.glob("*.py"), *routing.glob("artifacts/*")]):
            if src.is_file() and src.name != "priors.json":
                h.update(src.name.encode())
                h.update(src.read_bytes())
        for p in prompts:
            h.update(hashlib.sha256(p.encode()).digest())
        return h.hexdigest()[:24]

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        key = self._key(prompts)
        if key in self._memo:
            return self._memo[key]
        path = self.cache_dir / f"contexts-{key}.npy" if self.cache_dir else None
        if path is not None and path.exists():
            out = np.load(path)
            self.cache_hits += 1
        else:
            t0 = time.perf_counter()
            feats = self.extractor.extract_many(list(prompts))
            out = np.stack([np.asarray(self.extractor.vector(f), dtype=np.float64) for f in feats])
            self.extract_s += time.perf_counter() - t0
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, out)
        self._memo[key] = out
        return out


# ---- reporting -------------------------------------------------------------------------------


def single_rows(rows: list[dict[str, Any]], lambda_: float, mu: float) -> dict[str, dict[str, Any]]:
    return {
        r["policy"].removeprefix("single:"): r
        for r in rows
        if r["policy"].startswith("single:") and r["lambda"] == lambda_ and r["mu"] == mu
    }


def highlighted_singles(rows: list[dict[str, Any]], lambda_: float, mu: float) -> dict[str, str]:
    """label -> model: best quality, best mean r at this lambda/mu, GPT-4, cheapest."""
    singles = single_rows(rows, lambda_, mu)
    if not singles:
        return {}
    out = {
        "best single (quality)": max(singles, key=lambda m: singles[m]["quality"]),
        "best single (r)": max(singles, key=lambda m: singles[m]["reward"]),
    }
    if GPT4 in singles:
        out["always GPT-4"] = GPT4
    out["cheapest single"] = min(singles, key=lambda m: singles[m]["cost_per_1k"])
    return out


def format_table(rows: list[dict[str, Any]], config: ReplayConfig) -> str:
    head = (
        f"{'policy':<34} {'mode':<8} {'lambda':>6} {'mu':>5} {'quality':>8} {'$/1k q':>8} "
        f"{'J/q est':>8} {'regret*':>8} {'regretF':>8}"
    )
    lines = [head, "-" * len(head)]

    def line(label: str, r: dict[str, Any]) -> str:
        return (
            f"{label:<34.34} {r['mode']:<8} {r['lambda']:>6.2f} {r['mu']:>5.2f} "
            f"{r['quality']:>8.4f} {r['cost_per_1k']:>8.3f} {r['energy_j_per_query']:>8.1f} "
            f"{r['regret_oracle']:>8.4f} {r['regret_best_fixed']:>8.4f}"
        )

    for mu in config.mus:
        for lam in config.lambdas:
            at = [r for r in rows if r["lambda"] == lam and r["mu"] == mu]
            for r in at:
                if r["mode"] != "baseline":
                    lines.append(line(r["policy"], r))
            by = {r["policy"]: r for r in at}
            for name in ("oracle", "random"):
                if name in by:
                    lines.append(line(name, by[name]))
            for label, model in highlighted_singles(rows, lam, mu).items():
                lines.append(line(f"{label}: {model.rsplit('/', 1)[-1]}", by[f"single:{model}"]))
            lines.append("")
    lines.append(
        "regret* = regret vs the per-query oracle, regretF = vs the best fixed model "
        "per task (both in reward units per query); J/q est = estimated joules/query"
    )
    return "\n".join(lines)


def check_targets(rows: list[dict[str, Any]], config: ReplayConfig) -> dict[str, Any]:
    """The project's targets, checked on the learned policies' rows (averaged over seeds)."""
    learned = [r for r in rows if r["mode"] in ("cold", "warm")]
    out: dict[str, Any] = {}
    lam0, mu0 = config.lambdas[0], config.mus[0]
    singles = single_rows(rows, lam0, mu0)
    if GPT4 in singles and learned:
        g = singles[GPT4]
        cap = 0.4 * g["cost_per_1k"]
        cheap = [r for r in learned if r["cost_per_1k"] <= cap]
        best = max(cheap, key=lambda r: r["quality"]) if cheap else None
        near = [r for r in learned if r["quality"] >= g["quality"] - 0.01]
        out["gpt4_parity_at_40pct_cost"] = {
            "target": f"quality >= {g['quality']:.4f} - 0.01 at <= ${cap:.3f}/1k "
            f"(40% of always-{GPT4}'s ${g['cost_per_1k']:.3f}/1k)",
            "reached": bool(best and best["quality"] >= g["quality"] - 0.01),
            "best_quality_within_cost_cap": _brief(best),
            "cheapest_within_0.01_quality": _brief(
                min(near, key=lambda r: r["cost_per_1k"]) if near else None
            ),
            "gpt4_quality": g["quality"],
            "gpt4_cost_per_1k": g["cost_per_1k"],
        }
    if singles and learned:
        # Strong reading: for every single model, some point of the policy's sweep costs no more
        # per query and has higher quality.
        fronts = {}
        for policy in sorted({(r["policy"], r["mode"]) for r in learned}):
            pts = [r for r in learned if (r["policy"], r["mode"]) == policy]
            fronts[f"{policy[0]}/{policy[1]}"] = sorted(
                m
                for m, s in singles.items()
                if not any(
                    p["cost_per_1k"] <= s["cost_per_1k"] and p["quality"] > s["quality"]
                    for p in pts
                )
            )
        # Weaker reading, at the green end of the sweep only: the point's quality is above that
        # of every single model whose cost per query is at or below the point's own.
        lam_hi = max(config.lambdas)
        green_end = []
        for r in (r for r in learned if r["lambda"] == lam_hi):
            no_dearer = [m for m, s in singles.items() if s["cost_per_1k"] <= r["cost_per_1k"]]
            green_end.append(
                {
                    **_brief(r),
                    "single_models_at_or_below_its_cost": len(no_dearer),
                    "beats_them_all": all(r["quality"] > singles[m]["quality"] for m in no_dearer),
                }
            )
        out["beats_singles_at_own_cost"] = {
            "target": "some policy's lambda sweep beats every single model's quality at that "
            "model's own cost (a point costing no more per query, with higher quality)",
            "reached": any(not left for left in fronts.values()),
            "not_beaten_by_policy": fronts,
            "green_end_lambda": lam_hi,
            "green_end": green_end,
        }
    lin = [r for r in learned if r["policy"] == "linucb"]
    if lin:
        best = max(lin, key=lambda r: r["quality"])
        out["best_linucb_quality"] = {
            **_brief(best),
            "greenserv_reference": GREENSERV_LINUCB_QUALITY,
            "note": "GreenServ's 71.7% averages full RouterBench (more tasks, other split); "
            "not directly comparable",
        }
    return out


def _brief(r: dict[str, Any] | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        k: (round(v, 4) if isinstance(v, float) else v)
        for k, v in r.items()
        if k in ("policy", "mode", "lambda", "mu", "quality", "cost_per_1k", "energy_j_per_query")
    }


def format_early(rows: list[dict[str, Any]], config: ReplayConfig) -> str:
    """Cold against warm over the first `config.early` queries, averaged over lambda and mu."""
    lines = [f"Warm start: first {config.early} evaluated queries (mean over lambdas and mu):"]
    for algorithm in config.algorithms:
        parts = []
        for mode in config.modes:
            at = [r for r in rows if r["policy"] == algorithm and r["mode"] == mode]
            if at:
                q = float(np.mean([r["early_quality"] for r in at]))
                g = float(np.mean([r["early_regret_oracle"] for r in at]))
                parts.append(f"{mode} quality {q:.4f} regret* {g:.4f}")
        lines.append(f"  {algorithm:<8} " + " | ".join(parts))
    return "\n".join(lines)


def format_targets(targets: dict[str, Any]) -> str:
    lines = ["Targets:"]
    t = targets.get("gpt4_parity_at_40pct_cost")
    if t:
        lines.append(f"  [{'REACHED' if t['reached'] else 'not reached'}] {t['target']}")
        lines.append(f"      best within the cost cap: {t['best_quality_within_cost_cap']}")
        lines.append(f"      cheapest within 0.01 of GPT-4: {t['cheapest_within_0.01_quality']}")
    else:
        lines.append(f"  [n/a] GPT-4 parity: {GPT4} is not in the data")
    t = targets.get("beats_singles_at_own_cost")
    if t:
        lines.append(f"  [{'REACHED' if t['reached'] else 'not reached'}] {t['target']}")
        for name, left in t["not_beaten_by_policy"].items():
            names = ", ".join(m.rsplit("/", 1)[-1] for m in left) or "none"
            lines.append(f"      {name}: single models not beaten: {names}")
        lines.append(
            f"    weaker reading, green end only (lambda={t['green_end_lambda']}): quality above "
            "every single model that costs no more per query than the policy did"
        )
        for v in t["green_end"]:
            lines.append(
                f"      {v['policy']}/{v['mode']}: quality {v['quality']:.4f} at "
                f"${v['cost_per_1k']:.3f}/1k; above all "
                f"{v['single_models_at_or_below_its_cost']} single models at or below that "
                f"cost: {v['beats_them_all']}"
            )
    t = targets.get("best_linucb_quality")
    if t:
        lines.append(
            f"  best LinUCB mean quality: {t['quality']:.4f} ({t['mode']}, lambda="
            f"{t['lambda']}, mu={t['mu']}); GreenServ reports "
            f"{GREENSERV_LINUCB_QUALITY:.3f} on full RouterBench (not comparable 1:1)"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], config: ReplayConfig, path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("replay: matplotlib is not installed; no PNG", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    panels = (
        ("cost_per_1k", "cost per 1,000 queries ($, log)"),
        ("energy_j_per_query", "energy per query (J, estimated, log)"),
    )
    colors = {"linucb": "tab:blue", "lints": "tab:orange", "egreedy": "tab:green"}
    mu0 = config.mus[0]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for algorithm in config.algorithms:
            for mode in config.modes:
                for mu in config.mus:
                    pts = sorted(
                        (
                            r
                            for r in rows
                            if r["policy"] == algorithm and r["mode"] == mode and r["mu"] == mu
                        ),
                        key=lambda r: r["lambda"],
                    )
                    if not pts:
                        continue
                    ax.plot(
                        [p[key] for p in pts],
                        [p["quality"] for p in pts],
                        marker="o" if mode == "warm" else "s",
                        linestyle="-" if mode == "warm" else "--",
                        color=colors.get(algorithm),
                        alpha=0.85,
                        label=f"{algorithm} {mode}" + (f" mu={mu}" if len(config.mus) > 1 else ""),
                    )
                    for p in pts:
                        ax.annotate(
                            f"{p['lambda']:g}",
                            (p[key], p["quality"]),
                            fontsize=6,
                            xytext=(3, 3),
                            textcoords="offset points",
                        )
        singles = single_rows(rows, config.lambdas[0], mu0)
        ax.scatter(
            [s[key] for s in singles.values()],
            [s["quality"] for s in singles.values()],
            color="black",
            marker="x",
            label="single models",
            zorder=3,
        )
        for m, s in singles.items():
            ax.annotate(
                m.rsplit("/", 1)[-1],
                (s[key], s["quality"]),
                fontsize=7,
                xytext=(4, -8),
                textcoords="offset points",
            )
        oracle = sorted(
            (r for r in rows if r["policy"] == "oracle" and r["mu"] == mu0),
            key=lambda r: r["lambda"],
        )
        ax.plot(
            [r[key] for r in oracle],
            [r["quality"] for r in oracle],
            color="gray",
            marker="*",
            linestyle=":",
            label="oracle (per-query best r)",
        )
        rnd = [r for r in rows if r["policy"] == "random"][:1]
        ax.scatter(
            [r[key] for r in rnd],
            [r["quality"] for r in rnd],
            color="gray",
            marker="D",
            label="random",
        )
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("mean quality")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.suptitle(
        f"{title}\npoints along a line: lambda sweep (labels); energy estimated", fontsize=10
    )
    fig.tight_layout(rect=(0.0, 0.1, 1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


# ---- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=list(DEFAULT_DATA),
        help="outcome files (RouterBench CSV or RouterDC JSON)",
    )
    p.add_argument(
        "--prior-data",
        type=Path,
        nargs="+",
        help="fit warm priors on these files instead of half of --data",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--png", type=Path, help="default: --out with suffix .png")
    p.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    p.add_argument("--lambdas", type=float, nargs="+", default=list(DEFAULT_LAMBDAS))
    p.add_argument(
        "--mu",
        type=float,
        nargs="+",
        default=[DEFAULT_MU],
        help="cost weight(s); several values sweep mu too",
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--prior-fraction", type=float, default=0.5)
    p.add_argument("--rows", type=int, help="subsample this many rows of --data (seed 0)")
    p.add_argument("--alpha", type=float, default=DEFAULT_PARAMS["linucb"]["alpha"])
    p.add_argument("--v", type=float, default=DEFAULT_PARAMS["lints"]["v"])
    p.add_argument("--epsilon0", type=float, default=DEFAULT_PARAMS["egreedy"]["epsilon0"])
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--clusters", type=int, default=3, help="FeatureExtractor clusters (k)")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes for the bandit runs",
    )
    p.add_argument(
        "--no-cache", action="store_true", help="do not read or write the on-disk context cache"
    )
    p.add_argument(
        "--quick", action="store_true", help=f"one seed, lambdas {QUICK_LAMBDAS}, {QUICK_ROWS} rows"
    )
    p.add_argument(
        "--kfold",
        type=int,
        metavar="K",
        help="grouped K-fold mode (bench/replay_kfold.py): the router with its learned quality "
        "prior against single models, random, oracle and every offline predictor",
    )
    p.add_argument(
        "--by-dataset", action="store_true", help="with --kfold: one fold per dataset instead"
    )
    p.add_argument(
        "--prior-kind",
        default="auto",
        help="with --kfold: the router's predictor (auto: per fold, lowest inner log loss)",
    )
    p.add_argument(
        "--kfold-alphas",
        type=float,
        nargs="+",
        help="with --kfold: LinUCB widths the router chooses from per fold on its training "
        "folds (default replay_kfold.ALPHAS; one value fixes it)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.lambdas = 1, list(QUICK_LAMBDAS)
        args.rows = args.rows or QUICK_ROWS
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if not all(0.0 <= x <= 1.0 for x in args.lambdas):
        p.error("--lambdas must lie in [0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    if args.kfold:
        return main_kfold(args, say)
    missing = [str(p) for p in [*args.data, *(args.prior_data or [])] if not p.exists()]
    if missing:
        print(
            f"replay: missing data file(s): {', '.join(missing)} (see ../shared/data/README.md)",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    table, notes = load_table(args.data)
    full_rows = len(table)
    if args.rows and args.rows < len(table):
        keep = np.sort(np.random.default_rng(0).choice(len(table), args.rows, replace=False))
        table = table.subset(keep)
    prior_table = prior_notes = None
    if args.prior_data:
        prior_table, prior_notes = load_table(args.prior_data)
    timings["load_data_s"] = time.perf_counter() - t0
    say(
        f"{len(table)} rows ({full_rows} usable in the files), {len(table.models)} models, "
        f"tasks {sorted(set(table.datasets))}; data and answer tokens in "
        f"{timings['load_data_s']:.1f} s"
    )

    t0 = time.perf_counter()
    contexts_of = Contexts(
        args.clusters, None if args.no_cache else args.out.parent / "replay_cache"
    )
    timings["feature_model_load_s"] = contexts_of.load_s
    contexts = contexts_of(table.prompts)
    prior_contexts = contexts_of(prior_table.prompts) if prior_table is not None else None
    timings["features_s"] = time.perf_counter() - t0
    say(
        f"contexts: dim {contexts_of.dim}, layout {contexts_of.layout!r}; "
        f"{timings['features_s']:.1f} s (model load {contexts_of.load_s:.1f} s, extraction "
        f"{contexts_of.extract_s:.1f} s, disk cache hits {contexts_of.cache_hits})"
    )

    replayed = {p.resolve() for p in [*args.data, *(args.prior_data or [])]}
    in_sample = sorted(f for f in contexts_of.training_files if Path(f).resolve() in replayed)

    config = ReplayConfig(
        algorithms=tuple(args.algorithms),
        lambdas=tuple(args.lambdas),
        mus=tuple(args.mu),
        seeds=args.seeds,
        ridge=args.ridge,
        prior_fraction=args.prior_fraction,
        params={
            "linucb": {"alpha": args.alpha},
            "lints": {"v": args.v},
            "egreedy": {"epsilon0": args.epsilon0},
        },
        jobs=max(1, args.jobs),
    )
    replay = Replay(
        table,
        contexts,
        config,
        contexts_of.layout,
        prior_table=prior_table,
        prior_contexts=prior_contexts,
    )
    say(
        f"bounds (p{BOUND_PERCENTILE:g} of per-query values): energy_max_j="
        f"{replay.bounds.energy_max_j:.2f} J (estimated), cost_max_usd="
        f"{replay.bounds.cost_max_usd:.6f}; {len(replay.tasks())} bandit runs on "
        f"{config.jobs} process(es)"
    )
    t0 = time.perf_counter()
    rows = replay.run(progress=say)
    timings["replay_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    print()
    print(format_table(rows, config))
    targets = check_targets(rows, config)
    print()
    print(format_early(rows, config))
    print()
    print(format_targets(targets))
    if in_sample:
        print(
            "\nCaveat: the shipped task classifier and cluster centroids were fitted on "
            f"prompts of {', '.join(Path(f).name for f in in_sample)}, which are replayed here: "
            "the task feature is in-sample for these rows."
        )
    print(f"\nNote: {ENERGY_NOTE}.")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    meta_path = args.out.with_suffix(".meta.json")
    png = args.png or args.out.with_suffix(".png")
    eval_rows = len(replay.seed_data(0).eval_idx)
    ok_png = plot(
        rows,
        config,
        png,
        f"greengate offline replay: {len(table)} rows of "
        f"{', '.join(sorted(set(table.datasets)))}, {eval_rows} evaluated per seed, "
        f"{config.seeds} seed(s), mu={','.join(f'{m:g}' for m in config.mus)}",
    )
    timings["total_s"] = time.perf_counter() - t_start
    meta = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "energy_note": ENERGY_NOTE,
        "data": notes,
        "prior_data": prior_notes,
        "rows": {
            "usable_in_files": full_rows,
            "replayed_table": len(table),
            "evaluated_per_seed": eval_rows,
            "prior_rows_per_seed": len(replay.seed_data(0).prior_idx),
            "per_task": {t: table.datasets.count(t) for t in sorted(set(table.datasets))},
        },
        "models": list(table.models),
        "bounds": {
            "energy_max_j": replay.bounds.energy_max_j,
            "cost_max_usd": replay.bounds.cost_max_usd,
            "rule": f"{BOUND_PERCENTILE:g}th percentile over all rows x models",
        },
        "price_list_seed0": {
            c.name: {
                "expected_cost_usd": c.expected_cost_usd,
                "expected_energy_j": c.expected_energy_j,
            }
            for c in replay.seed_data(0).candidates
        },
        "price_list_rule": "each model's mean cost and mean estimated energy per query over "
        "that seed's evaluated rows, known to the router in advance",
        "config": {
            "algorithms": config.algorithms,
            "modes": config.modes,
            "lambdas": config.lambdas,
            "mus": config.mus,
            "seeds": config.seeds,
            "params": config.params,
            "ridge": config.ridge,
            "prior_fraction": None if prior_table is not None else config.prior_fraction,
            "early_queries": config.early,
            "jobs": config.jobs,
            "quick": bool(args.quick),
        },
        "features": {
            "dim": contexts_of.dim,
            "layout": contexts_of.layout,
            "clusters": args.clusters,
            "classifier_trained_on_replayed_files": in_sample,
            "extract_many_update_clusters": False,
            "context_cache_hits": contexts_of.cache_hits,
        },
        "targets": targets,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "platform": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "png": str(png) if ok_png else None,
    }
    meta_path.write_text(json.dumps(meta, indent=1, default=str) + "\n")
    print(f"\nwrote {args.out}, {meta_path}" + (f", {png}" if ok_png else ""))
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return 0


def main_kfold(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    """--kfold: grouped k-fold replay of the RouterBench files (bench/replay_kfold.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import replay_kfold as kf

    from routing.quality_data import load_family

    missing = [str(p) for p in args.data if not p.exists()]
    if missing:
        print(f"replay: missing data file(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    data_dir = args.data[0].parent.parent
    data = load_family(data_dir, "routerbench")
    table, _ = load_table(sorted(args.data))
    if table.prompts != data.prompts or table.models != data.models:
        print("replay: --kfold needs the routerbench files of one folder", file=sys.stderr)
        return 2
    say(f"{len(data)} rows, {len(data.models)} models; embeddings and contexts cached")
    config = kf.KfoldConfig(
        k=args.kfold,
        by_dataset=args.by_dataset,
        lambdas=tuple(args.lambdas),
        mu=args.mu[0],
        prior_kind=args.prior_kind,
        alphas=tuple(args.kfold_alphas) if args.kfold_alphas else kf.ALPHAS,
    )
    replay = kf.KfoldReplay(data, table.energy, config, data_bounds(table))
    t0 = time.perf_counter()
    result = replay.run(progress=say)
    result["cpu_s"] = round(time.process_time(), 1)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(kf.format_report(result))
    print(f"\nNote: {ENERGY_NOTE}.")
    out = args.out
    if out == DEFAULT_OUT:
        out = out.with_name("replay_kfold" + ("_by_dataset" if args.by_dataset else "") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result["config"] = {k: v for k, v in vars(config).items()}
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    png = args.png or out.with_suffix(".png")
    variant = "one fold per dataset" if args.by_dataset else f"grouped {args.kfold}-fold"
    ok = kf.plot(
        result,
        png,
        f"greengate k-fold replay ({variant}), {len(data)} RouterBench "
        "rows: quality-cost and quality-energy fronts (energy estimated)",
    )
    print(f"wrote {out}" + (f", {png}" if ok else ""))
    return 0


__all__ = ["OutcomeTable", "Replay", "ReplayConfig", "check_targets", "load_table", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
