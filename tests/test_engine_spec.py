"""Speculative decoding: proposers, the acceptance rule, adaptive k, and lossless output through
the whole engine (greedy token-identical, seeded sampling identical for deterministic drafts,
the target's distribution for sampled drafts), with every block free at the end."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from scipy.stats import chisquare

from backends.engine import sampler as sampler_mod
from backends.engine.engine import Engine, EngineConfig
from backends.engine.sampler import SamplingParams
from backends.engine.spec import (
    AdaptivePlanner,
    DraftRequest,
    NgramProposer,
    Proposal,
    RequestSpec,
    RowGroup,
    SpeculativeConfig,
    accept,
)
from backends.engine.spec import rejection as rejection_mod
from backends.engine.spec.adaptive import expected_tokens
from backends.engine.spec.cost import StepCostModel
from backends.engine.spec.ngram import lookup
from tests.engine_support import checkpoint
from tests.test_engine_engine import FakeRunner, expected, random_prompt

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


# --- n-gram lookup ------------------------------------------------------------------------


def test_ngram_takes_longest_suffix_and_latest_occurrence() -> None:
    ctx = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3]
    # suffix [2, 3] occurs at 1 and 5; the latest (5) wins; [5, 2, 3] does not occur earlier.
    assert lookup(ctx, 3, 1, 4) == [7, 8, 5]
    assert lookup([4, 5, 6, 4, 5], 4, 2, 3) == [6, 4, 5]
    assert lookup([1, 2, 3], 3, 1, 3) == []  # nothing repeats
    assert lookup([7, 7], 5, 1, 1) == [7]  # runs to the end of the context
    assert lookup([1, 2, 1], 2, 2, 2) == []  # a one-token match is below min_n


def test_ngram_proposer_reads_prompt_and_output() -> None:
    from backends.engine.sequence import Sequence as Seq

    seq = Seq(seq_id=1, prompt_ids=[10, 11, 12, 13, 10], max_tokens=8)
    seq.output_ids = [11]
    (p,) = NgramProposer(1, 3).propose([DraftRequest(seq, 3, GREEDY)])
    assert p.token_ids == [12, 13, 10] and p.probs is None


# --- the acceptance rule ------------------------------------------------------------------


def one_hot_logits(tokens: Sequence[int], vocab: int = 8) -> torch.Tensor:
    logits = torch.full((len(tokens), vocab), -5.0)
    for i, t in enumerate(tokens):
        logits[i, t] = 5.0
    return logits


def test_greedy_acceptance_prefix_then_correction_or_bonus() -> None:
    # target argmax per row: 3, 4, 5, 6
    logits = one_hot_logits([3, 4, 5, 6])
    (out,) = accept(logits, [RowGroup(GREEDY, [3, 4, 1], None, 0)])
    assert out.token_ids == [3, 4, 5] and out.num_accepted == 2 and out.num_rejected == 1
    (out,) = accept(logits, [RowGroup(GREEDY, [3, 4, 5], None, 0)])
    assert out.token_ids == [3, 4, 5, 6] and out.num_rejected == 0  # all held: bonus token
    (out,) = accept(logits, [RowGroup(GREEDY, [0, 4, 5], None, 0)])
    assert out.token_ids == [3] and out.num_accepted == 0
    # A plain decode is a group without drafts.
    outs = accept(one_hot_logits([2, 7]), [RowGroup(GREEDY), RowGroup(GREEDY)])
    assert [o.token_ids for o in outs] == [[2], [7]]


def _speculative_first_tokens(p_logits: torch.Tensor, q: torch.Tensor, trials: int,
                              seed: int) -> list[int]:
    """First emitted token of many verify steps with k = 2 drafts sampled from q."""
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(temperature=1.0, max_tokens=8)
    torch.manual_seed(seed)
    drafts = torch.stack([torch.multinomial(q[j], trials, replacement=True, generator=gen)
                          for j in range(2)], dim=1).tolist()
    # One accept() over many sequences at once, as in an engine step.
    groups = [RowGroup(params, d, q, 0) for d in drafts]
    outs = accept(p_logits.repeat(trials, 1), groups)
    return [o.token_ids[0] for o in outs]


def _chi_square_p(tokens: list[int], p: torch.Tensor) -> float:
    vocab = p.shape[0]
    observed = [tokens.count(t) for t in range(vocab)]
    probs = p.double() / p.double().sum()
    expect = (probs * len(tokens)).tolist()
    return float(chisquare(observed, expect).pvalue)


def test_rejection_sampling_reproduces_the_target_distribution(
        monkeypatch: pytest.MonkeyPatch) -> None:
    vocab, trials = 6, 6000
    gen = torch.Generator().manual_seed(3)
    p_logits = torch.randn(3, vocab, generator=gen) * 1.5
    # A draft that is confidently wrong in places, so the residual matters.
    q = torch.softmax(torch.randn(2, vocab, generator=gen) * 2.0, dim=-1)
    p0 = torch.softmax(p_logits[0], dim=-1)
    firsts = _speculative_first_tokens(p_logits, q, trials, seed=11)
    assert _chi_square_p(firsts, p0) > 1e-3
    # The same test catches a broken rule: resampling from p instead of norm(max(0, p - q)).
    monkeypatch.setattr(rejection_mod, "residual_distribution", lambda p, q: p)
    broken = _speculative_first_tokens(p_logits, q, trials, seed=11)
    assert _chi_square_p(broken, p0) < 1e-6


def test_seeded_noise_is_keyed_by_output_position() -> None:
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=4)
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    one_by_one = [accept(logits[i:i + 1], [RowGroup(params, (), None, i)])[0].token_ids[0]
                  for i in range(3)]
    # Deterministic drafts equal to what was sampled: all accepted, same tokens, plus bonus.
    (out,) = accept(logits, [RowGroup(params, one_by_one[:2], None, 0)])
    assert out.token_ids == one_by_one


# --- adaptive k -----------------------------------------------------------------------------


def _seqs(n: int) -> list[Any]:
    from backends.engine.sequence import Sequence as Seq

    return [Seq(seq_id=i, prompt_ids=[1], max_tokens=100) for i in range(n)]


def _planner(points: list[tuple[int, float]], draft_s: float, states: dict[int, RequestSpec],
             max_k: int = 8) -> AdaptivePlanner:
    return AdaptivePlanner(StepCostModel(points), lambda batches: draft_s * len(batches),
                           states.get, max_k=max_k)


def accepting(alpha_obs: int, reject_obs: int = 0) -> RequestSpec:
    st = RequestSpec(enabled=True)
    for _ in range(alpha_obs):
        st.observe(4, 4)
    for _ in range(reject_obs):
        st.observe(4, 0)
    return st


def test_planner_speculates_when_steps_are_overhead_bound() -> None:
    seqs = _seqs(2)
    states = {s.seq_id: accepting(10) for s in seqs}
    # A step costs about the same for 1 or 64 tokens (memory-bound decode): draft deep.
    plan = _planner([(1, 0.020), (64, 0.022)], 0.001, states).plan(seqs, 512)
    assert all(plan[s.seq_id] >= 4 for s in seqs)


def test_planner_turns_itself_off_when_compute_bound() -> None:
    seqs = _seqs(32)
    states = {s.seq_id: accepting(10) for s in seqs}
    # Every token costs the same (no fixed part): extra tokens only ever cost.
    plan = _planner([(1, 0.001), (512, 0.512)], 0.0005, states).plan(seqs, 512)
    assert plan == {}


def test_low_acceptance_stops_drafting_then_probes_again() -> None:
    seqs = _seqs(1)
    st = accepting(0, reject_obs=10)
    planner = _planner([(1, 0.020), (64, 0.022)], 0.004, {0: st})
    assert planner.plan(seqs, 512) == {}
    for _ in range(200):  # steps without speculation: the estimate drifts back to the prior
        st.observe(0, 0)
    assert planner.plan(seqs, 512).get(0, 0) >= 1


def test_opted_out_requests_never_get_drafts() -> None:
    seqs = _seqs(2)
    states = {0: accepting(10), 1: RequestSpec(enabled=False)}
    plan = _planner([(1, 0.020), (64, 0.022)], 0.001, states).plan(seqs, 512)
    assert 0 in plan and 1 not in plan


def test_expected_tokens() -> None:
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(1.0, 3) == 4.0
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-9


# --- the whole engine on a deterministic fake model ----------------------------------------


class OracleProposer:
    """Proposes the true continuation, corrupting some tokens: exercises acceptance, rejection
    mid-run, the bonus token and KV rollback against a model that reads its KV slots."""

    method = "oracle"

    def __init__(self, vocab: int, wrong_rate: float, seed: int = 0) -> None:
        self.vocab = vocab
        self.wrong_rate = wrong_rate
        self.rng = random.Random(seed)

    def propose(self, requests: Sequence[DraftRequest]) -> list[Proposal]:
        out = []
        for r in requests:
            true = expected(r.seq.token_ids, r.k, self.vocab)
            toks = [(t + 1) % self.vocab if self.rng.random() < self.wrong_rate else t
                    for t in true]
            out.append(Proposal(toks[: self.rng.randint(0, r.k)] if self.rng.random() < 0.2
                                else toks))
        return out

    def draft_seconds(self, batches: Sequence[int]) -> float:
        return 0.0

    def observe(self, batches: Sequence[int], seconds: float) -> None:
        pass


def fake_spec_engine(proposer: Any, *, max_k: int = 4, adaptive: bool = False,
                     num_blocks: int = 64, block_size: int = 4, **cfg: Any) -> Engine:
    runner = FakeRunner(num_blocks, block_size)
    spec = SpeculativeConfig(method="ngram", max_k=max_k, adaptive=adaptive, calibrate=False)
    return Engine(runner, config=EngineConfig(block_size=block_size, speculative=spec, **cfg),
                  vocab_size=runner.vocab, max_model_len=256, proposer=proposer)


@pytest.mark.parametrize("wrong_rate", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("max_k", [1, 3, 8])
def test_fake_model_output_identical_with_drafts(wrong_rate: float, max_k: int) -> None:
    engine = fake_spec_engine(OracleProposer(50, wrong_rate, seed=max_k), max_k=max_k,
                              token_budget=24)
    try:
        prompts = [random_prompt(n, 50, seed=n) for n in (1, 5, 9, 17, 30)]
        outs = engine.generate_batch_sync(prompts, GREEDY, speculative=[True, False] * 2 + [True])
        for p, c in zip(prompts, outs, strict=True):
            assert c.token_ids == expected(p, 24, 50)
            assert c.finish_reason == "length"
        figs = [c.speculative for c in outs]
        assert figs[1] is None and figs[3] is None  # opted out
        spec = [f for f in figs if f is not None]
        assert all(f.proposed > 0 for f in spec)
        if wrong_rate == 0.0:
            assert all(f.accepted == f.proposed for f in spec)
        if wrong_rate == 1.0:
            assert all(f.accepted == 0 for f in spec)
        # Steps produced several tokens at once only when drafts held.
        assert engine.stats()["speculative"]["verify_steps"] > 0
    finally:
        engine.shutdown()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_fake_model_preemption_in_the_middle_of_speculation() -> None:
    engine = fake_spec_engine(OracleProposer(50, 0.3, seed=1), max_k=4, num_blocks=14,
                              token_budget=32, prefix_caching=False)
    try:
        prompts = [random_prompt(10, 50, seed=s) for s in range(4)]
        params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
        outs = engine.generate_batch_sync(prompts, params)
        assert engine.stats()["preemptions"] > 0
        for p, c in zip(prompts, outs, strict=True):
            assert c.token_ids == expected(p, 30, 50)
    finally:
        engine.shutdown()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_fake_model_stops_inside_an_accepted_run() -> None:
    engine = fake_spec_engine(OracleProposer(50, 0.0), max_k=8)
    try:
        prompt = random_prompt(6, 50, seed=4)
        full = expected(prompt, 24, 50)
        stop_at = 5
        params = SamplingParams(temperature=0, max_tokens=24, stop_token_ids=(full[stop_at],))
        first = full.index(full[stop_at])
        (c,) = engine.generate_batch_sync([prompt], params)
        assert c.token_ids == full[:first + 1] and c.finish_reason == "stop"
        assert c.speculative is not None and c.speculative.proposed > 0
        # max_tokens inside a run: exactly max_tokens, never more.
        (c,) = engine.generate_batch_sync(
            [prompt], SamplingParams(temperature=0, max_tokens=7, ignore_eos=True))
        assert c.token_ids == full[:7] and c.finish_reason == "length"
    finally:
        engine.shutdown()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


# --- real (tiny, random) models -------------------------------------------------------------


def _engine(path: Path, spec: SpeculativeConfig | None, **cfg: Any) -> Engine:
    base = dict(device="cpu", dtype="float32", num_blocks=96, block_size=4, max_num_seqs=8,
                token_budget=64)
    return Engine.from_checkpoint(path, EngineConfig(**{**base, **cfg}, speculative=spec))


def _run(engine: Engine, prompts: list[list[int]], params: SamplingParams,
         speculative: Sequence[bool] | bool = True) -> list[Any]:
    try:
        return engine.generate_batch_sync(prompts, params, speculative=speculative, timeout=120)
    finally:
        engine.shutdown()
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def _prompts() -> list[list[int]]:
    shared = random_prompt(13, 300, seed=2)
    # Repetitive prompts give the n-gram proposer matches; a shared prefix gives cache hits.
    return [shared + [5, 6, 7] * 4, shared + [9], random_prompt(3, 300, seed=5),
            [11, 12, 13, 14] * 6, shared]


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    engine = _engine(checkpoint("llama"), None)
    return [c.token_ids for c in _run(engine, _prompts(), GREEDY)]


SPECS = {
    "ngram": lambda k: SpeculativeConfig("ngram", max_k=k, adaptive=False, ngram_min=1,
                                         calibrate=False),
    "self": lambda k: SpeculativeConfig("self", max_k=k, adaptive=False, exit_layer=1,
                                        calibrate=False),
    "draft-same": lambda k: SpeculativeConfig("draft", max_k=k, adaptive=False,
                                              draft_model=str(checkpoint("llama")),
                                              calibrate=False),
    "draft-other": lambda k: SpeculativeConfig("draft", max_k=k, adaptive=False,
                                               draft_model=str(checkpoint("llama", seed=1)),
                                               calibrate=False),
}


@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize("method", sorted(SPECS))
def test_greedy_identical_for_every_proposer(method: str, k: int,
                                             reference: list[list[int]]) -> None:
    engine = _engine(checkpoint("llama"), SPECS[method](k))
    mixed = [True, True, False, True, True]
    try:
        # Mixed batch: some requests speculate, some do not; some are still in prefill.
        first = engine.generate_batch_sync(_prompts(), GREEDY, speculative=mixed, timeout=120)
        hits = engine.blocks.hit_tokens
        # Again on the same engine: now the prompts' blocks come from the prefix cache.
        outs = engine.generate_batch_sync(_prompts(), GREEDY, speculative=mixed, timeout=120)
        assert engine.blocks.hit_tokens > hits
    finally:
        engine.shutdown()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert [c.token_ids for c in first] == reference
    assert [c.token_ids for c in outs] == reference
    assert outs[2].speculative is None
    figs = [c.speculative for c in outs if c.speculative is not None]
    assert sum(f.proposed for f in figs) > 0
    if method == "draft-same":
        # Draft = target: every draft holds (the upper bound), which also proves the draft's KV
        # stays in step with the target's across all-accepted steps.
        assert all(f.accepted == f.proposed for f in figs)


def test_greedy_identical_with_adaptive_k_and_calibration(reference: list[list[int]]) -> None:
    spec = SpeculativeConfig("draft", max_k=6, draft_model=str(checkpoint("llama")))
    engine = _engine(checkpoint("llama"), spec)
    assert engine.spec is not None and len(engine.spec.target_cost.points) > 1
    outs = _run(engine, _prompts(), GREEDY)
    assert [c.token_ids for c in outs] == reference


def test_greedy_identical_under_preemption_with_a_draft_model(
        reference: list[list[int]]) -> None:
    spec = SPECS["draft-other"](4)
    engine = _engine(checkpoint("llama"), spec, num_blocks=22, prefix_caching=False)
    outs = _run(engine, _prompts(), GREEDY)
    assert engine.stats()["preemptions"] > 0
    assert [c.token_ids for c in outs] == reference


def test_seeded_sampling_identical_with_ngram_drafts() -> None:
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=1234, max_tokens=20,
                            ignore_eos=True, logprobs=2)
    off = _run(_engine(checkpoint("llama"), None), _prompts(), params)
    on = _run(_engine(checkpoint("llama"), SPECS["ngram"](4)), _prompts(), params)
    assert [c.token_ids for c in on] == [c.token_ids for c in off]
    for a, b in zip(on, off, strict=True):
        for x, y in zip(a.logprobs, b.logprobs, strict=True):
            assert abs(x.logprob - y.logprob) < 1e-4
            assert [t for t, _ in x.top] == [t for t, _ in y.top]


def test_sampled_drafts_keep_the_request_reproducible() -> None:
    params = SamplingParams(temperature=1.0, seed=77, max_tokens=16, ignore_eos=True)
    runs = [_run(_engine(checkpoint("llama"), SPECS["draft-other"](3)), _prompts()[:2], params)
            for _ in range(2)]
    assert [c.token_ids for c in runs[0]] == [c.token_ids for c in runs[1]]


def test_prefix_cache_hashes_cover_accepted_tokens_only() -> None:
    engine = _engine(checkpoint("llama"), SPECS["draft-other"](8))
    try:
        prompt = random_prompt(8, 300, seed=9)
        (first,) = engine.generate_batch_sync([prompt], GREEDY)
        # The same prompt plus the answer as prompt: every cached block it hits must hold
        # exactly these tokens (a hash over a rejected draft would give wrong logits here).
        (again,) = engine.generate_batch_sync([prompt + first.token_ids[:12]], GREEDY)
        (plain,) = _run(_engine(checkpoint("llama"), None), [prompt + first.token_ids[:12]],
                        GREEDY)
        assert again.cached_tokens > 0
        assert again.token_ids == plain.token_ids
    finally:
        engine.shutdown()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_draft_model_must_share_the_vocabulary(tmp_path: Path) -> None:
    from backends.engine.checkpoint import write_tiny_checkpoint

    other = write_tiny_checkpoint(tmp_path / "v512", "llama", vocab=512)
    spec = SpeculativeConfig("draft", draft_model=str(other), calibrate=False)
    with pytest.raises(ValueError, match="vocabulary"):
        _engine(checkpoint("llama"), spec)


def test_sampler_module_keeps_its_public_names() -> None:
    assert sampler_mod.TokenLogprobs is rejection_mod.TokenLogprobs


@pytest.mark.parametrize("ngram_min", [1, 2])
def test_json_shaped_output_is_unaffected_by_short_ngram_matches(ngram_min: int) -> None:
    # Prompt lookup with a minimum match of 2 is known to corrupt tool-call JSON in an
    # incumbent engine; here every draft is verified, so the output cannot change.
    tok_json = [7, 8, 9, 8, 10, 8, 9, 11, 12, 8, 9, 8, 10, 13] * 3  # {"a": 1, "b": ...} shaped
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    (off,) = _run(_engine(checkpoint("llama"), None), [tok_json], params)
    spec = SpeculativeConfig("ngram", max_k=8, adaptive=False, ngram_min=ngram_min,
                             calibrate=False)
    (on,) = _run(_engine(checkpoint("llama"), spec), [tok_json], params)
    assert on.token_ids == off.token_ids
    assert on.speculative is not None and on.speculative.proposed > 0


def test_stop_strings_and_logprobs_exact_inside_accepted_runs() -> None:
    prompt = _prompts()[0]
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=3)
    (plain,) = _run(_engine(checkpoint("llama"), None), [prompt], greedy)
    stop = plain.text[len(plain.text) // 2:len(plain.text) // 2 + 3]
    assert stop.strip()
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=3,
                            stop=(stop,))
    (off,) = _run(_engine(checkpoint("llama"), None), [prompt], params)
    (on,) = _run(_engine(checkpoint("llama"), SPECS["draft-same"](8)), [prompt], params)
    assert on.finish_reason == off.finish_reason == "stop"
    assert on.text == off.text and stop not in on.text
    assert on.token_ids == off.token_ids
    assert on.speculative is not None and on.speculative.accepted > 0
    for x, y in zip(on.logprobs, off.logprobs, strict=True):
        assert abs(x.logprob - y.logprob) < 1e-4 and [t for t, _ in x.top] == [
            t for t, _ in y.top]


def test_ngram_index_agrees_with_the_scan_as_sequences_grow() -> None:
    from backends.engine.sequence import Sequence as Seq

    rng = random.Random(0)
    for trial in range(30):
        vocab = rng.choice([3, 5, 12])
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        seq = Seq(seq_id=trial, prompt_ids=prompt, max_tokens=200)
        proposer = NgramProposer(1 + trial % 2, 3 + trial % 3)
        for _ in range(40):
            k = rng.randrange(1, 6)
            (p,) = proposer.propose([DraftRequest(seq, k, GREEDY)])
            assert p.token_ids == lookup(seq.token_ids, k, proposer.min_n, proposer.max_n)
            seq.output_ids.extend(rng.randrange(vocab) for _ in range(rng.randrange(1, 4)))
