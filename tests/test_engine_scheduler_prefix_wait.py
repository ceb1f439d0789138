"""In-batch prefix caching: a waiting sequence whose next blocks another sequence is computing
in this step waits (bounded) for them, then hits them; the engine's greedy output is unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from backends.engine.block_manager import BlockManager
from backends.engine.engine import Engine, EngineConfig
from backends.engine.sampler import SamplingParams
from backends.engine.scheduler import Scheduler
from backends.engine.sequence import SeqStatus, Sequence
from backends.engine.step import SchedulerOutput, SeqOutput, StepOutput
from tests.engine_support import checkpoint, random_prompt, reference_greedy

BS = 4
SHARED = list(range(100, 140))  # 40 tokens: 10 full blocks


def make(*, token_budget: int = 64, wait_steps: int = 4, min_tokens: int = 8,
         prefix_caching: bool = True) -> Scheduler:
    return Scheduler(BlockManager(64, BS, prefix_caching=prefix_caching), max_num_seqs=8,
                     token_budget=token_budget, max_waiting=64, prefix_wait_steps=wait_steps,
                     prefix_wait_min_tokens=min_tokens)


def seq(seq_id: int, prompt: list[int]) -> Sequence:
    return Sequence(seq_id=seq_id, prompt_ids=list(prompt), max_tokens=4, arrival=float(seq_id))


def step(sched: Scheduler) -> SchedulerOutput:
    """Plan one step and complete it: every sequence that finished its prompt samples 7."""
    plan = sched.schedule()
    done = {it.seq.seq_id: SeqOutput([7]) for it in plan.items
            if it.seq.num_computed + it.num_tokens >= it.seq.num_tokens}
    sched.complete(plan, StepOutput(done))
    return plan


def items(plan: SchedulerOutput) -> dict[int, int]:
    return {it.seq.seq_id: it.num_tokens for it in plan.items}


def test_second_of_two_shared_prefix_requests_waits_then_hits() -> None:
    sched = make()
    a, b = seq(1, [*SHARED, 1, 2, 3]), seq(2, [*SHARED, 4, 5, 6])
    sched.add(a)
    sched.add(b)
    first = step(sched)
    # Without the wait, b would take the rest of the budget and compute the same 40 tokens.
    assert items(first) == {1: 43}
    assert b.status is SeqStatus.WAITING and sched.num_prefix_waits == 1
    second = step(sched)
    assert items(second) == {1: 1, 2: 3}  # a decodes, b computes only its own suffix
    assert b.num_cached == 40 and sched.blocks.hit_tokens == 40
    assert b.block_table[:10] == a.block_table[:10]  # the very same KV blocks


def test_no_wait_when_prefixes_differ() -> None:
    sched = make()
    a, b = seq(1, [*SHARED, 1, 2, 3]), seq(2, [999, *SHARED[1:], 4, 5, 6])
    sched.add(a)
    sched.add(b)
    assert items(step(sched)) == {1: 43, 2: 21}
    assert sched.num_prefix_waits == 0 and sched.blocks.hit_tokens == 0


def test_short_shared_part_is_not_worth_a_step() -> None:
    sched = make(min_tokens=48)  # the 40 shared tokens are below it
    sched.add(seq(1, [*SHARED, 1, 2, 3]))
    sched.add(seq(2, [*SHARED, 4, 5, 6]))
    assert items(step(sched)) == {1: 43, 2: 21}
    assert sched.num_prefix_waits == 0


def chain(cap: int) -> tuple[Scheduler, Sequence]:
    """a computes SHARED; c, behind it, SHARED + EXTRA; b, behind c, the same as c: b waits for
    a in the first step, then for c's EXTRA blocks in the second."""
    extra = list(range(200, 216))  # 4 more blocks
    sched = make(wait_steps=cap)
    a, c = seq(1, [*SHARED, 7, 8, 9]), seq(2, [*SHARED, *extra, 1, 2, 3])
    b = seq(3, [*SHARED, *extra, 4, 5, 6])
    for s in (a, c, b):
        sched.add(s)
    assert items(step(sched)) == {1: 43}
    return sched, b


def test_wait_goes_on_while_a_longer_shared_part_is_computed() -> None:
    sched, b = chain(cap=4)
    assert items(step(sched)) == {1: 1, 2: 19}  # c hits a's 40 tokens and computes EXTRA
    assert b.status is SeqStatus.WAITING
    assert items(step(sched)) == {1: 1, 2: 1, 3: 3}
    assert b.num_cached == 56 and sched.num_prefix_waits == 3


