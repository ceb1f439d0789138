"""Prompt lookup (n-gram) proposals: no model, only the sequence's own context.

The longest suffix of the context (prompt and output so far) of length `max_n` down to `min_n`
that also occurs earlier proposes the tokens that followed its latest earlier occurrence. Output
that copies its input (summaries, edits, code rewrites, JSON echoing a schema) is where this
wins. It cannot change what is generated: every proposed token is verified by the target, so a
small minimum match (even 1) costs acceptance at worst, never correctness.
"""

from __future__ import annotations

from collections.abc import Sequence

from backends.engine.spec.proposer import DraftRequest, Proposal


def lookup(tokens: Sequence[int], k: int, min_n: int, max_n: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the longest matching
    suffix (lengths max_n..min_n); [] when none occurs."""
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


class NgramProposer:
    method = "ngram"

    def __init__(self, min_n: int = 1, max_n: int = 4, window: int = 4096) -> None:
        self.min_n = min_n
        self.max_n = max_n
        # Bounds the scan so a long context costs O(window) per step, not O(context).
        self.window = window
        self._sec_per_seq = 2e-5

    def propose(self, requests: Sequence[DraftRequest]) -> list[Proposal]:
        out = []
        for r in requests:
            n = r.seq.num_tokens
            context = r.seq.tokens(max(0, n - self.window), n)
            out.append(Proposal(lookup(context, r.k, self.min_n, self.max_n)))
        return out

    def draft_seconds(self, batches: Sequence[int]) -> float:
        # One lookup per sequence per step, however many tokens it proposes.
        return self._sec_per_seq * batches[0] if batches else 0.0

    def observe(self, batches: Sequence[int], seconds: float) -> None:
        if batches and batches[0]:
            self._sec_per_seq = 0.9 * self._sec_per_seq + 0.1 * seconds / batches[0]
