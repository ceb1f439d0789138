"""Prompt lookup (n-gram) proposals: no model, only the sequence's own context.

The longest suffix of the context (prompt and output so far) of length `max_n` down to `min_n`
that also occurs earlier proposes the tokens that followed its latest earlier occurrence. Output
that copies its input (summaries, edits, code rewrites, JSON echoing a schema) is where this
wins. It cannot change what is generated: every proposed token is verified by the target, so a
small minimum match (even 1) costs acceptance at worst, never correctness.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from backends.engine.sequence import Sequence as Seq
from backends.engine.spec.proposer import DraftRequest, Proposal


def lookup(tokens: Sequence[int], k: int, min_n: int, max_n: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the longest matching
    suffix (lengths max_n..min_n); [] when none occurs. The reference the proposer's
    incremental index is tested against."""
    total = len(tokens)
    if k <= 0 or total < min_n + 1:
        return []
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = list(tokens[total - n:])
        first = suffix[0]
        # Latest occurrence first: recent context predicts the continuation best.
        for start in range(total - n - 1, -1, -1):
            if tokens[start] == first and list(tokens[start:start + n]) == suffix:
                follow = tokens[start + n:start + n + k]
                if follow:
                    return list(follow)
    return []


class _SuffixIndex:
    """For each n, the latest end position of every n-gram seen so far in one sequence,
    extended by the tokens added since the last step: a lookup costs O(max_n), not a scan of
    the context, so long contexts and large batches stay cheap."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.ends: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(min_n, max_n + 1)}
        self.indexed = 0  # n-grams ending before this position are in `ends`

    def extend(self, seq: Seq, upto: int) -> None:
        if upto <= self.indexed:
            return
        lo = max(0, self.indexed - max(self.ends))
        tokens = seq.tokens(lo, upto)
        for end in range(self.indexed + 1, upto + 1):
            for n, table in self.ends.items():
                if end - n >= lo:
                    table[tuple(tokens[end - n - lo:end - lo])] = end
        self.indexed = upto

    def propose(self, seq: Seq, k: int) -> list[int]:
        total = seq.num_tokens
        # Every n-gram ending before the last token: the suffix itself is not a match.
        self.extend(seq, total - 1)
        for n in sorted(self.ends, reverse=True):
            if total < n + 1:
                continue
            end = self.ends[n].get(tuple(seq.tokens(total - n, total)))
            if end is not None:
                return seq.tokens(end, min(end + k, total))
        return []


class NgramProposer:
    method = "ngram"

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        self.min_n = min_n
        self.max_n = max_n
        # Sequences are identity-hashed; an index goes with its sequence.
        self._index: weakref.WeakKeyDictionary[Seq, _SuffixIndex] = weakref.WeakKeyDictionary()
        self._sec_per_seq = 2e-5

    def propose(self, requests: Sequence[DraftRequest]) -> list[Proposal]:
        out = []
        for r in requests:
            index = self._index.get(r.seq)
            if index is None:
                index = self._index[r.seq] = _SuffixIndex(self.min_n, self.max_n)
            out.append(Proposal(index.propose(r.seq, r.k) if r.k > 0 else []))
        return out

    def draft_seconds(self, batches: Sequence[int]) -> float:
        # One lookup per sequence per step, however many tokens it proposes.
        return self._sec_per_seq * batches[0] if batches else 0.0

    def observe(self, batches: Sequence[int], seconds: float) -> None:
        if batches and batches[0]:
            self._sec_per_seq = 0.9 * self._sec_per_seq + 0.1 * seconds / batches[0]
