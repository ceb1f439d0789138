"""bench/replay.py on small synthetic outcomes: the replay's core with stand-in contexts (no
MiniLM), its data loading, and the command line end to end with the feature model stubbed."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPLAY_PY = Path(__file__).resolve().parent.parent / "bench" / "replay.py"
REQUIRED = {
    "policy",
    "mode",
    "lambda",
    "seed_count",
    "quality",
    "cost_per_1k",
    "energy_j_per_query",
    "regret_oracle",
    "regret_best_fixed",
}
TASKS = ("alpha", "beta", "gamma")
# Three fake models, a different one best on each task (probability of a correct answer).
MODELS = ("small-fast", "mid", "gpt-4-1106-preview")
P_CORRECT = {"alpha": (0.1, 0.3, 0.95), "beta": (0.2, 0.95, 0.3), "gamma": (0.95, 0.2, 0.3)}
COST = (1e-4, 5e-4, 2e-3)
ENERGY = (10.0, 40.0, 200.0)


@pytest.fixture(scope="module")
def replay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("greengate_bench_replay", REPLAY_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def synthetic(replay: ModuleType, per_task: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts, tasks, quality = [], [], []
    for t in TASKS:
        for i in range(per_task):
            prompts.append(f"{t} question {i}")
            tasks.append(t)
            quality.append([float(rng.random() < p) for p in P_CORRECT[t]])
    n = len(prompts)
    table = replay.OutcomeTable(
        MODELS,
        tuple(prompts),
        tuple(tasks),
        np.array(quality),
        np.tile(COST, (n, 1)) * rng.uniform(0.8, 1.2, (n, len(MODELS))),
        np.tile(ENERGY, (n, 1)) * rng.uniform(0.8, 1.2, (n, len(MODELS))),
    )
    return table, stand_in_contexts(prompts)


def stand_in_contexts(prompts: Sequence[str]) -> np.ndarray:
    """Cheap stand-in for the FeatureExtractor: bias + one-hot of the task word."""
    return np.array([[1.0, *(float(p.startswith(t)) for t in TASKS)] for p in prompts])


def by_key(rows: list[dict]) -> dict[tuple[str, str, float], dict]:
    return {(r["policy"], r["mode"], r["lambda"]): r for r in rows}


@pytest.fixture(scope="module")
def result(replay: ModuleType):
    table, contexts = synthetic(replay)
    config = replay.ReplayConfig(lambdas=(0.0, 0.5), mus=(0.0,), seeds=3, early=20, jobs=1)
    rep = replay.Replay(table, contexts, config, layout="test")
    return rep, config, rep.run()


def test_rows_have_the_required_keys_and_are_json(result) -> None:
    rep, config, rows = result
    json.loads(json.dumps(rows))
    for r in rows:
        assert set(r) >= REQUIRED, REQUIRED - set(r)
        assert r["mode"] in {"cold", "warm", "baseline"}
        assert r["seed_count"] == config.seeds
    keys = by_key(rows)
    for algorithm in config.algorithms:
        for mode in config.modes:
            for lam in config.lambdas:
                assert (algorithm, mode, lam) in keys
    for name in ("oracle", "random", *(f"single:{m}" for m in MODELS)):
        assert (name, "baseline", 0.0) in keys


def test_oracle_has_no_regret_and_beats_everyone(result) -> None:
    _, config, rows = result
    keys = by_key(rows)
    for lam in config.lambdas:
        oracle = keys[("oracle", "baseline", lam)]
        assert oracle["regret_oracle"] == pytest.approx(0.0, abs=1e-12)
        assert oracle["regret_best_fixed"] <= 1e-12
        for r in rows:
            if r["lambda"] == lam:
                assert r["regret_oracle"] >= -1e-12
                assert r["reward"] <= oracle["reward"] + 1e-12


def test_learned_policies_beat_random(result) -> None:
    _, _, rows = result
    keys = by_key(rows)
    random_q = keys[("random", "baseline", 0.0)]["quality"]
    best_single = max(keys[(f"single:{m}", "baseline", 0.0)]["quality"] for m in MODELS)
    for mode in ("cold", "warm"):
        lin = keys[("linucb", mode, 0.0)]
        assert lin["quality"] > random_q + 0.15
        # Each task has another best model, so a contextual router beats every single one.
        assert lin["quality"] > best_single
        assert keys[("lints", mode, 0.0)]["quality"] > random_q + 0.1
    assert keys[("egreedy", "warm", 0.0)]["quality"] > random_q + 0.1


def test_warm_start_helps_early(result) -> None:
    _, config, rows = result
    keys = by_key(rows)
    for algorithm in ("linucb", "lints"):
        cold, warm = keys[(algorithm, "cold", 0.0)], keys[(algorithm, "warm", 0.0)]
        assert warm["early_regret_oracle"] <= cold["early_regret_oracle"] + 1e-9
        assert warm["early_quality"] >= cold["early_quality"] - 1e-9


def test_lambda_buys_energy_with_quality(result) -> None:
    _, _, rows = result
    keys = by_key(rows)
    green, plain = keys[("linucb", "warm", 0.5)], keys[("linucb", "warm", 0.0)]
    assert green["energy_j_per_query"] < plain["energy_j_per_query"]
    assert (
        keys[("oracle", "baseline", 0.5)]["energy_j_per_query"]
        <= keys[("oracle", "baseline", 0.0)]["energy_j_per_query"]
    )


def test_warm_and_cold_see_the_same_held_out_rows(replay: ModuleType) -> None:
    table, contexts = synthetic(replay, per_task=10)
    rep = replay.Replay(table, contexts, replay.ReplayConfig(seeds=2), layout="test")
    for seed in (0, 1):
        sd = rep.seed_data(seed)
        assert not set(sd.eval_idx.tolist()) & set(sd.prior_idx.tolist())
        assert len(sd.eval_idx) + len(sd.prior_idx) == len(table)
        assert set(sd.priors) == set(MODELS)
        mean_cost = table.cost[sd.eval_idx].mean(axis=0)
        assert [c.expected_cost_usd for c in sd.candidates] == pytest.approx(mean_cost)
    assert rep.seed_data(0).eval_idx.tolist() != rep.seed_data(1).eval_idx.tolist()


def test_parallel_runs_match_serial(replay: ModuleType) -> None:
    table, contexts = synthetic(replay, per_task=15)
    config = replay.ReplayConfig(lambdas=(0.2,), seeds=1, jobs=1)
    serial = replay.Replay(table, contexts, config, layout="test").run()
    forked = replay.Replay(
        table, contexts, replay.ReplayConfig(lambdas=(0.2,), seeds=1, jobs=2), layout="test"
    ).run()
    assert serial == forked


def write_routerbench_csv(path: Path) -> None:
    models = ["gpt-4-1106-preview", "mistralai/mistral-7b-chat"]
    header = [
        "",
        "sample_id",
        "prompt",
        "eval_name",
        *models,
        *(f"{m}|model_response" for m in models),
        *(f"{m}|total_cost" for m in models),
        "oracle_model_to_route_to",
    ]
    rows = [
        [
            "0",
            "t.1",
            "['What is 2+2?']",
            "toy",
            "1.0",
            "0.0",
            "['The answer is four, because two plus two makes four.']",
            "['5']",
            "0.003",
            "0.0001",
            "gpt-4-1106-preview",
        ],
        [
            "1",
            "t.2",
            "Name a colour.",
            "toy",
            "1.0",
            "1.0",
            "['Blue']",
            "",
            "0.002",
            "0.0002",
            "mistralai/mistral-7b-chat",
        ],
        ["2", "t.3", "Broken row", "toy", "", "1.0", "['x']", "['y']", "0.1", "0.1", ""],
    ]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_load_table_counts_answer_tokens(replay: ModuleType, tmp_path: Path) -> None:
    from routing.tokens import count_text

    p = tmp_path / "toy_train.csv"
    write_routerbench_csv(p)
    table, notes = replay.load_table([p])
    assert len(table) == 2  # the row with an empty score is skipped, as load_outcomes does
    g, m = table.models.index("gpt-4-1106-preview"), table.models.index("mistralai/mistral-7b-chat")
    jg, jm = replay.j_per_output_token(table.models[g]), replay.j_per_output_token(table.models[m])
    answer = "The answer is four, because two plus two makes four."
    assert table.energy[0, g] == pytest.approx(jg * count_text(answer))
    assert table.energy[0, m] == pytest.approx(jm * count_text("5"))
    assert table.energy[1, m] == pytest.approx(jm * replay.FALLBACK_OUTPUT_TOKENS)  # no answer
    assert table.cost[0].tolist() == [0.003, 0.0001]
    assert table.quality[0].tolist() == [1.0, 0.0]
    assert jg > jm  # a bigger model spends more energy per token
    assert notes["rows_priced_by_profile"] == 0


def test_load_table_prices_routerdc_rows(replay: ModuleType, tmp_path: Path) -> None:
    from routing.tokens import count_text

    p = tmp_path / "toy_train.json"
    p.write_text(
        json.dumps(
            [
                {
                    "question": "What is the capital of France?",
                    "scores": {"mistralai/Mistral-7B-v0.1": 1.0, "meta-llama/Meta-Llama-3-8B": 0.0},
                },
                {"question": "", "scores": {"mistralai/Mistral-7B-v0.1": 1.0}},
            ]
        )
    )
    table, notes = replay.load_table([p])
    assert len(table) == 1 and table.datasets == ("toy",)
    tokens = count_text("What is the capital of France?") + replay.FALLBACK_OUTPUT_TOKENS
    assert table.cost[0] == pytest.approx(replay.OPEN_MODEL_PRICE_PER_1M * tokens / 1e6)
    assert notes["rows_priced_by_profile"] == 1


def test_command_line_end_to_end(
    replay: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class StubContexts:
        """Stands in for the MiniLM FeatureExtractor."""

        def __init__(self, clusters: int = 3, cache_dir: Path | None = None) -> None:
            self.dim, self.layout = 4, "stub"
            self.load_s = self.extract_s = 0.0
            self.cache_hits = 0
            self.training_files: list[str] = []

        def __call__(self, prompts: Sequence[str]) -> np.ndarray:
            return stand_in_contexts(prompts)

    table, _ = synthetic(replay, per_task=20)
    data = tmp_path / "synthetic_train.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "eval_name", *MODELS, *(f"{m}|total_cost" for m in MODELS)])
        for i in range(len(table)):
            w.writerow(
                [
                    table.prompts[i],
                    table.datasets[i],
                    *table.quality[i].tolist(),
                    *table.cost[i].tolist(),
                ]
            )
    monkeypatch.setattr(replay, "Contexts", StubContexts)
    out = tmp_path / "out" / "replay.json"
    assert replay.main(["--quick", "--data", str(data), "--out", str(out), "--jobs", "1"]) == 0
    rows = json.loads(out.read_text())
    assert rows and all(set(r) >= REQUIRED for r in rows)
    assert {r["lambda"] for r in rows} == set(replay.QUICK_LAMBDAS)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["bounds"]["energy_max_j"] > 0 and meta["bounds"]["cost_max_usd"] > 0
    assert meta["rows"]["evaluated_per_seed"] + meta["rows"]["prior_rows_per_seed"] == 60
    assert "gpt4_parity_at_40pct_cost" in meta["targets"]
    assert "ESTIMATED" in meta["energy_note"]
    assert out.with_suffix(".png").stat().st_size > 1000
