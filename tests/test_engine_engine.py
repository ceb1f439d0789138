"""Engine: step loop, asyncio face, stops, energy; greedy outputs identical to transformers.

Two kinds of runner. A fake one stores token ids in its paged "KV" slots and derives the next
token from the context it reads back through the block table, so any paging, prefix-cache or
copy-on-write mistake changes the output; it is instant, which makes the scheduling tests cheap.
The real one is helper A's model on tiny random llama/qwen2 checkpoints, compared with
transformers' generate.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from backends.engine.engine import (
    Completion,
    Engine,
    EngineClosed,
    EngineConfig,
    QueueFull,
    TextStopper,
    TokenEvent,
)
from backends.engine.runner import RunItem
from backends.engine.sampler import SamplingParams
from telemetry.meters import EnergyMeter, MeterError
from tests.engine_support import StepMeter, checkpoint, random_prompt, reference_greedy

GREEDY = SamplingParams(temperature=0.0, max_tokens=8)

# --- the fake runner -------------------------------------------------------------------------


def next_token(context: Sequence[int], vocab: int) -> int:
    return (sum((i + 1) * t for i, t in enumerate(context)) + 7 * len(context)) % vocab


def expected(prompt: Sequence[int], n: int, vocab: int) -> list[int]:
    ctx = list(prompt)
    for _ in range(n):
        ctx.append(next_token(ctx, vocab))
    return ctx[len(prompt):]


class FakeKV:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.slots: list[int | None] = [None] * (num_blocks * block_size)


class FakeRunner:
    device = torch.device("cpu")

    def __init__(self, num_blocks: int = 64, block_size: int = 4, vocab: int = 50) -> None:
        self.kv = FakeKV(num_blocks, block_size)
        self.vocab = vocab
        self.gate: threading.Event | None = None
        self.steps: list[list[tuple[int, int, bool]]] = []

    def run(self, items: Sequence[RunItem], copies: Sequence[tuple[int, int]] = (),
            num_layers: int | None = None) -> torch.Tensor:
        if self.gate is not None:
            assert self.gate.wait(10)
        bs, slots = self.kv.block_size, self.kv.slots
        self.steps.append([(it.start_pos, len(it.token_ids), bool(it.num_logits))
                           for it in items])
        for src, dst in copies:
            slots[dst * bs:(dst + 1) * bs] = slots[src * bs:(src + 1) * bs]
        for it in items:
            for k, tok in enumerate(it.token_ids):
                pos = it.start_pos + k
                slots[it.block_table[pos // bs] * bs + pos % bs] = tok
        rows = []
        for it in items:
            last = it.start_pos + len(it.token_ids)
            for end in range(last - it.num_logits + 1, last + 1):
                ctx = [slots[it.block_table[p // bs] * bs + p % bs] for p in range(end)]
                assert None not in ctx, "read a KV slot that was never written"
                rows.append(next_token(ctx, self.vocab))  # type: ignore[arg-type]
        logits = torch.full((len(rows), self.vocab), -10.0)
        for i, t in enumerate(rows):
            logits[i, t] = 10.0
        return logits


@pytest.fixture
def fake_engine() -> Iterator[Any]:
    engines: list[Engine] = []

    def make(*, num_blocks: int = 64, block_size: int = 4, eos: Sequence[int] = (),
             meter: EnergyMeter | None = None, **cfg: Any) -> Engine:
        runner = FakeRunner(num_blocks, block_size)
        engine = Engine(runner, config=EngineConfig(block_size=block_size, **cfg),
                        eos_token_ids=eos, meter=meter, vocab_size=runner.vocab,
                        max_model_len=256)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


async def collect(stream: Any) -> list[TokenEvent]:
    return [ev async for ev in stream]


# --- step logic on the fake runner ------------------------------------------------------------


async def test_concurrent_requests_decode_through_paged_kv(fake_engine: Any) -> None:
    engine = fake_engine(token_budget=16)
    prompts = [random_prompt(n, 50, seed=n) for n in (1, 3, 9, 17, 30)]
    results = await asyncio.gather(*(collect(engine.generate(p, GREEDY)) for p in prompts))
    for prompt, events in zip(prompts, results, strict=True):
        assert [e.token_id for e in events] == expected(prompt, 8, 50)
        assert [e.finish_reason for e in events] == [None] * 7 + ["length"]
        assert events[-1].prompt_tokens == len(prompt)
        assert events[-1].completion_tokens == 8
        assert events[-1].joules is None and events[-1].energy_source == "none"
    assert max(sum(n for _, n, _ in s) for s in engine.runner.steps) <= 16


def test_prefix_cache_and_copy_on_write_keep_contexts_exact(fake_engine: Any) -> None:
    engine = fake_engine(num_blocks=64)
    shared = random_prompt(16, 50, seed=1)  # four full blocks
    prompts = [shared, shared + [3], shared + [4, 5], shared]
    first = engine.generate_batch_sync(prompts, GREEDY)
    second = engine.generate_batch_sync(prompts, GREEDY)
    for p, a, b in zip(prompts, first, second, strict=True):
        assert a.token_ids == b.token_ids == expected(p, 8, 50)
    stats = engine.stats()
    assert stats["prefix_cache_hit_tokens"] >= 3 * 15
    assert second[0].cached_tokens == 15  # aligned prompt: the last token is recomputed


def test_chunked_prefill_splits_long_prompts(fake_engine: Any) -> None:
    engine = fake_engine(token_budget=5)
    prompts = [random_prompt(23, 50, seed=2), random_prompt(7, 50, seed=3)]
    out = engine.generate_batch_sync(prompts, GREEDY)
    for p, c in zip(prompts, out, strict=True):
        assert c.token_ids == expected(p, 8, 50)
    assert all(sum(n for _, n, _ in s) <= 5 for s in engine.runner.steps)
    assert any(n == 5 and not sample for s in engine.runner.steps for _, n, sample in s)


def test_preemption_recomputes_and_keeps_outputs(fake_engine: Any) -> None:
    engine = fake_engine(num_blocks=12, prefix_caching=False)
    prompts = [random_prompt(10, 50, seed=s) for s in range(4)]
    params = SamplingParams(temperature=0.0, max_tokens=20)
    out = engine.generate_batch_sync(prompts, params)
    for p, c in zip(prompts, out, strict=True):
        assert c.token_ids == expected(p, 20, 50)
    assert engine.stats()["preemptions"] > 0


def test_priorities_order_admission(fake_engine: Any) -> None:
    engine = fake_engine(max_num_seqs=1)
    engine.runner.gate = threading.Event()
    done: list[int] = []
    lock = threading.Lock()

    def sink(i: int) -> Any:
        def emit(item: Any) -> None:
            if isinstance(item, TokenEvent) and item.finish_reason:
                with lock:
                    done.append(i)
        return emit

    params = SamplingParams(temperature=0.0, max_tokens=2)
    engine._submit([1, 2], params, 0, sink(0))  # running, stuck at the gate
    for i, prio in ((1, 5), (2, 1), (3, 5), (4, 1)):
        engine._submit([i, 9], params, prio, sink(i))
    engine.runner.gate.set()
    for _ in range(200):
        if len(done) == 5:
            break
        threading.Event().wait(0.02)
    assert done == [0, 2, 4, 1, 3]


async def test_queue_full_is_immediate(fake_engine: Any) -> None:
    engine = fake_engine(max_waiting=2, max_num_seqs=1)
    engine.runner.gate = threading.Event()
    streams = [engine.generate([1, 2, 3], GREEDY)]
    for _ in range(100):  # until the first one is admitted and stuck in its step
        if engine.stats()["running"] == 1:
            break
        await asyncio.sleep(0.01)
    streams += [engine.generate([4, 5], GREEDY), engine.generate([6], GREEDY)]
    with pytest.raises(QueueFull):
        engine.generate([7], GREEDY)
    engine.runner.gate.set()
    results = await asyncio.gather(*(collect(s) for s in streams))
    assert all(r[-1].finish_reason == "length" for r in results)


async def test_closing_the_stream_aborts_and_frees_blocks(fake_engine: Any) -> None:
    engine = fake_engine()
    stream = engine.generate(list(range(10)), SamplingParams(temperature=0.0, max_tokens=200))
    first = await stream.__anext__()
    assert first.finish_reason is None
    await stream.aclose()
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


async def test_cancelled_consumer_aborts(fake_engine: Any) -> None:
    engine = fake_engine()
    engine.runner.gate = threading.Event()
    task = asyncio.create_task(collect(engine.generate([1, 2, 3], GREEDY)))
    for _ in range(100):
        if engine.stats()["running"] == 1:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.stats()["running"] == 0
    engine.runner.gate.set()
    out = await collect(engine.generate([1, 2, 3], GREEDY))  # the engine carries on
    assert [e.token_id for e in out] == expected([1, 2, 3], 8, 50)


def test_eos_and_stop_token_ids(fake_engine: Any) -> None:
    prompt = [1, 2, 3]
    full = expected(prompt, 8, 50)
    engine = fake_engine(eos=[full[3]])
    c = engine.generate_sync(prompt, GREEDY)
    assert c.token_ids == full[:4] and c.finish_reason == "stop"
    c = engine.generate_sync(prompt, SamplingParams(temperature=0.0, max_tokens=8,
                                                    ignore_eos=True))
    assert c.token_ids == full and c.finish_reason == "length"
    c = engine.generate_sync(prompt, SamplingParams(temperature=0.0, max_tokens=8,
                                                    ignore_eos=True, stop_token_ids=[full[1]]))
    assert c.token_ids == full[:2] and c.finish_reason == "stop"


def test_energy_is_shared_by_tokens(fake_engine: Any) -> None:
    engine = fake_engine(meter=StepMeter())
    prompts = [[1] * 12, [2] * 4]
    out = engine.generate_batch_sync(prompts, SamplingParams(temperature=0.0, max_tokens=3))
    steps = engine.stats()["steps"]
    assert steps == len(engine.runner.steps)
    assert all(c.energy_source == "measured:test" for c in out)
    assert sum(c.joules for c in out) == pytest.approx(0.25 * steps)  # type: ignore[misc]
    # Prefill (12 vs 4 tokens) dominates, so the long prompt carries most of the energy.
    assert out[0].joules > out[1].joules  # type: ignore[operator]


class FailingMeter(StepMeter):
    def _read_joules(self) -> float:
        if self.joules >= 1.0:
            raise MeterError("meter gone")
        return super()._read_joules()


def test_a_failed_meter_read_makes_energy_unknown_not_smaller(fake_engine: Any) -> None:
    engine = fake_engine(meter=FailingMeter())
    c = engine.generate_sync([1, 2, 3], SamplingParams(temperature=0.0, max_tokens=6))
    assert c.token_ids == expected([1, 2, 3], 6, 50)
    assert c.joules is None and c.energy_source == "measured:test"


async def test_shutdown_fails_pending_requests(fake_engine: Any) -> None:
    engine = fake_engine()
    engine.runner.gate = threading.Event()
    stream = engine.generate([1, 2, 3], GREEDY)
    waiting = engine.generate([4, 5, 6], GREEDY)
    threading.Timer(0.2, engine.runner.gate.set).start()
    await asyncio.to_thread(engine.shutdown)
    with pytest.raises(EngineClosed):
        await collect(stream)
    with pytest.raises(EngineClosed):
        await collect(waiting)
    with pytest.raises(EngineClosed):
        engine.generate([1], GREEDY)


def test_rejects_requests_that_cannot_run(fake_engine: Any) -> None:
    engine = fake_engine(num_blocks=4)
    with pytest.raises(ValueError):
        engine.generate_sync([], GREEDY)
    with pytest.raises(ValueError):
        engine.generate_sync([50], GREEDY)  # outside the vocabulary
    with pytest.raises(ValueError):
        engine.generate_sync(list(range(20)), GREEDY)  # 28 tokens > 4 blocks of 4
    with pytest.raises(ValueError):
        engine.generate_sync([1] * 256, GREEDY)  # no room left in the context


def test_text_stopper_holds_back_possible_stop_strings() -> None:
    s = TextStopper(["END", "xy"])
    assert s.push("abc E") == ("abc ", False)
    assert s.push("N") == ("", False)
    assert s.push("Dless") == ("", True)
    s = TextStopper(["END"])
    assert s.push("EN") == ("", False)
    assert s.push("X") == ("ENX", False)
    assert s.push("E") == ("", False)
    assert s.flush() == "E"
    s = TextStopper([])
    assert s.push("END") == ("END", False)


# --- the real model against transformers ------------------------------------------------------


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def ckpt(request: pytest.FixtureRequest) -> Path:
    return checkpoint(request.param)


def real_engine(path: Path, **cfg: Any) -> Engine:
    # float32: the reference comparison is token-exact, which bf16 rounding would not be.
    base: dict[str, Any] = {"device": "cpu", "dtype": "float32", "block_size": 4,
                            "num_blocks": 128}
    return Engine.from_checkpoint(path, EngineConfig(**(base | cfg)))


def check_reference(path: Path, prompts: Sequence[Sequence[int]], out: Sequence[Completion],
                    max_tokens: int) -> None:
    for p, c in zip(prompts, out, strict=True):
        ref = reference_greedy(path, p, max_tokens)
        assert c.token_ids == ref
        assert c.finish_reason == ("length" if len(ref) == max_tokens else "stop")


def prompts_of(lengths: Sequence[int], vocab: int = 384, prefix: Sequence[int] = ()) -> list[
        list[int]]:
    return [list(prefix) + random_prompt(n, vocab, seed=n) for n in lengths]


async def test_greedy_matches_transformers_concurrently(ckpt: Path) -> None:
    engine = real_engine(ckpt)
    try:
        prompts = prompts_of([1, 5, 13, 29])
        params = SamplingParams(temperature=0.0, max_tokens=10)
        results = await asyncio.gather(*(collect(engine.generate(p, params)) for p in prompts))
        out = [Completion(0, [e.token_id for e in r if e.token_id is not None], "",
                          r[-1].finish_reason, len(p), 0, [], None, "none")
               for p, r in zip(prompts, results, strict=True)]
        check_reference(ckpt, prompts, out, 10)
        assert engine.stats()["steps"] < sum(len(r) for r in results)  # batched, not serial
    finally:
        engine.shutdown()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_prefix_hits_chunked_prefill_and_preemption_match_transformers(ckpt: Path) -> None:
    shared = random_prompt(24, 384, seed=99)
    prompts = prompts_of([0, 3, 7], prefix=shared)
    params = SamplingParams(temperature=0.0, max_tokens=10)
    # Prefix cache: the second round hits the blocks the first one left behind.
    engine = real_engine(ckpt)
    try:
        first = engine.generate_batch_sync(prompts, params)
        second = engine.generate_batch_sync(prompts, params)
        check_reference(ckpt, prompts, first, 10)
        assert [c.token_ids for c in second] == [c.token_ids for c in first]
        assert engine.stats()["prefix_cache_hit_tokens"] >= 3 * 20
        assert all(c.cached_tokens >= 20 for c in second)
    finally:
        engine.shutdown()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    # Chunked prefill and preemption together: 7-token steps and too few blocks for all.
    engine = real_engine(ckpt, token_budget=7, num_blocks=16, prefix_caching=False)
    try:
        out = engine.generate_batch_sync(prompts, params)
        check_reference(ckpt, prompts, out, 10)
        assert engine.stats()["preemptions"] > 0
    finally:
        engine.shutdown()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_stop_strings_logprobs_and_seeded_sampling(ckpt: Path) -> None:
    engine = real_engine(ckpt)
    try:
        prompt = engine.tokenizer.encode("The quick brown fox")
        base = engine.generate_sync(prompt, SamplingParams(temperature=0.0, max_tokens=24,
                                                           ignore_eos=True, logprobs=2))
        assert base.text == engine.tokenizer.decode(base.token_ids)
        assert len(base.logprobs) == len(base.token_ids)
        for token, entry in zip(base.token_ids, base.logprobs, strict=True):
            assert len(entry.top) == 2
            assert entry.top[0][0] == token  # greedy: the sampled token is the best one
            assert entry.logprob == pytest.approx(entry.top[0][1])
        text = base.text
        stop = next(text[i:i + 2] for i in range(4, len(text) - 2) if text[i:i + 2].strip())
        cut = engine.generate_sync(prompt, SamplingParams(temperature=0.0, max_tokens=24,
                                                          ignore_eos=True, stop=[stop]))
        assert cut.finish_reason == "stop"
        assert cut.text == text[:text.index(stop)]
        sampled = SamplingParams(temperature=1.0, max_tokens=12, seed=1234, ignore_eos=True)
        a = engine.generate_sync(prompt, sampled)
        # Same seed inside a busy batch: identical tokens.
        others = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
        batch = engine.generate_batch_sync([prompt, prompt[:2], prompt], [others, others,
                                                                          sampled])
        assert batch[2].token_ids == a.token_ids
        b = engine.generate_sync(prompt, SamplingParams(temperature=1.0, max_tokens=12,
                                                        seed=4321, ignore_eos=True))
        assert b.token_ids != a.token_ids
    finally:
        engine.shutdown()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


async def test_abort_mid_generation_frees_blocks_on_real_model(ckpt: Path) -> None:
    engine = real_engine(ckpt)
    try:
        stream = engine.generate(list(range(1, 30)), SamplingParams(
            temperature=0.0, max_tokens=300, ignore_eos=True))
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
        stats = engine.stats()
        assert stats["running"] == 0 and stats["kv_usage"] == 0.0
    finally:
        engine.shutdown()


def test_from_checkpoint_sizes_the_kv_cache_from_its_byte_budget(ckpt: Path) -> None:
    engine = Engine.from_checkpoint(ckpt, EngineConfig(device="cpu", dtype="float32",
                                                       block_size=8, cpu_kv_bytes=1 << 20))
    try:
        assert engine.num_blocks == (1 << 20) // engine.runner.kv.bytes_per_block()
        assert engine.blocks.block_size == 8
        assert engine.num_params > 0 and engine.max_model_len == 4096
        assert engine.eos_token_ids and engine.tokenizer is not None
        stats = engine.stats()
        assert stats["kv_blocks"] == stats["kv_blocks_free"] == engine.num_blocks
    finally:
        engine.shutdown()


# --- found in review -------------------------------------------------------------------------


async def test_closing_a_stream_before_reading_it_aborts(fake_engine: Any) -> None:
    engine = fake_engine()
    stream = engine.generate(list(range(10)), SamplingParams(temperature=0.0, max_tokens=200))
    await stream.aclose()  # as a client that leaves before the first token does
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


async def test_a_bad_seed_fails_its_call_not_the_engine(
        fake_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="64 bits"):
        SamplingParams(seed=2**64)
    engine = fake_engine()

    def refuse(self: SamplingParams, device: Any = "cpu") -> None:
        raise ValueError("this generator cannot take that seed")

    with monkeypatch.context() as m:
        m.setattr(SamplingParams, "make_generator", refuse)
        with pytest.raises(ValueError):
            engine.generate([1, 2, 3], SamplingParams(temperature=1.0, seed=1))
    assert engine.stats()["waiting"] == 0
    events = await collect(engine.generate([1, 2, 3], GREEDY))
    assert [e.token_id for e in events] == expected([1, 2, 3], 8, 50)


def test_preempted_sequences_resume_without_chunked_prefill(fake_engine: Any) -> None:
    # Recompute covers prompt + outputs, more than the budget: it must still be chunked.
    engine = fake_engine(num_blocks=12, token_budget=16, chunked_prefill=False,
                         prefix_caching=False)
    prompts = [random_prompt(14, 50, seed=s) for s in range(3)]
    out = engine.generate_batch_sync(prompts, SamplingParams(temperature=0.0, max_tokens=30),
                                     timeout=30)
    for p, c in zip(prompts, out, strict=True):
        assert c.token_ids == expected(p, 30, 50)
    assert engine.stats()["preemptions"] > 0
