"""Quality predictors, the per-member prior, hard objectives and the k-fold replay on small
synthetic outcomes (no MiniLM): pure logic, tested directly."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from routing.constraints import Constraint, Option, order_under
from routing.policy import Policy, impossible_constraint
from routing.quality_data import QualityData
from routing.quality_predictors import KINDS, auc, calibration, fit_predictor, restore_predictor
from routing.quality_prior import MemberPriorSpec, PredictorBundle, QualityPrior, arm_prior
from routing.router import Candidate

MODELS = ("small", "mid", "large")
EMB, CTX = 384, 6


def synthetic(n: int = 600, seed: int = 0) -> QualityData:
    """Two prompt families by embedding direction; 'small' is good on family 0 only, 'large'
    on both, 'mid' in between."""
    rng = np.random.default_rng(seed)
    fam = rng.integers(0, 2, n)
    centers = rng.normal(size=(2, EMB))
    emb = centers[fam] + 0.3 * rng.normal(size=(n, EMB))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ctx = np.zeros((n, CTX))
    ctx[:, 0] = 1.0
    ctx[np.arange(n), 1 + fam] = 1.0
    p = np.stack([np.where(fam == 0, 0.9, 0.1), np.full(n, 0.6), np.full(n, 0.92)], axis=1)
    q = (rng.random((n, 3)) < p).astype(float)
    cost = np.tile([1e-4, 5e-4, 5e-3], (n, 1))
    prompts = tuple(f"prompt {i % (n // 2)}" for i in range(n))  # every prompt twice
    from routing.quality_data import prompt_groups

    return QualityData(
        "synthetic",
        MODELS,
        prompts,
        tuple(f"d{f}" for f in fam),
        prompt_groups(prompts),
        q,
        cost,
        emb.astype(np.float32),
        ctx,
        "test",
    )


@pytest.fixture(scope="module")
def data() -> QualityData:
    return synthetic()


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_predictor_learns_who_is_good_where_and_survives_its_arrays(
    kind: str, data: QualityData
) -> None:
    X, Y = data.inputs, data.quality
    p = fit_predictor(kind, X[:400], Y[:400], MODELS)
    pred = p.predict(X[400:])
    fam0 = data.contexts[400:, 1] == 1.0
    # small: good on family 0, bad on family 1; AUC well above chance for it.
    assert pred[fam0, 0].mean() > pred[~fam0, 0].mean() + 0.3
    assert auc(pred[:, 0], Y[400:, 0]) > 0.8
    buf = io.BytesIO()
    np.savez(buf, **p.arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        back = restore_predictor(kind, MODELS, {k: z[k] for k in z.files}, p.params)
    np.testing.assert_allclose(back.predict(X[400:]), pred, rtol=1e-6)


def test_regularisation_is_chosen_on_the_training_rows_by_inner_grouped_cv(
    data: QualityData,
) -> None:
    from train.quality_fit import TUNE_GRID, grouped_folds, tune_params

    fold = grouped_folds(data.groups, 3, seed=1)
    for g in np.unique(data.groups):
        assert len(set(fold[data.groups == g].tolist())) == 1
    X, Y = data.inputs, data.quality
    params, losses = tune_params("logreg", X, Y, data.groups, MODELS)
    assert params in TUNE_GRID["logreg"]
    assert len(losses) == len(TUNE_GRID["logreg"])
    assert losses[json.dumps(params, sort_keys=True)] == min(losses.values())
    # Pure noise in the targets: the strongest regularisation must win.
    noise = (np.random.default_rng(3).random(Y.shape) < 0.5).astype(float)
    params, _ = tune_params("logreg", X, noise, data.groups, MODELS)
    assert params == max(TUNE_GRID["logreg"], key=lambda p: p["l2"])
    assert set(TUNE_GRID) == set(KINDS)  # every kind is tuned on its training rows


def test_bad_predictor_input_is_refused(data: QualityData) -> None:
    with pytest.raises(ValueError, match="unknown predictor"):
        fit_predictor("forest", data.inputs, data.quality, MODELS)
    with pytest.raises(ValueError, match="expected"):
        fit_predictor("logreg", data.inputs, data.quality[:, :2], MODELS)


def test_calibration_separates_error_of_the_mean_from_outcome_noise() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.1, 0.9, size=(4000, 1))
    y = (rng.random((4000, 1)) < p).astype(float)
    good = calibration(p, y)
    bad = calibration(np.clip(p + 0.2, 0, 1), y)
    assert good.sigma[0] < 0.04  # calibrated: only the floor-ish remains
    assert bad.sigma[0] > 0.12  # off by 0.2 on most bins
    assert 0.15 < good.noise[0] < 0.25


def opts() -> list[Option]:
    return [
        Option("cheap", 0.55, 1e-4, 5.0),
        Option("mid", 0.75, 1e-3, 20.0),
        Option("big", 0.9, 1e-2, 300.0),
        Option("mystery", 0.95, None, None),
    ]


def test_min_quality_takes_the_cheapest_that_clears_the_bar() -> None:
    order, out = order_under(Constraint(min_quality=0.7), opts())
    assert order[0] == "mid" and out.met and out.feasible == ("mid", "big", "mystery")


def test_budgets_take_the_best_quality_within_and_unknown_cost_never_qualifies() -> None:
    order, out = order_under(Constraint(max_cost_per_1k_usd=2.0), opts())  # $0.002 a request
    assert order[0] == "mid" and out.met
    order, out = order_under(Constraint(max_energy_j=10.0), opts())
    assert order[0] == "cheap"
    assert "mystery" not in out.feasible


def test_unmet_constraint_falls_back_to_best_quality_and_says_why() -> None:
    order, out = order_under(Constraint(max_cost_per_1k_usd=0.01), opts())
    assert not out.met and order[0] == "mystery" and "no member meets the budget" in out.note
    order, out = order_under(Constraint(min_quality=0.8, max_cost_per_1k_usd=2.0), opts())
    assert not out.met and "predicted to reach quality 0.8" in out.note
    assert sorted(order) == sorted(o.name for o in opts())  # nobody lost for fallbacks


def test_impossible_constraint_names_the_field() -> None:
    cands = [
        Candidate("a", 1, 1, True, expected_cost_usd=2e-6, expected_energy_j=0.5),
        Candidate("b", 1, 1, True, expected_cost_usd=None, expected_energy_j=None),
    ]
    ceiling = {"a": 0.8, "b": 0.85}
    assert impossible_constraint(Policy(min_quality=0.9), cands, ceiling)[0] == "min_quality"
    assert impossible_constraint(Policy(min_quality=0.84), cands, ceiling) is None
    assert (
        impossible_constraint(Policy(min_quality=0.84, allowed_members=["a"]), cands, ceiling)[0]
        == "min_quality"
    )
    assert (
        impossible_constraint(Policy(max_cost_per_1k_usd=1e-3), cands, ceiling)[0]
        == "max_cost_per_1k_usd"
    )
    assert impossible_constraint(Policy(max_cost_per_1k_usd=1e-2), cands, ceiling) is None
    assert impossible_constraint(Policy(max_energy_j=0.1), cands, ceiling)[0] == "max_energy_j"


def bundle(data: QualityData) -> PredictorBundle:
    p = fit_predictor("logreg", data.inputs, data.quality, MODELS)
    m = list(MODELS)
    return PredictorBundle(
        "logreg",
        [p],
        dict.fromkeys(m, 0.03),
        dict.fromkeys(m, 0.2),
        dict(zip(m, data.quality.mean(axis=0).tolist(), strict=True)),
        dict.fromkeys(m, 0.95),
        "test",
        "fp",
        (0.2, 0.1),
        {},
    )


def test_prior_sources_for_members_without_history(data: QualityData) -> None:
    specs = {
        "s": MemberPriorSpec("small"),
        "l": MemberPriorSpec("large"),
        "clone": MemberPriorSpec("x", like="l"),
        "loop1": MemberPriorSpec("y", like="loop2"),
        "loop2": MemberPriorSpec("z", like="loop1"),
        "decl": MemberPriorSpec("w", declared={"mbpp": 0.8, "mmlu": 0.3}),
        "sized": MemberPriorSpec("v", params_b=20.0),
        "blank": MemberPriorSpec("u"),
    }
    prior = QualityPrior(bundle(data), specs, layout="test")
    names = list(specs)
    est = prior.estimate(names, data.embeddings[0], data.contexts[0], task="code")
    assert est["s"].source == "predictor:logreg:small"
    assert est["clone"].source == "like:l" and est["clone"].mean == pytest.approx(est["l"].mean)
    assert est["clone"].sigma > est["l"].sigma
    assert est["decl"].source == "declared" and est["decl"].mean == pytest.approx(0.8)
    assert est["sized"].source == "params:20B"
    assert est["sized"].mean == pytest.approx(0.2 + 0.1 * np.log(20.0))
    assert est["loop1"].source == "pool-mean" and est["blank"].source == "pool-mean"
    # Without the embedding (skipped under load) the predictor falls back to the model's mean.
    no_emb = prior.estimate(["s"], None, None)
    assert no_emb["s"].mean == pytest.approx(data.quality[:, 0].mean())
    # A predictor fitted on another context layout is not used at all.
    assert QualityPrior(bundle(data), specs, layout="other").bundle is None


def test_arm_prior_spread_matches_sigma() -> None:
    a = arm_prior(sigma=0.05, noise=0.2, dim=4, mean_sq_norm=2.0)
    x = np.array([1.0, 1.0, 0.0, 0.0])  # |x|^2 = 2
    assert 0.2 * x @ np.linalg.inv(a.A) @ x == pytest.approx(0.05**2)
    assert not a.b.any()


def test_pool_file_checks_prior_hints(tmp_path: Path) -> None:
    from backends.pool_config import ConfigError, load_pool

    base = "pool:\n  - {name: a, kind: openai, model: m, base_url: 'http://x/v1'%s}\n"
    for extra, msg in (
        (", like: ghost", "unknown member"),
        (", like: a", "another member"),
        (", quality: {mmlu: 1.5}", "[0, 1]"),
    ):
        p = tmp_path / "pool.yaml"
        p.write_text(base % extra)
        with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            load_pool(p)


def kfold_module():
    path = Path(__file__).resolve().parent.parent / "bench" / "replay_kfold.py"
    spec = importlib.util.spec_from_file_location("greengate_replay_kfold", path)
    assert spec and spec.loader
    kf = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = kf
    spec.loader.exec_module(kf)
    return kf


def test_mixture_front_is_the_non_decreasing_upper_hull() -> None:
    kf = kfold_module()
    pts = [(1.0, 0.5), (2.0, 0.55), (3.0, 0.9)]
    at = np.array([0.5, 1.0, 2.0, 2.5, 3.0, 10.0])
    got = kf.mixture_front(pts, at)
    assert got[0] == -np.inf  # nothing that cheap
    # Mixing (1, 0.5) and (3, 0.9) half and half beats the point at cost 2.
    np.testing.assert_allclose(got[1:], [0.5, 0.7, 0.8, 0.9, 0.9])


def test_price_model_learns_per_request_cost_from_the_context() -> None:
    kf = kfold_module()
    rng = np.random.default_rng(0)
    ctx = np.column_stack([np.ones(300), rng.uniform(0, 1, 300)])
    cost = np.column_stack([1e-4 * np.exp(2 * ctx[:, 1]), np.full(300, 3e-3)])
    energy = np.column_stack([np.full(300, 5.0), 40.0 * np.exp(ctx[:, 1])])
    pm = kf.PriceModel.fit(ctx[:200], cost[:200], energy[:200], ridge=1e-3)
    c, e = pm.predict(ctx[200:])
    np.testing.assert_allclose(c, cost[200:], rtol=1e-3)
    np.testing.assert_allclose(e, energy[200:], rtol=1e-3)


def test_kfold_replay_on_synthetic_outcomes(data: QualityData) -> None:
    kf = kfold_module()
    from routing.reward import RewardBounds

    energy = np.tile([10.0, 50.0, 300.0], (len(data), 1))
    cfg = kf.KfoldConfig(
        k=3,
        lambdas=(0.0, 0.5),
        mus=(0.0, 1.0),
        qualities=(0.6, 0.85),
        budgets=(0.2, 1.0),
        kinds=("logreg", "knn"),
        alphas=(0.0, 0.5),
        early=50,
    )
    replay = kf.KfoldReplay(data, energy, cfg, RewardBounds(300.0, 5e-3))
    for g in np.unique(data.groups):
        assert len(set(replay.fold[data.groups == g].tolist())) == 1  # a prompt in one fold
    result = replay.run()
    rows = {(r["policy"], r["setting"]): r for r in result["rows"]}
    oracle = rows[("oracle", "lambda=0")]["quality"]
    assert all(r["quality"] <= oracle + 1e-9 for r in result["rows"])
    # The router knows 'small' is good on family 0: it beats always-large's cost at about
    # its quality, and beats random by far.
    router = rows[("router", "min_quality=0.85")]
    large = rows[("single:large", "lambda=0")]
    assert router["cost_per_1k"] < 0.8 * large["cost_per_1k"]
    assert router["quality"] > large["quality"] - 0.05
    assert rows[("router", "lambda=0")]["quality"] > rows[("random", "lambda=0")]["quality"] + 0.1
    assert 0 < result["fronts"]["router"]["auc_ratio"] <= 1.0 + 1e-9
    assert set(result["targets"]) == {"quality_at_40pct_cost", "front_dominates", "early_regret"}
    # Every choice was made on the training folds: a prior kind and widths from the grids.
    for fc in result["fold_choices"]:
        assert fc["prior_kind"] in ("logreg", "knn")
        assert fc["alpha"] in (0.0, 0.5) and fc["cold_alpha"] in (0.0, 0.5)
    text = kf.format_report(result)
    assert "router" in text and "Targets:" in text


def test_kfold_objective_is_the_gateways_reward(data: QualityData) -> None:
    kf = kfold_module()
    from routing.reward import RewardBounds, reward

    bounds = RewardBounds(300.0, 5e-3)
    energy = np.tile([10.0, 50.0, 900.0], (len(data), 1))
    replay = kf.KfoldReplay(data, energy, kf.KfoldConfig(k=3, mu=0.3), bounds)
    rng = np.random.default_rng(2)
    Q, E, C = rng.random((5, 3)), rng.uniform(0, 600, (5, 3)), rng.uniform(0, 1e-2, (5, 3))
    for setting in (kf.Setting("lambda", 0.4), kf.Setting("mu", 2.0)):
        mu = 2.0 if setting.kind == "mu" else 0.3
        lam = setting.lam()
        want = np.array(
            [
                [reward(q, e, c, lam, mu, bounds) for q, e, c in zip(*r, strict=True)]
                for r in zip(Q, E, C, strict=True)
            ]
        )
        np.testing.assert_allclose(replay._value(Q, E, C, setting), want)
