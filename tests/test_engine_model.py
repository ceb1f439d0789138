"""The paged-KV model against transformers (float32): every step shape the scheduler can produce.

Each `check_*` takes the device so tests/test_engine_cuda.py reruns the same checks on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from backends.engine.attention import AttentionMetadata
from backends.engine.attention_cuda import select_attention
from backends.engine.checkpoint import Family, write_tiny_checkpoint
from backends.engine.config import ModelConfig
from backends.engine.kv_cache import KVCache, kv_budget_bytes
from backends.engine.loader import load_model
from backends.engine.runner import RunItem
from tests.engine_support import (
    ATOL,
    FAMILIES,
    Pager,
    checkpoint,
    greedy_generate,
    make_runner,
    random_prompt,
    reference_greedy,
    reference_logits,
)


def _close(ours: torch.Tensor, ref: torch.Tensor, atol: float) -> None:
    diff = (ours.cpu() - ref).abs().max().item()
    assert diff < atol, f"max abs diff {diff:.3g} >= {atol}"


def check_flat_prefill(family: Family, device: str, atol: float = ATOL) -> None:
    path = checkpoint(family)
    runner = make_runner(path, device=device)
    pager = Pager(runner.kv.num_blocks, runner.kv.block_size)
    vocab = runner.model.config.vocab_size
    prompts = [random_prompt(n, vocab, seed=n) for n in (5, 17, 1, 9)]
    items = [RunItem(p, 0, pager.table(i, len(p)), 1) for i, p in enumerate(prompts)]
    logits = runner.run(items)
    assert logits.shape == (len(prompts), vocab)
    for row, prompt in enumerate(prompts):
        _close(logits[row], reference_logits(path, prompt)[-1], atol)


def check_chunked_prefill_then_decode(family: Family, device: str, atol: float = ATOL) -> None:
    path = checkpoint(family)
    runner = make_runner(path, device=device)
    pager = Pager(runner.kv.num_blocks, runner.kv.block_size, seed=1)
    tokens = random_prompt(23, runner.model.config.vocab_size, seed=7)
    ref = reference_logits(path, tokens)
    start = 0
    for chunk in (7, 6, 10):
        last = start + chunk == len(tokens)
        table = pager.table(0, start + chunk)
        item = RunItem(tokens[start : start + chunk], start, table, int(last))
        out = runner.run([item])
        assert out.shape[0] == int(last)
        start += chunk
    _close(out[0], ref[-1], atol)
    for _ in range(5):
        nxt = int(out[0].argmax())
        tokens.append(nxt)
        out = runner.run([RunItem([nxt], len(tokens) - 1, pager.table(0, len(tokens)), 1)])
        _close(out[0], reference_logits(path, tokens)[-1], atol)


def check_mixed_step(family: Family, device: str, atol: float = ATOL) -> None:
    """Decodes of two sequences, a middle chunk (no sample) and a final chunk in one step."""
    path = checkpoint(family)
    runner = make_runner(path, device=device)
    pager = Pager(runner.kv.num_blocks, runner.kv.block_size, seed=2)
    vocab = runner.model.config.vocab_size
    a, b = random_prompt(9, vocab, 1), random_prompt(14, vocab, 2)
    c, d = random_prompt(30, vocab, 3), random_prompt(11, vocab, 4)
    runner.run(
        [
            RunItem(a, 0, pager.table(0, len(a)), 1),
            RunItem(b, 0, pager.table(1, len(b)), 1),
            RunItem(c[:12], 0, pager.table(2, 12), 0),
            RunItem(d[:5], 0, pager.table(3, 5), 0),
        ]
    )
    a_next, b_next = 17, 42
    items = [
        RunItem(c[12:20], 12, pager.table(2, 20), 0),  # middle chunk: attends, no logits
        RunItem([a_next], len(a), pager.table(0, len(a) + 1), 1),
        RunItem(d[5:], 5, pager.table(3, len(d)), 1),
        RunItem([b_next], len(b), pager.table(1, len(b) + 1), 1),
    ]
    logits = runner.run(items)
    assert logits.shape[0] == 3
    _close(logits[0], reference_logits(path, [*a, a_next])[-1], atol)
    _close(logits[1], reference_logits(path, d)[-1], atol)
    _close(logits[2], reference_logits(path, [*b, b_next])[-1], atol)
    rest = runner.run([RunItem(c[20:], 20, pager.table(2, len(c)), 1)])
    _close(rest[0], reference_logits(path, c)[-1], atol)


def check_shuffled_and_reversed_tables(family: Family, device: str, atol: float = ATOL) -> None:
    path = checkpoint(family)
    runner = make_runner(path, num_blocks=40, device=device)
    prompt = random_prompt(37, runner.model.config.vocab_size, seed=11)
    table = list(range(39, 29, -1))  # descending, non-contiguous with every other test's use
    logits = runner.run([RunItem(prompt, 0, table, 1)])
    _close(logits[0], reference_logits(path, prompt)[-1], atol)


def check_copy_blocks(family: Family, device: str, atol: float = ATOL) -> None:
    """A copy-on-write duplicate of a sequence's blocks continues it exactly."""
    path = checkpoint(family)
    runner = make_runner(path, device=device)
    bs = runner.kv.block_size
    prompt = random_prompt(18, runner.model.config.vocab_size, seed=5)  # last block half full
    src = [3, 9, 4, 12, 7]
    dst = [20, 31, 25, 22, 28]
    runner.run([RunItem(prompt, 0, src, 1)])
    nxt = 99
    # Shared full blocks stay shared; only the partially filled last block is copied.
    table = src[:-1] + [dst[-1]]
    logits = runner.run([RunItem([nxt], len(prompt), table, 1)], copies=[(src[-1], dst[-1])])
    _close(logits[0], reference_logits(path, [*prompt, nxt])[-1], atol)
    runner.kv.copy_blocks(list(zip(src[:-1], dst[:-1], strict=True)))
    data = runner.kv.data
    assert torch.equal(data[:, :, :, src[:-1]], data[:, :, :, dst[:-1]])
    used = len(prompt) % bs
    assert torch.equal(data[:, :, :, src[-1], :used], data[:, :, :, dst[-1], :used])


