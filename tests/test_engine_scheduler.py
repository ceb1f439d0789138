"""Scheduler: token budget, decode-first chunked prefill, priorities, preemption, invariants."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from backends.engine.block_manager import BlockManager
from backends.engine.scheduler import QueueFull, Scheduler
from backends.engine.sequence import SeqStatus, Sequence
from backends.engine.step import ItemKind, SchedulerOutput, SeqOutput, StepOutput

BS = 4


def make(
    num_blocks: int = 64, *, max_num_seqs: int = 8, token_budget: int = 64, max_waiting: int = 64,
    chunked_prefill: bool = True, prefix_caching: bool = True,
) -> Scheduler:
    bm = BlockManager(num_blocks, BS, prefix_caching=prefix_caching)
    return Scheduler(bm, max_num_seqs=max_num_seqs, token_budget=token_budget,
                     max_waiting=max_waiting, chunked_prefill=chunked_prefill)


def seq(seq_id: int, n_prompt: int, *, max_tokens: int = 4, priority: int = 0,
        arrival: float | None = None, base: int = 0) -> Sequence:
    return Sequence(seq_id=seq_id, prompt_ids=[base + i for i in range(n_prompt)],
                    max_tokens=max_tokens, priority=priority,
                    arrival=float(seq_id) if arrival is None else arrival)


def pairs(plan: SchedulerOutput) -> list[tuple[Sequence, int]]:
    return [(it.seq, it.num_tokens) for it in plan.items]


def outputs(plan: SchedulerOutput, tokens: dict[int, list[int]]) -> StepOutput:
    return StepOutput({sid: SeqOutput(list(t)) for sid, t in tokens.items()})


def check_invariants(
    sched: Scheduler, plan: SchedulerOutput | None = None, was_running: set[int] | None = None,
) -> None:
    bm = sched.blocks
    holders: Counter[int] = Counter()
    for s in sched.running:
        assert s.status is SeqStatus.RUNNING
        assert len(set(s.block_table)) == len(s.block_table)
        holders.update(s.block_table)
    for s in sched.waiting:
        assert s.status is SeqStatus.WAITING
        assert s.block_table == [] and s.num_computed == 0
    for b in range(bm.num_blocks):
        assert bm.ref_count(b) == holders[b], f"block {b}"
        if holders[b] > 1:
            assert bm.hash_of(b) is not None, f"block {b} shared but not a cached full block"
    used = sum(1 for b in range(bm.num_blocks) if bm.ref_count(b) > 0)
    assert bm.num_free_blocks + used == bm.num_blocks
    assert len(sched.running) <= sched.max_num_seqs
    if plan is None:
        return
    assert plan.num_tokens <= sched.token_budget
    seen = [it.seq.seq_id for it in plan.items]
    assert len(seen) == len(set(seen))
    decode_done = False
    for it in plan.items:
        s, n = it.seq, it.num_tokens
        assert s.status is SeqStatus.RUNNING
        assert 1 <= n <= s.num_remaining
        assert len(s.block_table) * BS >= s.num_computed + n + it.num_draft_slots
        if it.kind is ItemKind.VERIFY:
            assert n == 1 and it.num_draft_slots >= 1
            assert len(s.output_ids) + 1 + it.num_draft_slots <= s.max_tokens
        is_decode = s.num_remaining == 1 and s.seq_id in (was_running or set())
        if not is_decode:
            decode_done = True
        else:
            assert not decode_done, "a decode was scheduled after a prefill"
    for p in plan.preempted:
        assert p.status is SeqStatus.WAITING and p not in [it.seq for it in plan.items]


def step(sched: Scheduler, token: int | dict[int, int] = 7) -> SchedulerOutput:
    was_running = {s.seq_id for s in sched.running}
    plan = sched.schedule()
    check_invariants(sched, plan, was_running)
    sampling = [it.seq for it in plan.sampling()]
    tokens = {s.seq_id: [token if isinstance(token, int) else token[s.seq_id]]
              for s in sampling}
    sched.complete(plan, outputs(plan, tokens))
    for s in sampling:
        if len(s.output_ids) >= s.max_tokens:
            sched.finish(s, "length")
    check_invariants(sched)
    return plan


def drain(sched: Scheduler, max_steps: int = 1000) -> list[SchedulerOutput]:
    plans = []
    while sched.has_work:
        plans.append(step(sched))
        assert len(plans) < max_steps
    assert sched.blocks.num_free_blocks == sched.blocks.num_blocks
    return plans


def test_single_sequence_prefill_then_decode() -> None:
    sched = make()
    s = seq(1, 5, max_tokens=3)
    sched.add(s)
    plans = drain(sched)
    assert [[(x.seq_id, n) for x, n in pairs(p)] for p in plans] == [[(1, 5)], [(1, 1)], [(1, 1)]]
    assert s.output_ids == [7, 7, 7]
    assert s.status is SeqStatus.FINISHED and s.finish_reason == "length"


def test_long_prompt_is_split_across_steps_and_budget_holds() -> None:
    sched = make(token_budget=4)
    s = seq(1, 10, max_tokens=2)
    sched.add(s)
    chunks, outputs = [], []
    while sched.has_work:
        chunks += [n for _, n in pairs(step(sched))]
        outputs.append(len(s.output_ids))
    assert chunks == [4, 4, 2, 1]
    assert outputs == [0, 0, 1, 2]  # only the last chunk samples
    assert sched.blocks.num_free_blocks == sched.blocks.num_blocks


def test_decodes_go_first_then_prefill_chunks_fill_the_budget() -> None:
    sched = make(token_budget=6)
    a, b = seq(1, 3, max_tokens=5), seq(2, 3, max_tokens=5)
    sched.add(a)
    sched.add(b)
    step(sched)  # both prefilled (3 + 3)
    c = seq(3, 20, max_tokens=1, base=100)
    sched.add(c)
    plan = step(sched)
    assert [(s.seq_id, n) for s, n in pairs(plan)] == [(1, 1), (2, 1), (3, 4)]
    plan = step(sched)
    assert [(s.seq_id, n) for s, n in pairs(plan)] == [(1, 1), (2, 1), (3, 4)]
    drain(sched)


def test_budget_smaller_than_number_of_decodes() -> None:
    sched = make(token_budget=2)
    seqs = [seq(i, 1, max_tokens=3, base=10 * i) for i in range(3)]
    for s in seqs:
        sched.add(s)
    plans = drain(sched)
    assert all(p.num_tokens <= 2 for p in plans)
    assert all(len(s.output_ids) == 3 for s in seqs)


def test_max_num_seqs_caps_running() -> None:
    sched = make(max_num_seqs=2)
    seqs = [seq(i, 3, max_tokens=2, base=10 * i) for i in range(3)]
    for s in seqs:
        sched.add(s)
    plan = step(sched)
    assert [s.seq_id for s, _ in pairs(plan)] == [0, 1]
    assert [s.seq_id for s in sched.waiting] == [2]
    drain(sched)


def test_fcfs_within_priority_and_priorities_first() -> None:
    sched = make(max_num_seqs=1)
    order = []
    specs = [(1, 1, 0.0), (2, 0, 1.0), (3, 1, 2.0), (4, 0, 3.0), (5, -1, 4.0)]
    for sid, prio, t in specs:
        sched.add(seq(sid, 2, max_tokens=1, priority=prio, arrival=t, base=10 * sid))
    while sched.has_work:
        plan = step(sched)
        order += [s.seq_id for s, _ in pairs(plan)]
    assert order == [5, 2, 4, 1, 3]
    assert sched.blocks.num_free_blocks == sched.blocks.num_blocks


def test_no_chunking_waits_for_a_budget_that_fits_and_rejects_oversized() -> None:
    sched = make(token_budget=8, chunked_prefill=False)
    with pytest.raises(ValueError):
        sched.add(seq(9, 9))
    sched.add(seq(1, 5, max_tokens=3))
    sched.add(seq(2, 5, max_tokens=3, base=50))
    plan = step(sched)
    assert [(s.seq_id, n) for s, n in pairs(plan)] == [(1, 5)]  # 5 + 5 > 8: whole or nothing
    plan = step(sched)
    assert [(s.seq_id, n) for s, n in pairs(plan)] == [(1, 1), (2, 5)]
    drain(sched)


def test_queue_full_and_too_long_sequence() -> None:
    sched = make(num_blocks=4, max_waiting=2)
    sched.add(seq(1, 2))
    sched.add(seq(2, 2))
    with pytest.raises(QueueFull):
        sched.add(seq(3, 2))
    step(sched)  # both admitted: the queue has room again
    with pytest.raises(ValueError):
        sched.add(seq(4, 14, max_tokens=3))  # 17 tokens > 4 blocks of 4
    sched.add(seq(5, 2))
    drain(sched)


def test_abort_frees_blocks_of_running_and_waiting() -> None:
    sched = make(max_num_seqs=1)
    a, b = seq(1, 6), seq(2, 6, base=40)
    sched.add(a)
    sched.add(b)
    step(sched)
    assert a.block_table
    assert sched.abort(1) is a
    assert a.status is SeqStatus.FINISHED and a.finish_reason == "abort"
    assert a.block_table == []
    assert sched.abort(2) is b and b.finish_reason == "abort"
    assert sched.abort(3) is None
    assert not sched.has_work
    assert sched.blocks.num_free_blocks == sched.blocks.num_blocks


def test_abort_between_schedule_and_complete_is_ignored_by_complete() -> None:
    sched = make()
    a = seq(1, 3)
    sched.add(a)
    plan = sched.schedule()
    sched.abort(1)
    sched.complete(plan, outputs(plan, {1: [5]}))
    assert a.output_ids == [] and a.block_table == []
    assert sched.blocks.num_free_blocks == sched.blocks.num_blocks


def test_preemption_by_recompute_keeps_outputs_and_resumes() -> None:
    # 4 blocks of 4: two 6-token prompts fill all 8 slots' worth of blocks.
    sched = make(num_blocks=4, prefix_caching=False)
    a, b = seq(1, 6, max_tokens=8), seq(2, 6, max_tokens=8, base=50)
    sched.add(a)
    sched.add(b)
    preempted: list[Sequence] = []
    while not preempted:
        preempted = step(sched).preempted
    assert preempted == [b]  # same priority: the later arrival goes
    assert sched.num_preemptions == 1
    assert b.status is SeqStatus.WAITING and b.output_ids and b.num_computed == 0
    kept = list(b.output_ids)
    while b.status is SeqStatus.WAITING:
        plan = step(sched)
    # Resumed: prompt and kept output recomputed in one prefill item.
    assert [(s, n) for s, n in pairs(plan) if s is b] == [(b, 6 + len(kept))]
    assert b.output_ids[: len(kept)] == kept
    drain(sched)
    assert len(a.output_ids) == 8 and len(b.output_ids) == 8


def test_preemption_victim_is_lowest_priority() -> None:
    sched = make(num_blocks=4, prefix_caching=False)
    low = seq(1, 6, max_tokens=8, priority=1)
    high = seq(2, 6, max_tokens=8, priority=0, base=50)
    sched.add(low)
    sched.add(high)
    preempted: list[Sequence] = []
    while not preempted:
        preempted = step(sched).preempted
    assert preempted == [low]
    drain(sched)
    assert len(low.output_ids) == 8 and len(high.output_ids) == 8


def test_resumed_sequence_hits_its_own_cached_blocks() -> None:
    sched = make(num_blocks=5)
    a, b = seq(1, 8, max_tokens=8), seq(2, 8, max_tokens=8, base=50)
    sched.add(a)
    sched.add(b)
    while not step(sched).preempted:
        pass
    hits_before = sched.blocks.hit_tokens
    drain(sched)
    assert sched.blocks.hit_tokens > hits_before


@pytest.mark.parametrize("seed", range(12))
def test_random_workload_keeps_invariants(seed: int) -> None:
    rng = random.Random(seed)
    sched = make(num_blocks=rng.choice([6, 10, 24]), max_num_seqs=rng.choice([2, 4, 8]),
                 token_budget=rng.choice([3, 8, 32]), max_waiting=6,
                 prefix_caching=rng.random() < 0.8)
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(0, 10))] for _ in range(3)]
    planner = RandomPlanner(rng) if rng.random() < 0.6 else None
    next_id = 0
    finished: list[Sequence] = []
    for t in range(300):
        if t < 200 and rng.random() < 0.3:
            prompt = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 6))]
            s = Sequence(seq_id=next_id, prompt_ids=prompt, max_tokens=rng.randrange(1, 8),
                         priority=rng.randrange(3), arrival=float(t))
            next_id += 1
            try:
                sched.add(s)
            except (QueueFull, ValueError):
                continue
        live = [*sched.running, *sched.waiting]
        if live and rng.random() < 0.05:
            victim = rng.choice(live)
            sched.abort(victim.seq_id)
            finished.append(victim)
        was_running = {s.seq_id for s in sched.running}
        plan = sched.schedule(planner)
        check_invariants(sched, plan, was_running)
        gained = {}
        for it in plan.sampling():
            # A proposer may fill fewer drafts than slots; any prefix of them may be accepted.
            drafts = rng.randrange(it.num_draft_slots + 1)
            accepted = rng.randrange(drafts + 1)
            gained[it.seq.seq_id] = SeqOutput(
                [rng.randrange(50) for _ in range(accepted + 1)], num_draft=drafts,
                num_rejected=drafts - accepted)
        sched.complete(plan, StepOutput(gained))
        sampling = [it.seq for it in plan.sampling()]
        for s in sampling:
            # Random early stops stand in for eos / stop strings.
            if len(s.output_ids) >= s.max_tokens or rng.random() < 0.1:
                sched.finish(s, "length")
                finished.append(s)
        check_invariants(sched)
        if t >= 200 and not sched.has_work:
            break
    assert not sched.has_work
    assert sched.blocks.num_free_blocks == sched.blocks.num_blocks
    assert all(s.status is SeqStatus.FINISHED and not s.block_table for s in finished)
    assert all(len(s.output_ids) <= s.max_tokens for s in finished)
    for s in finished:
        assert s.num_draft_computed == 0


class RandomPlanner:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def plan(self, decoding: list[Sequence], budget: int) -> dict[int, int]:
        return {s.seq_id: self.rng.randrange(0, 5) for s in decoding}
