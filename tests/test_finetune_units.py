"""The fine-tuning service's pure parts: training-file checks (line and field named), the job
body (hyperparameters, LoRA options), and the prior shift from validation losses."""

from __future__ import annotations

import math

import orjson
import pytest

from backends.engine.finetune.job import TrainExample
from gateway import finetune_data, finetune_params
from gateway.errors import GatewayError
from gateway.finetune_service import finetune_gain
from routing.quality_prior import MemberPriorSpec, QualityPrior


def line(*messages: dict, **extra: object) -> bytes:
    return orjson.dumps({"messages": list(messages), **extra})


U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}


def fake_tokenize(messages: list[dict]) -> TrainExample:
    ids = list(range(1, 2 * len(messages) + 1))
    mask = [m["role"] == "assistant" for m in messages for _ in (0, 1)]
    return TrainExample(ids, mask)


@pytest.mark.parametrize(("raw", "where"), [
    (line(U, A) + b"\n[1, 2]", "line 2: each line must be a JSON object"),
    (line(U, A) + b"\n\n" + line({"role": "tool", "content": "x"}, A),
     "line 3, messages[0].role: role must be one of system, user, assistant"),
    (line(U), "line 1, messages: the conversation has no assistant message"),
    (line(U, {"role": "assistant", "content": 5}), "line 1, messages[1].content"),
    (line(U, {"role": "assistant", "content": "a", "weight": 2}), "messages[1].weight"),
    (line(U, {**A, "weight": 0}), "line 1, messages: the conversation has no assistant message"),
    (line(U, A, tools=[{"type": "function"}]), "line 1, tools"),
    (line(U, {**A, "tool_calls": [{"id": "x"}]}), "messages[1].tool_calls"),
    (b"\n \n", "the file holds no examples"),
    (line(U, A) + b"\n{oops", "line 2: not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_training_file_problems_name_line_and_field(raw: bytes, where: str) -> None:
    with pytest.raises(finetune_data.DataProblem) as e:
        finetune_data.load(raw, "training_file", 100, 10_000, fake_tokenize)
    assert str(e.value).startswith("training_file") and where in str(e.value)


def test_training_file_limits_and_counts() -> None:
    raw = b"\n".join([line(U, A)] * 3)
    data = finetune_data.load(raw, "training_file", 100, 10_000, fake_tokenize)
    assert len(data.examples) == 3 and data.tokens == 12 and data.targets == 6
    with pytest.raises(finetune_data.DataProblem, match="more than 2 examples"):
        finetune_data.load(raw, "training_file", 2, 10_000, fake_tokenize)
    with pytest.raises(finetune_data.DataProblem, match="12 tokens, over the limit of 11"):
        finetune_data.load(raw, "training_file", 100, 11, fake_tokenize)

    def refuses(messages: list[dict]) -> TrainExample:
        raise ValueError("the template refused it")
    with pytest.raises(finetune_data.DataProblem, match="line 1, messages: the template"):
        finetune_data.load(raw, "validation_file", 100, 100, refuses)


def test_job_body_hyperparameters_and_lora_options() -> None:
    req = finetune_params.parse({
        "model": "local", "training_file": "file-1", "suffix": "my-model", "seed": 7,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 5, "batch_size": "auto", "learning_rate_multiplier": 2}}},
        "greengate": {"rank": 4, "alpha": 8, "targets": ["q", "v"]}})
    hp = req.hyper(examples=2)
    assert (hp.n_epochs, hp.batch_size, hp.rank, hp.alpha, hp.targets) == (5, 2, 4, 8.0,
                                                                            ("q", "v"))
    assert hp.learning_rate == pytest.approx(2 * finetune_params.BASE_LEARNING_RATE)
    legacy = finetune_params.parse({"model": "m", "training_file": "f",
                                    "hyperparameters": {"n_epochs": 2}})
    assert legacy.hyper(10).n_epochs == 2 and legacy.hyper(10).batch_size == 4
    for body, param in (
            ({"model": "m"}, "training_file"),
            ({"model": "m", "training_file": "f", "method": {"type": "reinforcement"}},
             "method.type"),
            ({"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 1.5}},
             "hyperparameters.n_epochs"),
            ({"model": "m", "training_file": "f", "hyperparameters": {"epochs": 1}},
             "hyperparameters.epochs"),
            ({"model": "m", "training_file": "f", "greengate": {"targets": ["lm_head"]}},
             "greengate.targets"),
            ({"model": "m", "training_file": "f", "greengate": {"rank": 0}}, "greengate.rank"),
            ({"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 2},
              "method": {"type": "supervised", "supervised": {"hyperparameters": {
                  "n_epochs": 3}}}}, "hyperparameters"),
            ({"model": "m", "training_file": "f", "suffix": "x" * 65}, "suffix"),
            ({"model": "m", "training_file": "f", "nonsense": 1}, "nonsense")):
        with pytest.raises(GatewayError) as e:
            finetune_params.parse(body)
        assert e.value.status == 400 and e.value.param == param, (body, e.value.message)


def test_gain_from_validation_losses() -> None:
    assert finetune_gain(2.0, 2.0) == 0.0
    assert finetune_gain(2.0, 1.0) == pytest.approx(1 - math.exp(-1))
    assert finetune_gain(1.0, 3.0) == -1.0  # clipped: far worse than the base
    assert finetune_gain(None, 1.0) is None and finetune_gain(1.0, float("nan")) is None


def test_prior_of_an_adapter_moves_with_its_gain() -> None:
    specs = {"base": MemberPriorSpec(model="base-model", declared={"mmlu": 0.6}),
             "better": MemberPriorSpec(model="better", like="base", gain=0.5),
             "worse": MemberPriorSpec(model="worse", like="base", gain=-0.5),
             "unvalidated": MemberPriorSpec(model="u", like="base")}
    est = QualityPrior(None, specs).estimate(list(specs), None, None)
    assert est["better"].mean == pytest.approx(0.6 + 0.5 * 0.4)
    assert est["worse"].mean == pytest.approx(0.6 - 0.5 * 0.6)
    assert est["unvalidated"].mean == pytest.approx(0.6)
    assert est["better"].sigma > est["base"].sigma
    assert est["better"].source == "like:base finetune:+0.500"
