"""The micro-batcher's exact-text embedding cache: a repeated prompt costs no encode call and
never waits behind the queue (so `model: auto` under concurrency keeps its embedding)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from routing.embedder import MicroBatcher
from routing.features import FeatureExtractor


@pytest.fixture(scope="module")
def fx() -> FeatureExtractor:
    return FeatureExtractor.default(3, load=True)


class Recording:
    """A stand-in encoder that records every batch and answers a vector per text."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.stack([np.full(384, float(len(t)), np.float32) for t in texts])


async def test_repeated_text_is_encoded_once() -> None:
    enc = Recording()
    b = MicroBatcher(enc, cache_size=2)  # type: ignore[arg-type]
    first = await b.embed("hello there")
    again = await b.embed("hello there")
    assert enc.calls == [["hello there"]]
    assert np.array_equal(first, again) and b.cache_hits == 1
    with pytest.raises(ValueError):
        again[0] = 1.0  # shared by every hit: read-only
    await b.embed("a")
    await b.embed("bb")  # LRU of 2: "hello there" is evicted
    assert b.cached("hello there") is None and b.cached("bb") is not None
    await b.embed("hello there")
    assert enc.calls[-1] == ["hello there"]
    b.clear_cache()
    assert b.cached("bb") is None
    await b.aclose()


async def test_cache_off_encodes_every_call() -> None:
    enc = Recording()
    b = MicroBatcher(enc, cache_size=0)  # type: ignore[arg-type]
    await b.embed("same")
    await b.embed("same")
    assert enc.calls == [["same"], ["same"]]
    await b.aclose()


async def test_cached_text_skips_the_budget_queue(fx: FeatureExtractor) -> None:
    """Under a backlog the budget skips the embedding, except for a text already embedded."""
    body = {"model": "auto", "messages": [{"role": "user", "content": "Reverse a list in Python."}]}
    fx.batcher.clear_cache()
    full = await fx.extract(body, budget_ms=0.0, update_clusters=False)
    assert full.embedded
    other = {"model": "auto", "messages": [{"role": "user", "content": "Sort a dict by value."}]}
    burst = await asyncio.gather(
        fx.extract(other, budget_ms=0.0, update_clusters=False),
        *[fx.extract(other, budget_ms=0.0, update_clusters=False) for _ in range(3)],
        fx.extract(body, budget_ms=0.0, update_clusters=False))
    assert burst[0].embedded and not any(f.embedded for f in burst[1:4])  # queue too long
    assert burst[4].embedded and burst[4].task == full.task  # cached: no wait, same features


def test_gateway_embedder_runs_torch_on_one_thread(fx: FeatureExtractor) -> None:
    """Intra-op threads spin on the cores the event loop needs (90 ms CPU per request on the
    2-core host): the gateway's embedder runs every forward on one torch thread."""
    import torch

    assert fx.embedder.num_threads == 1
    fx.embedder.encode(["warm the torch thread"])
    assert fx.embedder.executor.submit(torch.get_num_threads).result() == 1
