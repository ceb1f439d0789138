"""Paged KV block allocation: free list, ref counts, prefix cache, copy-on-write. No torch.

A sequence's KV lives in fixed-size blocks listed in `seq.block_table`. Every FULL block is
identified by a chained hash `block_hash(prev_hash, tokens, adapter_id)`, so equal hashes mean equal
prefixes up to that block; a later sequence with the same prefix reuses those blocks (ref
count > 1) instead of recomputing them. A block whose ref count drops to 0 keeps its KV and
hash and stays findable until its slot is needed for something else: uncached free blocks are
handed out first, then cached ones in least-recently-freed order.

While a sequence prefills, the hashes of the full prompt blocks it is computing are known as
*pending*: a waiting sequence whose next blocks after its cached prefix are pending elsewhere
would compute the same KV a second time, so the scheduler may hold it back a step or a few
until those blocks are committed and it hits them (in-batch prefix caching).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from collections.abc import Sequence as Seq
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from backends.engine.sequence import Sequence


class NoFreeBlocks(RuntimeError):
    """Not enough free KV blocks; callers ask `can_allocate` first."""


def block_hash(prev: int | None, tokens: Seq[int], extra: object = None) -> int:
    """Chained hash of one full block. `extra` keys what else the KV depends on (the LoRA
    adapter id), so equal tokens under different weights never share a block. Module-level so
    tests can force collisions."""
    return hash((prev, tuple(tokens), extra))


@dataclass
class _Block:
    ref_count: int = 0
    hash: int | None = None
    # Kept to verify hits: a hash match alone could be a collision.
    tokens: tuple[int, ...] | None = None
    parent: int | None = None
    extra: object = None


@dataclass(frozen=True)
class _Plan:
    hits: list[int]           # cached blocks the sequence's first allocation would reuse
    hit_hashes: list[int]
    start: int                # num_computed after the hits
    new_blocks: int           # blocks to take from the free lists (incl. copy-on-write)
    free_hits: int            # hits that currently sit in the free list (taking them uses it up)


@dataclass(frozen=True)
class PrefixStatus:
    """What a waiting sequence's prompt would find: tokens in the prefix cache now, and the
    tokens right after them that another sequence is computing at this moment."""

    cached_tokens: int
    pending_tokens: int
    pending_owner: int | None  # seq_id computing the first pending block


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got "
                             f"{num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._blocks = [_Block() for _ in range(num_blocks)]
        self._free_plain: deque[int] = deque(range(num_blocks))
        # Insertion order is LRU order: the front is evicted first.
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        self._by_hash: dict[int, int] = {}
        # Hashes of each live sequence's full blocks so far; a copied block is not registered
        # under its hash, so the chain can't be rebuilt from the blocks themselves.
        self._seq_hashes: dict[int, list[int]] = {}
        # Full blocks being computed right now: hash -> the seq_id computing it, and each
        # sequence's own entries (dropped as they commit, or when the sequence is freed).
        self._pending: dict[int, int] = {}
        self._seq_pending: dict[int, list[int]] = {}
        self.hit_tokens = 0

    # --- queries -------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_plain) + len(self._free_cached)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._by_hash)

    def usage(self) -> float:
        return (self.num_blocks - self.num_free_blocks) / self.num_blocks

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    def hash_of(self, block_id: int) -> int | None:
        return self._blocks[block_id].hash

    def slot(self, seq: Sequence, pos: int) -> int:
        bs = self.block_size
        return seq.block_table[pos // bs] * bs + pos % bs

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def kv_waste(self, seqs: Iterable[Sequence]) -> float:
        """Share of allocated slots (counted per table) that no known token will fill: the
        slack at the end of each table. Slots of tokens being computed in this very step are
        in use, not waste."""
        allocated = used = 0
        for seq in seqs:
            slots = len(seq.block_table) * self.block_size
            allocated += slots
            used += min(seq.num_tokens, slots)
        return (allocated - used) / allocated if allocated else 0.0

    def cached_prefix_tokens(self, seq: Sequence) -> int:
        """`seq.num_computed` as it would be after its first allocation's prefix lookup."""
        if seq.block_table:
            return seq.num_computed
        return self._plan(seq, 0).start

    def prefix_status(self, seq: Sequence, owners: AbstractSet[int]) -> PrefixStatus:
        """For a sequence without blocks: its cached prefix, and how many tokens right after
        it are full blocks that a sequence in `owners` (other than itself) is computing. A
        pending match is by hash only: a collision costs at most a bounded wait, never KV."""
        if seq.block_table or not self.prefix_caching:
            return PrefixStatus(seq.num_computed if seq.block_table else 0, 0, None)
        hits, hashes = self._lookup(seq)
        bs = self.block_size
        cached = min(len(hits) * bs, seq.num_tokens - 1)
        pending = 0
        owner: int | None = None
        # The last known token is always recomputed, so only blocks before it can be reused.
        for _, _, h in self._chain(seq, len(hits), (seq.num_tokens - 1) // bs,
                                   hashes[-1] if hashes else None):
            who = self._pending.get(h)
            if who is None or who == seq.seq_id or who not in owners:
                break
            owner = who if owner is None else owner
            pending += bs
        return PrefixStatus(cached, pending, owner)

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        plan = self._plan(seq, num_new_tokens)
        return plan.new_blocks <= self.num_free_blocks - plan.free_hits

    # --- mutations -----------------------------------------------------------------------

    def allocate(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]]:
        """Give `seq` slots for positions [0, num_computed + num_new_tokens) (num_computed
        after any prefix hits). Returns the (src, dst) block copies to apply before writing.

        Copy-on-write needs the source and the copy at once, so an aligned prompt that hits
        all of its P blocks transiently needs P + 1 free blocks."""
        plan = self._plan(seq, num_new_tokens)
        if plan.new_blocks > self.num_free_blocks - plan.free_hits:
            raise NoFreeBlocks(f"seq {seq.seq_id} needs {plan.new_blocks} blocks, "
                               f"{self.num_free_blocks - plan.free_hits} free")
        if not seq.block_table:
            self._seq_hashes[seq.seq_id] = list(plan.hit_hashes)
            for bid in plan.hits:
                self._incref(bid)
            seq.block_table.extend(plan.hits)
            seq.num_computed = plan.start
            seq.num_cached = plan.start
            self.hit_tokens += plan.start
            if self.prefix_caching:
                self._register_pending(seq, plan.hit_hashes)
        copies = []
        first, end = seq.num_computed, seq.num_computed + num_new_tokens
        if num_new_tokens > 0:
            # Blocks already in the table that this step writes into. Only a prefix hit's last
            # block (aligned prompt, last token recomputed) can be one that is shared or cached;
            # it is copied even when no one else holds it, so a cached block's KV never changes
            # under a reader that attaches to it in the same step.
            last = min(self.blocks_needed(end), len(seq.block_table))
            for idx in range(first // self.block_size, last):
                src = seq.block_table[idx]
                if self._blocks[src].ref_count > 1 or self._blocks[src].hash is not None:
                    dst = self._take()
                    self._decref(src)
                    seq.block_table[idx] = dst
                    copies.append((src, dst))
        while len(seq.block_table) < self.blocks_needed(end):
            seq.block_table.append(self._take())
        return copies

    def commit(self, seq: Sequence) -> None:
        """Register the hashes of blocks that became full (all their KV computed)."""
        if not self.prefix_caching:
            return
        hashes = self._seq_hashes.setdefault(seq.seq_id, [])
        full = seq.num_computed // self.block_size
        if len(hashes) >= full:
            return
        chain = self._chain(seq, len(hashes), full, hashes[-1] if hashes else None)
        for idx, (block_tokens, prev, h) in enumerate(chain, start=len(hashes)):
            hashes.append(h)
            if self._pending.get(h) == seq.seq_id:
                del self._pending[h]
            bid = seq.block_table[idx]
            block = self._blocks[bid]
            # Another block may already hold this content (two sequences prefilling the same
            # prefix at once, or a copy-on-write copy): one registered copy is enough.
            if block.hash is None and h not in self._by_hash:
                block.hash, block.tokens, block.parent = h, block_tokens, prev
                block.extra = seq.adapter_id
                self._by_hash[h] = bid

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's blocks; its KV is gone, so num_computed goes back to 0."""
        # Freed tail-first so LRU eviction takes a chain's tail before the head it hangs from.
        for bid in reversed(seq.block_table):
            self._decref(bid)
        seq.block_table.clear()
        seq.num_computed = 0
        seq.num_draft_computed = 0
        self._seq_hashes.pop(seq.seq_id, None)
        self._drop_pending(seq.seq_id)

    def trim(self, seq: Sequence) -> int:
        """Release the blocks past `seq.num_computed` (slots of rejected draft tokens); returns
        how many. Those blocks were never full of computed KV, so none carries a hash."""
        keep = self.blocks_needed(seq.num_computed)
        released = 0
        while len(seq.block_table) > keep:
            self._decref(seq.block_table.pop())
            released += 1
        return released

    # --- internals -----------------------------------------------------------------------

    def _register_pending(self, seq: Sequence, hit_hashes: list[int]) -> None:
        """Record the full blocks of the sequence's known tokens past its hits, which it is
        about to compute; the first sequence to claim a hash keeps it."""
        self._drop_pending(seq.seq_id)
        mine: list[int] = []
        for _, _, h in self._chain(seq, len(hit_hashes), seq.num_tokens // self.block_size,
                                   hit_hashes[-1] if hit_hashes else None):
            if h in self._by_hash or h in self._pending:
                continue
            self._pending[h] = seq.seq_id
            mine.append(h)
        if mine:
            self._seq_pending[seq.seq_id] = mine

    def _drop_pending(self, seq_id: int) -> None:
        for h in self._seq_pending.pop(seq_id, ()):
            if self._pending.get(h) == seq_id:
                del self._pending[h]

    def _plan(self, seq: Sequence, num_new_tokens: int) -> _Plan:
        hits: list[int] = []
        hashes: list[int] = []
        start = seq.num_computed
        if not seq.block_table and self.prefix_caching:
            hits, hashes = self._lookup(seq)
            # Logits are needed for the last known token, so it is always recomputed.
            start = min(len(hits) * self.block_size, seq.num_tokens - 1)
        end = start + num_new_tokens
        table = seq.block_table or hits
        held = set(table) if not seq.block_table else set()
        free_hits = sum(1 for bid in hits if self._blocks[bid].ref_count == 0)
        new_blocks = max(0, self.blocks_needed(end) - len(table))
        if num_new_tokens > 0:
            last = min(self.blocks_needed(end), len(table))
            for idx in range(start // self.block_size, last):
                # A hit's ref count grows by one when this sequence takes it.
                block = self._blocks[table[idx]]
                refs = block.ref_count + (1 if table[idx] in held else 0)
                if refs > 1 or block.hash is not None:
                    new_blocks += 1
        return _Plan(hits, hashes, start, new_blocks, free_hits)

    def _chain(self, seq: Sequence, start: int, stop: int, prev: int | None
               ) -> Iterator[tuple[tuple[int, ...], int | None, int]]:
        """(tokens, parent hash, hash) of the sequence's blocks `start..stop-1`, each hash
        chained on the one before (`prev` is block start-1's); lazy, so a caller that stops
        at its first miss hashes no further."""
        bs = self.block_size
        for idx in range(start, stop):
            tokens = tuple(seq.tokens(idx * bs, (idx + 1) * bs))
            h = block_hash(prev, tokens, seq.adapter_id)
            yield tokens, prev, h
            prev = h

    def _lookup(self, seq: Sequence) -> tuple[list[int], list[int]]:
        hits: list[int] = []
        hashes: list[int] = []
        for block_tokens, prev, h in self._chain(seq, 0, seq.num_tokens // self.block_size,
                                                 None):
            bid = self._by_hash.get(h)
            if bid is None:
                break
            block = self._blocks[bid]
            if (block.tokens != block_tokens or block.parent != prev
                    or block.extra != seq.adapter_id):
                break  # hash collision: different content under the same hash
            hits.append(bid)
            hashes.append(h)
        return hits, hashes

    def _take(self) -> int:
        if self._free_plain:
            bid = self._free_plain.popleft()
        elif self._free_cached:
            bid, _ = self._free_cached.popitem(last=False)
            self._evict(bid)
        else:
            raise NoFreeBlocks("no free KV block")
        self._blocks[bid].ref_count = 1
        return bid

    def _evict(self, bid: int) -> None:
        block = self._blocks[bid]
        if block.hash is not None and self._by_hash.get(block.hash) == bid:
            del self._by_hash[block.hash]
        block.hash = block.tokens = block.parent = block.extra = None

    def _incref(self, bid: int) -> None:
        block = self._blocks[bid]
        if block.ref_count == 0:
            del self._free_cached[bid]
        block.ref_count += 1

    def _decref(self, bid: int) -> None:
        block = self._blocks[bid]
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.hash is not None:
                self._free_cached[bid] = None
            else:
                self._free_plain.append(bid)
