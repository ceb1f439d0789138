"""Per-request sampling over a step's logits: greedy, temperature, top-k, top-p, seeds, logprobs.

Rows are processed as one batch except where a request carries a seed: those draw their noise
from a torch.Generator keyed by (seed, index of the output token), so a seeded request gives the
same tokens whatever else is in the batch, and whether its tokens arrive one per step or several
per step through speculative decoding. Sampling uses the exponential race (argmax of
p / Exp(1)), which is exact categorical sampling with one random draw per vocab entry and no
cumsum/searchsorted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backends.engine.step import TokenLogprobs

__all__ = [
    "SampleResult", "SamplingParams", "TokenLogprobs", "filtered_probs", "is_stop_token",
    "race", "sample", "token_logprobs",
]

MAX_LOGPROBS = 5
GREEDY_BELOW = 1e-5  # temperatures under this sample greedily (as vLLM does)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or negative = off
    seed: int | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # how many top alternatives to return (0..5); None = none

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ValueError("seed must fit in 64 bits")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}]")
        # Lists are accepted from callers; tuples keep the params hashable and immutable.
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        # Below this, logits / temperature overflows float32 and sampling would return NaNs.
        return self.temperature < GREEDY_BELOW

    def make_generator(
        self, device: torch.device | str = "cpu", index: int = 0, stream: int = 0
    ) -> torch.Generator | None:
        """The generator for output token `index` when the request is seeded. Keyed by index,
        so the noise of a token does not depend on how many tokens earlier steps produced;
        `stream` separates other draws at the same index (a draft model's own sampling)."""
        if self.seed is None:
            return None
        mixed = hash((self.seed, index, stream)) & 0x7FFF_FFFF_FFFF_FFFF
        return torch.Generator(device=device).manual_seed(mixed)


@dataclass(frozen=True, slots=True)
class SampleResult:
    tokens: list[int]
    logprobs: list[TokenLogprobs | None]


def is_stop_token(token_id: int, params: SamplingParams, eos_token_ids: Sequence[int]) -> bool:
    if token_id in params.stop_token_ids:
        return True
    return not params.ignore_eos and token_id in eos_token_ids


def find_stop(text: str, stops: Sequence[str], search_from: int = 0) -> int | None:
    """Index where the earliest stop string starts in `text[search_from:]`, or None. Pass the
    previous text length minus the longest stop length to only rescan the new tail."""
    best: int | None = None
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop, max(search_from, 0))
        if at >= 0 and (best is None or at < best):
            best = at
    return best


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None] | None = None,
) -> SampleResult:
    """Next token per row of `logits [S, V]`; `generators[i]` is row i's seeded generator."""
    rows = logits.shape[0]
    if len(params) != rows:
        raise ValueError("one SamplingParams per logits row")
    gens = list(generators) if generators is not None else [None] * rows
    logits = logits.float()
    tokens = torch.empty(rows, dtype=torch.long, device=logits.device)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    random = [i for i, p in enumerate(params) if not p.greedy]
    if greedy:
        idx = torch.tensor(greedy, device=logits.device)
        tokens[idx] = logits[idx].argmax(dim=-1)
    if random:
        idx = torch.tensor(random, device=logits.device)
        probs = filtered_probs(logits[idx], [params[i] for i in random])
        tokens[idx] = race(probs, [gens[i] for i in random])
    chosen = tokens.tolist()
    return SampleResult(chosen, token_logprobs(logits, chosen, params))


def filtered_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    dev = logits.device
    temps = torch.tensor([p.temperature for p in params], device=dev)
    scaled = logits / temps[:, None]
    vocab = scaled.shape[-1]
    top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    top_p = [p.top_p for p in params]
    if all(k == vocab for k in top_k) and all(p >= 1.0 for p in top_p):
        return torch.softmax(scaled, dim=-1)
    # One descending sort serves both filters; masks are built in sorted order then scattered.
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=dev)[None, :]
    drop = ranks >= torch.tensor(top_k, device=dev)[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass strictly above each token
    # Keep the smallest prefix whose mass reaches top_p; the best token always survives.
    drop = before >= torch.tensor(top_p, device=dev)[:, None]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    filtered = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.softmax(filtered, dim=-1)


def race(probs: torch.Tensor, gens: Sequence[torch.Generator | None]) -> torch.Tensor:
    noise = torch.empty_like(probs)
    unseeded = [i for i, g in enumerate(gens) if g is None]
    if unseeded:
        noise[unseeded] = torch.empty(
            (len(unseeded), probs.shape[-1]), device=probs.device
        ).exponential_()
    for i, gen in enumerate(gens):
        if gen is not None:
            noise[i].exponential_(generator=gen)
    # A zero draw would turn 0/0 into NaN; zero-probability entries then stay at 0 and never win.
    return (probs / noise.clamp_min_(1e-20)).argmax(dim=-1)


def token_logprobs(
    logits: torch.Tensor, chosen: list[int], params: Sequence[SamplingParams]
) -> list[TokenLogprobs | None]:
    wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
    out: list[TokenLogprobs | None] = [None] * len(params)
    if not wanted:
        return out
    # Reported from the raw model distribution (before temperature and filters), like OpenAI.
    idx = torch.tensor(wanted, device=logits.device)
    logp = torch.log_softmax(logits[idx], dim=-1)
    top_vals, top_ids = logp.topk(min(MAX_LOGPROBS, logp.shape[-1]), dim=-1)
    picked = logp.gather(1, torch.tensor([[chosen[i]] for i in wanted], device=logits.device))
    top_vals_l, top_ids_l, picked_l = top_vals.tolist(), top_ids.tolist(), picked[:, 0].tolist()
    for row, i in enumerate(wanted):
        n = params[i].logprobs or 0
        top = list(zip(top_ids_l[row][:n], top_vals_l[row][:n], strict=True))
        out[i] = TokenLogprobs(logprob=picked_l[row], top=top)
    return out
