"""Tokenizer and chat template of a Hugging Face model folder, without `transformers`.

The chat template is rendered with the same jinja2 settings transformers uses (sandboxed,
trim_blocks, lstrip_blocks, loopcontrols, `tojson`, `raise_exception`, `strftime_now`) so the
prompt text is identical to `AutoTokenizer.apply_chat_template(..., tokenize=False)`.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer


class Tokenizer:
    def __init__(self, path: str | Path) -> None:
        folder = Path(path)
        self._tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        cfg_file = folder / "tokenizer_config.json"
        cfg: dict[str, Any] = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        self.special_tokens: dict[str, str] = {
            key: text
            for key in ("bos_token", "eos_token", "pad_token", "unk_token")
            if (text := _token_text(cfg.get(key))) is not None
        }
        self._templates = _templates(folder, cfg)
        self.special_ids: frozenset[int] = frozenset(
            i for i, tok in self._tok.get_added_tokens_decoder().items() if tok.special
        )

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.special_tokens.get("bos_token"))

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.special_tokens.get("eos_token"))

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        # Chat templates already spell out BOS, so the default adds nothing on top.
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def detokenizer(self, skip_special_tokens: bool = True) -> Detokenizer:
        return Detokenizer(self, skip_special_tokens)

    @property
    def has_chat_template(self) -> bool:
        return bool(self._templates)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        if not self._templates:
            raise ValueError("this tokenizer has no chat template")
        name = "tool_use" if tools and "tool_use" in self._templates else "default"
        source = self._templates.get(name) or next(iter(self._templates.values()))
        return self._compile(source).render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
            **extra,
        )

    @cached_property
    def _env(self) -> ImmutableSandboxedEnvironment:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        return env

    def _compile(self, source: str) -> jinja2.Template:
        return self._env.from_string(source)


class Detokenizer:
    """Turns a growing list of token ids into text deltas.

    Byte-level tokens can end inside a multibyte UTF-8 character; the decoder then shows U+FFFD.
    A delta is only released once the text since the last release no longer ends in U+FFFD, so
    the concatenated deltas equal `decode(all ids)`. Only a short window of ids is re-decoded
    per token (from the previous release point), not the whole output.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # window start: decoding from here gives stable leading text
        self._read = 0  # ids up to here are already released as text
        self.text = ""

    def add(self, token_id: int) -> str:
        """Append one token; returns the newly completed text (possibly "")."""
        self.ids.append(token_id)
        prefix_text = self._tok.decode(self.ids[self._prefix : self._read], self._skip)
        new_text = self._tok.decode(self.ids[self._prefix :], self._skip)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Text still held back at the end of generation (a truly invalid byte sequence)."""
        prefix_text = self._tok.decode(self.ids[self._prefix : self._read], self._skip)
        new_text = self._tok.decode(self.ids[self._prefix :], self._skip)
        delta = new_text[len(prefix_text) :]
        self._prefix = self._read = len(self.ids)
        self.text += delta
        return delta


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _templates(folder: Path, cfg: dict[str, Any]) -> dict[str, str]:
    # transformers >= 4.43 may save the template as chat_template.jinja instead of in the config.
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.exists():
        return {"default": jinja_file.read_text()}
    raw = cfg.get("chat_template")
    if isinstance(raw, str):
        return {"default": raw}
    if isinstance(raw, list):
        return {item["name"]: item["template"] for item in raw}
    return {}


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)
