"""The engine model checks again on a GPU (torch path and the selected CUDA decode kernel).

Skipped when no CUDA device is present. The reference stays on CPU in float32; GPU float32
kernels reorder reductions, hence the looser tolerance.
"""

from __future__ import annotations

import random

import pytest
import torch

from backends.engine.attention import AttentionMetadata, torch_group_attention
from backends.engine.attention_cuda import select_attention
from backends.engine.checkpoint import Family
from tests.engine_support import FAMILIES, checkpoint, greedy_generate, make_runner, random_prompt
from tests.engine_support import reference_greedy as _reference_greedy
from tests.test_engine_model import CHECKS, check_greedy_matches_generate

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: GPU engine checks need one"
)
GPU_ATOL = 1e-3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_logits_match_transformers_on_cuda(check, family: Family) -> None:  # noqa: ANN001
    check(family, "cuda", GPU_ATOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decode_matches_generate_on_cuda(family: Family) -> None:
    check_greedy_matches_generate(family, "cuda")


@pytest.mark.parametrize("family", FAMILIES)
def test_selected_cuda_attention_greedy(family: Family) -> None:
    attention = select_attention("cuda")
    path = checkpoint(family)
    runner = make_runner(path, device="cuda", attention=attention)
    cfg = runner.model.config
    prompts = [random_prompt(n, cfg.vocab_size, seed=200 + n) for n in (4, 19, 33)]
    ours = greedy_generate(runner, prompts, 10, cfg.eos_token_ids)
    assert ours == [_reference_greedy(path, p, 10) for p in prompts], attention.name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "block"), [(12, 4, 64, 16), (6, 6, 24, 8)]
)
def test_decode_kernel_matches_torch(
    dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int, block: int
) -> None:
    attention = select_attention("cuda")
    if attention.name == "torch-sdpa":
        pytest.skip("neither triton nor flash_attn is installed")
    rng = random.Random(0)
    free = list(range(128))
    rng.shuffle(free)
    seqs = []
    for n in (1, 7, 16, 17, 90):
        seqs.append((n - 1, 1, [free.pop() for _ in range(-(-n // block))]))
    meta = AttentionMetadata.build(seqs, block, "cuda")
    assert meta.decode is not None
    layer = torch.randn(2, kv_heads, 128, block, head_dim, device="cuda").to(dtype)
    q = torch.randn(len(seqs), heads, head_dim, device="cuda").to(dtype)
    got = attention.decode(q, layer, meta.decode)
    want = torch_group_attention(q, layer, meta.decode)
    tol = 1e-3 if dtype == torch.float32 else 2e-2
    assert (got.float() - want.float()).abs().max().item() < tol


@pytest.mark.parametrize("method", ["ngram", "self", "draft"])
def test_speculative_greedy_identical_on_cuda(method: str) -> None:
    from backends.engine.engine import Engine, EngineConfig
    from backends.engine.sampler import SamplingParams
    from backends.engine.spec import SpeculativeConfig

    path = checkpoint("llama")
    spec = SpeculativeConfig(method, max_k=4, adaptive=False, ngram_min=1, exit_layer=1,
                             draft_model=str(path) if method == "draft" else None)
    prompts = [random_prompt(n, 300, seed=n) + [5, 6, 7] * 3 for n in (3, 11, 19)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outs = []
    for s in (None, spec):
        engine = Engine.from_checkpoint(path, EngineConfig(device="cuda", dtype="float32",
                                                           num_blocks=64, speculative=s))
        try:
            outs.append([c.token_ids for c in engine.generate_batch_sync(prompts, params)])
        finally:
            engine.shutdown()
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert outs[0] == outs[1]


def test_lora_mixed_batch_and_in_step_training_on_cuda(tmp_path) -> None:  # noqa: ANN001
    """Adapters mixed with the base in one CUDA batch give what each gets alone, and a job
    trained inside the steps (CUDA's default) leaves the base's outputs identical."""
    from backends.engine.engine import Engine, EngineConfig
    from backends.engine.finetune.job import LoraHyperparameters, TrainingJobSpec
    from backends.engine.lora import save_adapter
    from backends.engine.sampler import SamplingParams
    from tests.test_engine_lora import Listener, mapping_examples, random_adapter

    path = checkpoint("llama")
    engine = Engine.from_checkpoint(path, EngineConfig(device="cuda", dtype="float32",
                                                       num_blocks=256))
    try:
        assert not engine._overlap
        save_adapter(tmp_path / "a", random_adapter(engine.runner.model.cpu().cuda(), seed=3))
        engine.load_adapter("a", tmp_path / "a")
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
        prompts = [random_prompt(n, 300, seed=n) for n in (5, 9, 30, 41)]
        adapters = ["a", None, "a", None]
        alone = [engine.generate_sync(p, params, adapter=a).token_ids
                 for p, a in zip(prompts, adapters, strict=True)]
        together = engine.generate_batch_sync(prompts, params, adapters=adapters)
        assert [c.token_ids for c in together] == alone
        base = [c.token_ids for c in engine.generate_batch_sync(prompts, params)]
        listener = Listener()
        engine.start_training(TrainingJobSpec(
            "cuda", "ft:cuda", mapping_examples(16, 300, 0),
            hyper=LoraHyperparameters(n_epochs=30), checkpoint_dir=tmp_path / "job"), listener)
        during = [c.token_ids for c in engine.generate_batch_sync(prompts, params)]
        assert during == base and engine.stats()["training_tokens"] > 0
    finally:
        engine.shutdown()
