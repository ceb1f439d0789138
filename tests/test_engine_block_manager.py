"""BlockManager: free list, ref counts, prefix cache, LRU reuse, copy-on-write."""

from __future__ import annotations

import pytest

from backends.engine import block_manager as bm_mod
from backends.engine.block_manager import BlockManager, NoFreeBlocks
from backends.engine.sequence import Sequence

BS = 4


def seq(seq_id: int, prompt: list[int], max_tokens: int = 8) -> Sequence:
    return Sequence(seq_id=seq_id, prompt_ids=list(prompt), max_tokens=max_tokens)


def run_prefill(bm: BlockManager, s: Sequence, n: int | None = None) -> list[tuple[int, int]]:
    """What the scheduler does around one step: allocate, 'compute', commit."""
    n = s.num_tokens - bm.cached_prefix_tokens(s) if n is None else n
    copies = bm.allocate(s, n)
    s.num_computed += n
    bm.commit(s)
    return copies


def decode(bm: BlockManager, s: Sequence, token: int) -> None:
    s.output_ids.append(token)
    bm.allocate(s, 1)
    s.num_computed += 1
    bm.commit(s)


def assert_all_free(bm: BlockManager) -> None:
    assert bm.num_free_blocks == bm.num_blocks
    assert all(bm.ref_count(b) == 0 for b in range(bm.num_blocks))


def test_allocate_and_free_track_free_list_and_usage() -> None:
    bm = BlockManager(8, BS)
    s = seq(1, list(range(10)))
    assert bm.can_allocate(s, 10)
    assert bm.allocate(s, 10) == []
    assert len(s.block_table) == 3 and len(set(s.block_table)) == 3
    assert bm.num_free_blocks == 5
    assert bm.usage() == pytest.approx(3 / 8)
    assert bm.slot(s, 5) == s.block_table[1] * BS + 1
    # 12 allocated slots for 10 known tokens: computed or being computed, they are in use
    assert bm.kv_waste([s]) == pytest.approx(2 / 12)
    s.num_computed = 10
    assert bm.kv_waste([s]) == pytest.approx(2 / 12)
    bm.free(s)
    assert s.block_table == [] and s.num_computed == 0
    assert_all_free(bm)
    assert bm.kv_waste([s]) == 0.0


def test_growth_by_decode_adds_a_block_at_the_boundary() -> None:
    bm = BlockManager(4, BS)
    s = seq(1, [1, 2, 3])
    run_prefill(bm, s)
    assert len(s.block_table) == 1
    decode(bm, s, 9)  # position 3: still block 0
    assert len(s.block_table) == 1
    decode(bm, s, 9)  # position 4: needs block 1
    assert len(s.block_table) == 2
    bm.free(s)
    assert_all_free(bm)


def test_no_free_blocks() -> None:
    bm = BlockManager(2, BS)
    a = seq(1, list(range(8)))
    run_prefill(bm, a)
    b = seq(2, [100, 101])
    assert not bm.can_allocate(b, 2)
    with pytest.raises(NoFreeBlocks):
        bm.allocate(b, 2)
    assert b.block_table == []
    bm.free(a)
    assert bm.can_allocate(b, 2)
    bm.allocate(b, 2)
    bm.free(b)
    assert_all_free(bm)


def test_prefix_hit_shares_full_blocks_and_leaves_partial_block_private() -> None:
    bm = BlockManager(16, BS)
    prefix = list(range(100, 108))  # two full blocks
    a = seq(1, prefix + [1, 2])
    run_prefill(bm, a)
    b = seq(2, prefix + [3, 4, 5])
    assert bm.cached_prefix_tokens(b) == 8
    copies = bm.allocate(b, b.num_tokens - 8)
    assert copies == []
    assert b.num_computed == 8 and b.num_cached == 8
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]
    assert [bm.ref_count(x) for x in b.block_table[:2]] == [2, 2]
    assert bm.hit_tokens == 8
    bm.free(a)
    bm.free(b)
    assert_all_free(bm)


