"""Tokenizer: chat templates render like transformers; incremental decoding is UTF-8 safe."""

from __future__ import annotations

import pytest

from backends.engine.checkpoint import Family
from backends.engine.tokenizer import Tokenizer
from tests.engine_support import FAMILIES, checkpoint, reference_tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "ville / 城市"}},
                "required": ["city"],
            },
        },
    }
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}],
    [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "héllo 世界 🙂"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Weather?"},
    ],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": "18C, sunny"},
    ],
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
@pytest.mark.parametrize("gen_prompt", [True, False])
def test_chat_template_matches_transformers(
    family: Family, conversation: int, tools: list | None, gen_prompt: bool
) -> None:
    path = checkpoint(family)
    messages = CONVERSATIONS[conversation]
    ours = Tokenizer(path).apply_chat_template(
        messages, add_generation_prompt=gen_prompt, tools=tools
    )
    ref = reference_tokenizer(path).apply_chat_template(
        messages, tools=tools, add_generation_prompt=gen_prompt, tokenize=False
    )
    assert ours == ref


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_decode_match_transformers(family: Family) -> None:
    path = checkpoint(family)
    tok, ref = Tokenizer(path), reference_tokenizer(path)
    text = Tokenizer(path).apply_chat_template([{"role": "user", "content": "héllo 世界 🙂"}])
    ids = tok.encode(text)
    assert ids == ref(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.eos_token_id == ref.eos_token_id
    assert tok.vocab_size == len(ref)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "text", ["héllo 世界 🙂", "plain ascii text", "🙂🙂 emoji first", "末尾の文字"]
)
def test_detokenizer_deltas_concatenate_to_decode(family: Family, text: str) -> None:
    tok = Tokenizer(checkpoint(family))
    ids = tok.encode(text)
    detok = tok.detokenizer()
    deltas = [detok.add(i) for i in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == tok.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)
    assert any(d == "" for d in deltas) or text.isascii()  # held back mid-character


def test_detokenizer_skips_special_tokens_and_flushes_broken_bytes() -> None:
    tok = Tokenizer(checkpoint("llama"))
    eot = tok.token_to_id("<|eot_id|>")
    assert eot is not None and eot in tok.special_ids
    ids = [*tok.encode("ok"), eot]
    detok = tok.detokenizer()
    assert "".join(detok.add(i) for i in ids) + detok.flush() == "ok"
    # A lone lead byte of a 4-byte character never completes; flush releases it.
    lead = tok.encode("🙂")[0]
    detok = tok.detokenizer()
    assert detok.add(lead) == ""
    assert detok.flush() == tok.decode([lead])


def test_missing_template_raises(tmp_path) -> None:  # noqa: ANN001
    src = checkpoint("qwen2")
    (tmp_path / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    tok = Tokenizer(tmp_path)
    assert not tok.has_chat_template
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
