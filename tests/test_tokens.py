"""routing/tokens.py: tiktoken's encodings from its own cache, seeded from greengate's copies,
never downloaded."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken.load

from routing import tokens


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    def no_network(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to fetch {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    tokens.encoding.cache_clear()
    # tiktoken keeps built encodings per name; a fresh build must read the file again.
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    yield tmp_path
    tokens.encoding.cache_clear()


@pytest.mark.parametrize(("model", "name"), [("gpt-4o-mini", "o200k_base"),
                                             ("gpt-3.5-turbo", "cl100k_base")])
def test_encodings_load_from_an_empty_cache_without_a_download(
    empty_cache: Path, model: str, name: str
) -> None:
    enc = tokens.encoding(model)
    assert enc.name == name
    url = tokens._BPE_FILES[name]
    seeded = empty_cache / hashlib.sha1(url.encode()).hexdigest()
    assert seeded.is_file() and seeded.stat().st_size > 500_000
    assert tokens.count_text("hello world", model) == 2


def test_a_cache_already_holding_the_file_is_left_alone(empty_cache: Path) -> None:
    tokens.encoding("gpt-3.5-turbo")
    seeded = next(empty_cache.iterdir())
    mtime = seeded.stat().st_mtime_ns
    tokens.encoding.cache_clear()
    tokens.seed_tiktoken_cache("cl100k_base")
    assert seeded.stat().st_mtime_ns == mtime and len(list(empty_cache.iterdir())) == 1


def test_an_unwritable_cache_is_a_clear_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(RuntimeError, match="TIKTOKEN_CACHE_DIR"):
        tokens.seed_tiktoken_cache("cl100k_base")