def test_wait_is_capped() -> None:
    sched, b = chain(cap=1)
    # b has waited its one step: it goes now, computing EXTRA alongside c.
    assert items(step(sched)) == {1: 1, 2: 19, 3: 19}
    assert b.num_cached == 40 and sched.num_prefix_waits == 2


def test_other_sequences_are_admitted_past_a_waiting_one() -> None:
    sched = make(token_budget=64)
    a, b = seq(1, [*SHARED, 1, 2, 3]), seq(2, [*SHARED, 4, 5, 6])
    other = seq(3, [500, 501, 502, 503, 504])
    for s in (a, b, other):
        sched.add(s)
    assert items(step(sched)) == {1: 43, 3: 5}
    assert b.status is SeqStatus.WAITING


def test_only_blocks_of_a_prefill_in_this_step_count() -> None:
    bm = BlockManager(64, BS)
    a = seq(1, [*SHARED, 1, 2, 3])
    bm.allocate(a, 8)  # a's whole prompt is pending from its first chunk on
    probe = seq(9, [*SHARED, 8, 8, 8])
    assert bm.prefix_status(probe, {1}).pending_tokens == 40
    assert bm.prefix_status(probe, {1}).pending_owner == 1
    assert bm.prefix_status(probe, set()).pending_tokens == 0  # a is not being computed
    bm.free(a)
    assert bm.prefix_status(probe, {1}).pending_tokens == 0


def test_waiting_off() -> None:
    for sched in (make(wait_steps=0), make(prefix_caching=False)):
        sched.add(seq(1, [*SHARED, 1, 2, 3]))
        sched.add(seq(2, [*SHARED, 4, 5, 6]))
        assert items(step(sched)) == {1: 43, 2: 21}
        assert sched.num_prefix_waits == 0


def test_pending_blocks_are_released_on_commit_and_free() -> None:
    sched = make()
    a = seq(1, [*SHARED, 1, 2, 3])
    sched.add(a)
    step(sched)
    probe = seq(9, [*SHARED, 8, 8, 8])
    # a committed its 10 full blocks: they are cached, none is pending any more.
    status = sched.blocks.prefix_status(probe, {1})
    assert (status.cached_tokens, status.pending_tokens) == (40, 0)
    sched.abort(1)
    assert sched.blocks.prefix_status(probe, {1}).pending_tokens == 0


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        make(wait_steps=-1)
    with pytest.raises(ValueError):
        make(min_tokens=0)


def test_engine_output_is_token_identical_with_and_without_waiting() -> None:
    path = checkpoint("llama")
    shared = random_prompt(40, 384, seed=7)  # over the default 32-token threshold
    prompts = [shared + random_prompt(n, 384, seed=n) for n in (2, 5, 3)]
    params = SamplingParams(temperature=0.0, max_tokens=6)
    runs = []
    for wait_steps in (4, 0):
        engine = Engine.from_checkpoint(path, EngineConfig(device="cpu", dtype="float32",
                                                           block_size=4, num_blocks=128))
        sched = engine.scheduler
        sched.prefix_wait_steps = wait_steps
        plan = sched.schedule

        def together(*args: Any, sched: Scheduler = sched, plan: Any = plan,
                     cv: Any = engine._cv) -> Any:
            # Called under the engine's lock: wait (releasing it) until all three are queued,
            # so they arrive together however the step thread is timed.
            cv.wait_for(lambda: len(sched.waiting) + len(sched.running) >= 3 or
                        bool(sched.running), timeout=10)
            return plan(*args)

        sched.schedule = together  # type: ignore[method-assign]
        try:
            runs.append((engine.generate_batch_sync(prompts, params),
                         engine.scheduler.num_prefix_waits))
        finally:
            engine.shutdown()
    (waited, n_waits), (plain, n_plain) = runs
    assert n_waits > 0 and n_plain == 0
    assert [c.token_ids for c in waited] == [c.token_ids for c in plain]
    assert [c.token_ids for c in waited] == [reference_greedy(path, p, 6) for p in prompts]
    # Arriving together, the later two hit the first one's 40 shared tokens only when waiting.
    assert sum(c.cached_tokens for c in waited) >= 2 * 40
    assert sum(c.cached_tokens for c in plain) == 0
