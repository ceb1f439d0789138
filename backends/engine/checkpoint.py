"""Write random-weight llama / qwen2 checkpoints in the Hugging Face layout, without downloads.

The folder holds config.json, generation_config.json, model.safetensors, tokenizer.json (a
byte-level BPE trained here on a built-in paragraph, padded with `<reserved_N>` entries up to the
model's vocab size), tokenizer_config.json with a chat template, and a README saying the weights
are random. Both this engine and `transformers` load it, which is what the tests compare.

Sizes (llama, tied embeddings):
- "test": hidden 64, 2 layers, 4 heads / 2 kv heads, vocab 384 (~0.1M params) for unit tests.
- "small": hidden 384, 6 layers, 6 heads / 2 kv heads, vocab 640 (~9.7M params): the default
  `tiny-random-llama` of `make run`; loads in well under a second on CPU.
- "100m": hidden 768, 12 layers, 12 heads / 4 kv heads, intermediate 2048, vocab 32000
  (~100M params) for the engine benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

Family = Literal["llama", "qwen2"]


@dataclass(frozen=True, slots=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int = 4096


SIZES: dict[str, Shape] = {
    "test": Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=384),
    # vocab: what CORPUS trains to, so a random model samples real pieces of text, not padding.
    "small": Shape(hidden=384, layers=6, heads=6, kv_heads=2, intermediate=1024, vocab=640),
    "100m": Shape(hidden=768, layers=12, heads=12, kv_heads=4, intermediate=2048, vocab=32000),
}

CORPUS = """\
Greengate routes each request to the model that answers it well for the least energy. A small
model on a local CPU can reply to a greeting; a hard question about physics, law or code may need
a larger model on a GPU far away. The router learns from feedback which member is good enough,
and the meter measures joules per token. Energy, carbon and cost are reported per tenant, per key
and per model, every hour of every day. The quick brown fox jumps over the lazy dog while the
engine batches sixty-four prompts into one step, pages the attention cache into blocks of sixteen
tokens, shares the prefix of a long system prompt, and streams each new token to its client.
Hello! How are you today? I am fine, thank you. What is the weather like in Paris, London, Berlin
or Tokyo? Please write a short poem about the sea, a list of numbers 0 1 2 3 4 5 6 7 8 9 10 100,
and a Python function: def add(a, b): return a + b. JSON looks like {"name": "value", "n": 3}.
"""

LLAMA_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

LLAMA_TEMPLATE = """\
{{- bos_token }}
{%- if tools %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{{- 'You can call these functions; answer with JSON {"name": ..., "parameters": ...}.\\n\\n' }}
{%- for tool in tools %}
{{- tool | tojson(indent=4) + '\\n\\n' }}
{%- endfor %}
{{- '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
{%- if message['role'] == 'tool' %}
{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}
{%- else %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
{%- endif %}
{%- if message.get('tool_calls') %}
{%- for call in message['tool_calls'] %}
{{- '{"name": "' + call['function']['name'] + '", "parameters": ' }}
{{- call['function']['arguments'] | tojson + '}' }}
{%- endfor %}
{%- else %}
{{- (message['content'] or '') | trim }}
{%- endif %}
{{- '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}
{{- messages[0]['content'] }}
{%- else %}
{{- 'You are a helpful assistant.' }}
{%- endif %}
{{- '\\n\\n# Tools\\n\\n<tools>' }}
{%- for tool in tools %}
{{- '\\n' + tool | tojson }}
{%- endfor %}
{{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0]['role'] != 'system' %}
{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if not (tools and loop.first and message['role'] == 'system') %}
{{- '<|im_start|>' + message['role'] + '\\n' }}
{%- if message.get('tool_calls') %}
{%- for call in message['tool_calls'] %}
{{- '<tool_call>\\n{"name": "' + call['function']['name'] + '", "arguments": ' }}
{{- call['function']['arguments'] | tojson + '}\\n</tool_call>' }}
{%- endfor %}
{%- else %}
{{- message['content'] or '' }}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def build_tokenizer(
    family: Family, vocab: int, corpus: Iterable[str] | None = None
) -> Tokenizer:
    """Byte-level BPE trained on `corpus` (default CORPUS); reserved entries pad it to exactly
    `vocab` ids."""
    specials = LLAMA_SPECIALS if family == "llama" else QWEN_SPECIALS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines() if corpus is None else corpus, trainer)
    size = tok.get_vocab_size()
    if size > vocab:
        raise ValueError(f"vocab {vocab} is below the trained tokenizer's {size} tokens")
    if size == vocab:
        return tok
    # Padding the BPE vocab (not added tokens) keeps tokenizer.json cheap to load at 32k ids;
    # merges never produce these entries, they only decode to their (ASCII) text.
    data = json.loads(tok.to_str())
    table = data["model"]["vocab"]
    for i in range(size, vocab):
        table[f"<reserved_{i}>"] = i
    return Tokenizer.from_str(json.dumps(data))


def hf_config(family: Family, shape: Shape, tok: Tokenizer, dtype: str) -> dict[str, Any]:
    """The checkpoint's config.json for `shape` (transformers' LlamaConfig/Qwen2Config kwargs)."""
    ids = tok.token_to_id
    common: dict[str, Any] = {
        "vocab_size": shape.vocab,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": shape.max_positions,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5 if family == "llama" else 1e-6,
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if family == "llama":
        return common | {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "head_dim": shape.hidden // shape.heads,
            "attention_bias": False,
            "mlp_bias": False,
            "rope_theta": 500000.0,
            # A short original context puts many frequencies in the scaled and blended bands,
            # so the tests exercise every branch of the llama3 formula.
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            "tie_word_embeddings": True,
            "bos_token_id": ids("<|begin_of_text|>"),
            "eos_token_id": [ids("<|end_of_text|>"), ids("<|eot_id|>")],
        }
    return common | {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": shape.layers,
        "tie_word_embeddings": False,
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": [ids("<|im_end|>"), ids("<|endoftext|>")],
    }


def _tokenizer_config(family: Family, tok: Tokenizer) -> dict[str, Any]:
    specials = LLAMA_SPECIALS if family == "llama" else QWEN_SPECIALS
    added = {
        str(tok.token_to_id(s)): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for s in specials
    }
    if family == "llama":
        tokens = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
        template = LLAMA_TEMPLATE
    else:
        tokens = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        template = QWEN_TEMPLATE
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "chat_template": template,
        **tokens,
    }


def _weights(
    family: Family, shape: Shape, seed: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    head_dim = shape.hidden // shape.heads
    q_out, kv_out = shape.heads * head_dim, shape.kv_heads * head_dim

    def linear(out: int, inp: int) -> torch.Tensor:
        # 1/sqrt(fan_in) keeps activations O(1) through the stack so logits are not flat, which
        # makes greedy argmax comparisons against the reference free of near-ties.
        return torch.randn(out, inp, generator=gen) / inp**0.5

    def norm(size: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(size, generator=gen)

    # A small embedding keeps a tied head from simply predicting the input token back.
    w: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": 0.1 * torch.randn(shape.vocab, shape.hidden, generator=gen),
        "model.norm.weight": norm(shape.hidden),
    }
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(shape.hidden)
        w[p + "post_attention_layernorm.weight"] = norm(shape.hidden)
        w[p + "self_attn.q_proj.weight"] = linear(q_out, shape.hidden)
        w[p + "self_attn.k_proj.weight"] = linear(kv_out, shape.hidden)
        w[p + "self_attn.v_proj.weight"] = linear(kv_out, shape.hidden)
        w[p + "self_attn.o_proj.weight"] = linear(shape.hidden, q_out)
        if family == "qwen2":
            for name, size in (("q", q_out), ("k", kv_out), ("v", kv_out)):
                w[p + f"self_attn.{name}_proj.bias"] = 0.1 * torch.randn(size, generator=gen)
        w[p + "mlp.gate_proj.weight"] = linear(shape.intermediate, shape.hidden)
        w[p + "mlp.up_proj.weight"] = linear(shape.intermediate, shape.hidden)
        w[p + "mlp.down_proj.weight"] = linear(shape.hidden, shape.intermediate)
    if family == "qwen2":
        w["lm_head.weight"] = linear(shape.vocab, shape.hidden)
    return {k: v.to(dtype).contiguous() for k, v in w.items()}


README = """\
# {name}

Random weights: this {family} checkpoint ({params:,} parameters) was written by
`backends.engine.checkpoint.write_tiny_checkpoint(family={family!r}, size={size!r},
seed={seed})`. Its outputs are meaningless text; it exists to exercise greengate's bundled
engine (paged KV cache, batching, sampling, chat templates) without downloading a real model.
The tokenizer is a byte-level BPE trained on a built-in paragraph, padded with `<reserved_N>`
entries to the model's vocabulary size.

Shape: {shape}
"""


def write_tiny_checkpoint(
    path: str | Path,
    family: Family = "llama",
    *,
    size: str = "test",
    seed: int = 0,
    dtype: str = "float32",
    **overrides: int,
) -> Path:
    """Write a random checkpoint of `SIZES[size]` (fields overridable, e.g. `layers=4`)."""
    if family not in ("llama", "qwen2"):
        raise ValueError(f"unknown family {family!r}")
    shape = replace(SIZES[size], **overrides)
    if shape.hidden % shape.heads or shape.heads % shape.kv_heads:
        raise ValueError("hidden must divide by heads and heads by kv_heads")
    tok = build_tokenizer(family, shape.vocab)
    weights = _weights(family, shape, seed, getattr(torch, dtype))
    params = sum(t.numel() for t in weights.values())
    readme = README.format(name=Path(path).name, family=family, params=params, size=size,
                           seed=seed, shape=json.dumps(asdict(shape)))
    return write_checkpoint(path, family, shape, tok, weights, readme=readme, dtype=dtype)


def write_checkpoint(
    path: str | Path,
    family: Family,
    shape: Shape,
    tok: Tokenizer,
    weights: dict[str, torch.Tensor],
    *,
    readme: str,
    dtype: str = "float32",
) -> Path:
    """Write a Hugging Face folder from HF-named tensors (random or trained) and a tokenizer."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = hf_config(family, shape, tok, dtype)
    tensors = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in weights.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(folder / "tokenizer.json"))
    _dump(folder / "config.json", config)
    _dump(folder / "tokenizer_config.json", _tokenizer_config(family, tok))
    _dump(
        folder / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "do_sample": False,
        },
    )
    (folder / "README.md").write_text(readme)
    return folder


def _dump(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