def check_greedy_matches_generate(family: Family, device: str) -> None:
    path = checkpoint(family)
    runner = make_runner(path, device=device)
    cfg = runner.model.config
    prompts = [random_prompt(n, cfg.vocab_size, seed=100 + n) for n in (3, 11, 26, 7)]
    ours = greedy_generate(runner, prompts, 12, cfg.eos_token_ids)
    for prompt, got in zip(prompts, ours, strict=True):
        assert got == reference_greedy(path, prompt, 12)


CHECKS = [
    check_flat_prefill,
    check_chunked_prefill_then_decode,
    check_mixed_step,
    check_shuffled_and_reversed_tables,
    check_copy_blocks,
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_logits_match_transformers(check, family: Family) -> None:  # noqa: ANN001
    check(family, "cpu")


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decode_matches_generate(family: Family) -> None:
    check_greedy_matches_generate(family, "cpu")


def test_greedy_is_not_degenerate() -> None:
    # Guards the comparison above: a random model stuck on one token would prove little.
    path = checkpoint("llama")
    runner = make_runner(path)
    prompt = random_prompt(9, runner.model.config.vocab_size, seed=3)
    (out,) = greedy_generate(runner, [prompt], 16)
    assert len(set(out)) > 3


def test_config_reads_both_families() -> None:
    llama = ModelConfig.from_path(checkpoint("llama"))
    qwen = ModelConfig.from_path(checkpoint("qwen2"))
    assert llama.rope_scaling is not None and llama.tie_word_embeddings and not llama.qkv_bias
    assert qwen.rope_scaling is None and qwen.qkv_bias and not qwen.tie_word_embeddings
    assert len(llama.eos_token_ids) == 2 and llama.head_dim * llama.num_attention_heads == 64


def test_rope_parameters_form_is_read() -> None:
    raw = {
        "model_type": "llama",
        "vocab_size": 8,
        "hidden_size": 8,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 5.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    }
    cfg = ModelConfig.from_dict(raw)
    assert cfg.rope_theta == 5.0 and cfg.rope_scaling is not None
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_dict(raw | {"model_type": "gpt2"})


def test_sharded_checkpoint_loads(tmp_path) -> None:  # noqa: ANN001
    import json

    from safetensors.torch import load_file, save_file

    src = checkpoint("qwen2")
    folder = tmp_path / "sharded"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((src / name).read_bytes())
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for shard, part in (("a.safetensors", names[:half]), ("b.safetensors", names[half:])):
        save_file({n: tensors[n] for n in part}, str(folder / shard))
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a, b = load_model(src), load_model(folder)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_metadata_slots_and_groups() -> None:
    meta = AttentionMetadata.build([(5, 1, [7, 2]), (0, 3, [4]), (2, 1, [1])], block_size=4)
    assert meta.slot_mapping.tolist() == [2 * 4 + 1, 16, 17, 18, 4 + 2]
    assert meta.decode is not None and meta.prefill is not None
    assert meta.decode.tok_index.tolist() == [0, 4] and meta.prefill.tok_index.tolist() == [1, 2, 3]
    assert meta.decode.context_lens.tolist() == [6, 3]
    with pytest.raises(ValueError, match="too short"):
        AttentionMetadata.build([(4, 1, [0])], block_size=4)


def test_kv_budget_and_sizing() -> None:
    per = KVCache(2, 1, 16, 2, 16).bytes_per_block()
    assert per == 2 * 2 * 16 * 2 * 16 * 4
    kv = KVCache.from_budget(per * 10 + 5, num_layers=2, block_size=16, n_kv_heads=2, head_dim=16)
    assert kv.num_blocks == 10
    assert kv_budget_bytes("cpu", cpu_bytes=12345) == 12345
    with pytest.raises(ValueError, match="smaller than one block"):
        KVCache.from_budget(per - 1, num_layers=2, block_size=16, n_kv_heads=2, head_dim=16)


def test_select_attention_on_cpu_is_torch() -> None:
    assert select_attention("cpu").name == "torch-sdpa"


def test_bf16_forward_tracks_float32() -> None:
    path = checkpoint("llama")
    runner = make_runner(path, dtype=torch.bfloat16)
    prompt = random_prompt(20, runner.model.config.vocab_size, seed=9)
    logits = runner.run([RunItem(prompt, 0, list(range(5)), 1)])
    ref = reference_logits(path, prompt)[-1]
    # bf16 keeps ~3 significant digits; the ranking of the clear winner survives.
    assert (logits[0] - ref).abs().max().item() < 0.25 * ref.abs().max().item()
    assert int(logits[0].argmax()) == int(ref.argmax())


def test_checkpoint_readme_and_sizes(tmp_path) -> None:  # noqa: ANN001
    folder = write_tiny_checkpoint(tmp_path / "m", "llama", size="test", layers=1)
    assert "Random weights" in (folder / "README.md").read_text()
    assert ModelConfig.from_path(folder).num_hidden_layers == 1


def test_preferred_dtype() -> None:
    from backends.engine.loader import cpu_has_native_bf16, preferred_dtype

    assert preferred_dtype("cuda", torch.float16) == torch.float16
    want = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert preferred_dtype("cpu", torch.float32) == want
