"""Accepting draft tokens: the rejection rule of Leviathan et al. (2023), greedy as its special
case, over one step's logits for every sampling sequence at once.

For a sequence with drafts d_1..d_k and target distributions p_0..p_k (its last known token's
row, then one row per draft):
- deterministic drafts (prompt lookup, greedy drafts: a one-hot draft distribution) -- the
  target's own sample x_j from p_j is drawn for every row, with the noise the request would use
  for that output position anyway; d_j is accepted while x_j == d_j, and the first x_j that
  differs (or the bonus x_k when all held) is the next token. That is the rejection rule for a
  one-hot q (accept with p(d), else sample p without d), and, because the noise is keyed by
  position, a seeded request yields exactly the tokens it yields without speculation. Greedy:
  x_j is the argmax.
- sampled drafts with distributions q_j -- accept d_j with probability min(1, p_j(d)/q_j(d));
  on the first rejection sample from norm(max(0, p_j - q_j)) and stop; one bonus token from
  p_k when all k held. The output is distributed exactly as the target's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backends.engine.sampler import (
    SamplingParams,
    filtered_probs,
    race,
    sample,
    token_logprobs,
)
from backends.engine.step import SeqOutput, TokenLogprobs

ACCEPT_STREAM = 2  # generator streams of a seeded request, apart from its sampling stream 0
RESIDUAL_STREAM = 3


@dataclass(frozen=True, slots=True)
class RowGroup:
    """One sampling sequence's rows of the step's logits: 1 + len(draft) of them."""

    params: SamplingParams
    draft: Sequence[int] = ()
    draft_probs: torch.Tensor | None = None  # [len(draft), vocab]; None = deterministic
    first_index: int = 0  # output index of the first token these rows yield


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)); p itself where q covers p everywhere (then p == q)."""
    r = (p - q).clamp_min_(0)
    total = r.sum()
    return p if float(total) <= 0 else r / total


def accept(logits: torch.Tensor, groups: Sequence[RowGroup]) -> list[SeqOutput]:
    """Tokens each group gains from `logits [sum of rows, vocab]`, in group order."""
    dev = logits.device
    row_params: list[SamplingParams] = []
    row_gens: list[torch.Generator | None] = []
    for g in groups:
        for j in range(1 + len(g.draft)):
            row_params.append(g.params)
            row_gens.append(g.params.make_generator(dev, g.first_index + j))
    if logits.shape[0] != len(row_params):
        raise ValueError(f"{logits.shape[0]} logits rows for {len(row_params)} expected")
    drawn = sample(logits, row_params, row_gens)
    # Target distributions for the rows of sampled drafts, in one batched call.
    stochastic = [g.draft_probs is not None and not g.params.greedy for g in groups]
    p_all = filtered_probs(logits.float(), row_params) if any(stochastic) else None
    out: list[SeqOutput] = []
    row = 0
    for g, sampled_drafts in zip(groups, stochastic, strict=True):
        k = len(g.draft)
        if not sampled_drafts:
            a = 0
            while a < k and drawn.tokens[row + a] == g.draft[a]:
                a += 1
            tokens = [*g.draft[:a], drawn.tokens[row + a]]
            lps = drawn.logprobs[row:row + a + 1]
        else:
            assert p_all is not None
            tokens, a = _rejection(p_all[row:row + k], g, drawn.tokens[row + k])
            lps = _logprobs(logits[row:row + a + 1], tokens, g.params)
        out.append(SeqOutput(tokens, num_draft=k, num_rejected=k - a, logprobs=list(lps)))
        row += k + 1
    return out


def _rejection(p: torch.Tensor, g: RowGroup, bonus: int) -> tuple[list[int], int]:
    """`p [k, vocab]`: the target's (filtered) distributions at the draft positions."""
    assert g.draft_probs is not None
    dev = p.device
    q = g.draft_probs.to(device=dev, dtype=torch.float32)
    for j, d in enumerate(g.draft):
        gen = g.params.make_generator(dev, g.first_index + j, ACCEPT_STREAM)
        u = float(torch.rand((), generator=gen, device=dev)) if gen is not None else float(
            torch.rand((), device=dev))
        # u < p/q, written so a q(d) of 0 (never sampled, but guard it) rejects.
        if u * float(q[j, d]) < float(p[j, d]):
            continue
        residual = residual_distribution(p[j], q[j])
        rgen = g.params.make_generator(dev, g.first_index + j, RESIDUAL_STREAM)
        token = int(race(residual[None], [rgen])[0])
        return [*g.draft[:j], token], j
    return [*g.draft, bonus], len(g.draft)


def _logprobs(
    logits: torch.Tensor, tokens: list[int], params: SamplingParams
) -> list[TokenLogprobs | None]:
    if params.logprobs is None:
        return [None] * len(tokens)
    return token_logprobs(logits.float(), tokens, [params] * len(tokens))