def test_prefix_lookup_stops_at_first_mismatching_block() -> None:
    bm = BlockManager(16, BS)
    a = seq(1, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    run_prefill(bm, a)
    # Second block differs, third block equal to a's: chaining makes it a miss too.
    b = seq(2, [1, 2, 3, 4, 0, 0, 0, 0, 9])
    assert bm.cached_prefix_tokens(b) == 4
    bm.free(a)
    bm.free(b)
    assert_all_free(bm)


def test_aligned_prompt_hit_recomputes_last_token_with_copy_on_write() -> None:
    bm = BlockManager(8, BS)
    prompt = list(range(8))
    a = seq(1, prompt)
    run_prefill(bm, a)
    b = seq(2, prompt)
    # Everything is cached, but the last token's logits are needed.
    assert bm.cached_prefix_tokens(b) == 7
    free_before = bm.num_free_blocks
    copies = bm.allocate(b, 1)
    assert b.num_computed == 7
    assert len(copies) == 1
    src, dst = copies[0]
    assert src == a.block_table[1] and dst == b.block_table[1]
    assert b.block_table[0] == a.block_table[0]
    assert bm.ref_count(src) == 1 and bm.ref_count(dst) == 1
    assert bm.ref_count(a.block_table[0]) == 2
    assert bm.num_free_blocks == free_before - 1
    b.num_computed += 1
    bm.commit(b)  # the copy is not registered twice under one hash
    assert bm.hash_of(dst) is None
    bm.free(a)
    bm.free(b)
    assert_all_free(bm)


def test_aligned_hit_on_unreferenced_cached_block_still_copies() -> None:
    """Cached blocks are immutable: another sequence may attach to one in the same step."""
    bm = BlockManager(8, BS)
    prompt = list(range(8))
    a = seq(1, prompt)
    run_prefill(bm, a)
    table = list(a.block_table)
    bm.free(a)
    assert_all_free(bm)
    b = seq(2, prompt)
    copies = bm.allocate(b, 1)
    assert copies == [(table[1], b.block_table[1])]
    assert b.block_table[0] == table[0] and b.block_table[1] != table[1]
    assert bm.ref_count(table[1]) == 0 and bm.hash_of(table[1]) is not None  # still cached
    c = seq(3, prompt)
    assert bm.cached_prefix_tokens(c) == 7
    bm.free(b)
    assert_all_free(bm)


def test_can_allocate_counts_copy_on_write_and_free_hits() -> None:
    bm = BlockManager(3, BS)
    prompt = list(range(8))
    a = seq(1, prompt)
    run_prefill(bm, a)
    b = seq(2, prompt)
    # b shares a's two blocks and copies the last: one free block is enough.
    assert bm.can_allocate(b, 1)
    c = seq(3, [50, 51])
    bm.allocate(c, 2)
    assert not bm.can_allocate(b, 1)
    a_last = a.block_table[1]
    bm.free(a)
    bm.free(c)
    # Both hits now sit in the free list: taking them plus the copy uses all three blocks.
    assert bm.can_allocate(b, 1)
    assert bm.allocate(b, 1) == [(a_last, b.block_table[1])]
    assert bm.num_free_blocks == 1  # the copied-from block is back, still cached
    bm.free(b)
    assert_all_free(bm)


def test_cached_free_blocks_are_reused_in_lru_order_after_plain_ones() -> None:
    bm = BlockManager(4, BS)
    a = seq(1, [1, 1, 1, 1, 2])  # block 0 full (cached), block 1 partial
    run_prefill(bm, a)
    b = seq(2, [3, 3, 3, 3, 4])
    run_prefill(bm, b)
    a_full, b_full = a.block_table[0], b.block_table[0]
    bm.free(a)
    bm.free(b)
    assert bm.num_cached_blocks == 2
    # Two plain blocks are free; taking them must not evict anything.
    c = seq(3, [9] * 8)
    bm.allocate(c, 8)
    assert bm.num_cached_blocks == 2
    assert a_full not in c.block_table and b_full not in c.block_table
    # The next block evicts the least recently freed cached block: a's.
    d = seq(4, [7])
    bm.allocate(d, 1)
    assert d.block_table == [a_full]
    assert bm.cached_prefix_tokens(seq(5, [1, 1, 1, 1, 5])) == 0
    assert bm.cached_prefix_tokens(seq(6, [3, 3, 3, 3, 5])) == 4
    for s in (c, d):
        bm.free(s)
    assert_all_free(bm)


def test_hash_collision_is_detected_by_token_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm_mod, "block_hash", lambda prev, tokens, extra=None: 42)
    bm = BlockManager(8, BS)
    a = seq(1, [1, 2, 3, 4, 5])
    run_prefill(bm, a)
    b = seq(2, [9, 9, 9, 9, 5])  # same (forced) hash, different tokens
    assert bm.cached_prefix_tokens(b) == 0
    run_prefill(bm, b)
    assert b.num_cached == 0
    assert set(a.block_table).isdisjoint(b.block_table)
    c = seq(3, [1, 2, 3, 4, 6])  # a genuine hit still works
    assert bm.cached_prefix_tokens(c) == 4
    for s in (a, b):
        bm.free(s)
    assert_all_free(bm)


def test_prefix_caching_off_never_shares() -> None:
    bm = BlockManager(8, BS, prefix_caching=False)
    a = seq(1, list(range(9)))
    run_prefill(bm, a)
    b = seq(2, list(range(9)))
    assert bm.cached_prefix_tokens(b) == 0
    run_prefill(bm, b)
    assert set(a.block_table).isdisjoint(b.block_table)
    assert bm.num_cached_blocks == 0
    bm.free(a)
    bm.free(b)
    assert_all_free(bm)


def test_output_tokens_are_cached_too() -> None:
    """A preempted sequence recomputes prompt + output; both hit the cache."""
    bm = BlockManager(8, BS)
    a = seq(1, [1, 2, 3])
    run_prefill(bm, a)
    for t in (4, 5, 6):
        decode(bm, a, t)
    # KV of all six tokens computed; only the first block is full
    assert a.num_computed == 6
    saved = list(a.output_ids)
    bm.free(a)
    a.output_ids = saved
    assert bm.cached_prefix_tokens(a) == 4
    bm.free(a)
    assert_all_free(bm)


def test_sequence_token_slices() -> None:
    s = seq(1, [1, 2, 3])
    s.output_ids = [4, 5]
    for start in range(6):
        for end in range(start, 6):
            assert s.tokens(start, end) == s.token_ids[start:end]
