"""Semantic response cache: exact and embedding-similarity hits, per team, with TTL and LRU.

A request is looked up with a `CacheKey` (see `make_key`):

* `exact`: sha256 of the normalised request (`exact_key`): model, messages (whitespace
  collapsed), every parameter that can change the answer; JSON key order does not matter.
  The same request from the same team is answered from the cache whatever the similarity.
* `context_hash`: sha256 of everything but the last user turn (`context_hash`): system prompt,
  earlier turns, tool results, plus the parameters that shape the answer (model, tools,
  response_format, n, ...) and the numbers in the last turn. A semantic hit needs the same
  context exactly, so "and in French?" after two different conversations never matches, a
  JSON-mode request never receives a prose answer, and a word problem never receives the
  answer to the same problem with other numbers (MiniLM: cosine 0.988 for a GSM8K-style
  question with 48 changed to 52, above any usable threshold). On QQP the guard costs 0.1-0.3
  points of recall (bench/cache_eval.py reports both curves).
* `embedding`: the MiniLM embedding of the last user turn. Within the team and context, the
  most similar live entry is the candidate.
* `text` and `mode`: with a pair verifier (routing/cache/verifier.py), the candidate is
  served when its cosine reaches the mode's floor and the verifier, reading both questions
  and both embeddings, says they ask the same thing (`strict` / `balanced`, per team
  policy; `off`: exact hits only). Without a verifier, the candidate is served when its
  cosine is >= the threshold of the request's task (the behaviour before the verifier;
  `off` still means exact only).
  Each lookup reports the candidate's similarity and the verifier's score (`Lookup`), which
  the gateway writes into the decision row, hit or miss.

Teams are namespaces: the stores keep one index per team and an entry id is derived from the
team as well as the exact key, so nothing of one team can be returned to another.

Default threshold (`DEFAULT_THRESHOLD`): chosen with bench/cache_eval.py on Quora Question
Pairs (GPTCache's labelled set) as the lowest threshold at which fewer than 1% of the
non-duplicate pairs would be served (wrong hits); see the module constant for the figures.
Per-task thresholds may override it (`task_thresholds`); none do by default, because the
evaluation data has no task labels and a per-task value would be a guess. A task threshold
above 1 turns semantic hits off for that task (exact hits still apply).

Stores:

* `MemoryStore`: one process. Per team, an `OrderedDict` of entries (LRU order, exact lookup)
  and a NumPy matrix of embeddings (preallocated, doubled when full, freed rows reused) with
  a context code and expiry per row: a semantic search is one matrix-vector product over the
  team's rows with the other contexts and expired rows masked out, on the calling thread
  (see `_dots`): a lookup takes ~0.5 ms at 10k rows, ~5 ms at 100k (bench/cache_eval.py).
* `RedisStore`: several replicas share one cache. Entries are hashes with a Redis TTL; each
  team has an index hash (entry id -> context code, expiry, embedding), a ZSET of last-use
  times (LRU), a ZSET of expiries, a version counter and a change log. Writes are Lua scripts,
  so each is atomic. Every replica mirrors a team's index in-process (a `_Matrix`, as above)
  and brings it up to date from the change log before a search: usually one round trip that
  returns nothing; a full reload only when the mirror is new or fell behind the log.

Persistence (`records.Persistence`; the SQL implementation is gateway/cache_persistence.py)
keeps entries in `cache_entries` so a restarted gateway starts warm. Store failures (Redis
down) never fail a request: `lookup` then misses and `put` drops the entry, and both are
counted in `stats`. Nothing is computed at import.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from routing.cache.keys import DEFAULT_THRESHOLD, CacheKey, entry_id
from routing.cache.records import CacheHit, Entry, Lookup, Persistence, clone
from routing.cache.stores import CacheStore

if TYPE_CHECKING:
    from routing.cache.verifier import PairVerifier

log = logging.getLogger("routing.cache")


# -- the cache --------------------------------------------------------------------------------


class SemanticCache:
    """Exact and semantic lookups over a `CacheStore`, with TTL, a size bound per team and
    optional persistence. Safe to call from several threads."""

    def __init__(
        self,
        store: CacheStore,
        threshold: float = DEFAULT_THRESHOLD,
        task_thresholds: dict[str, float] | None = None,
        ttl_s: float = 3600,
        max_entries_per_team: int = 10_000,
        persist: Persistence | None = None,
        verifier: PairVerifier | None = None,
    ) -> None:
        if ttl_s <= 0 or max_entries_per_team < 1:
            raise ValueError("ttl_s must be > 0 and max_entries_per_team >= 1")
        self.store = store
        self.threshold = threshold
        self.task_thresholds = dict(task_thresholds or {})
        self.ttl_s = ttl_s
        self.max_entries_per_team = max_entries_per_team
        self.persist = persist
        self.verifier = verifier
        self._lock = threading.Lock()
        self._n = dict.fromkeys(
            ("lookups", "exact_hits", "semantic_hits", "misses", "puts", "evicted",
             "invalidated", "errors"),
            0,
        )  # fmt: skip

    def _count(self, name: str, k: int = 1) -> None:
        with self._lock:
            self._n[name] += k

    def threshold_for(self, task: str | None) -> float:
        if task is not None and task in self.task_thresholds:
            return self.task_thresholds[task]
        return self.threshold

    @staticmethod
    def _vector(embedding: np.ndarray | None) -> np.ndarray | None:
        if embedding is None:
            return None
        v = np.asarray(embedding, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(v))
        # Cosine needs unit vectors; MiniLM's are, but a caller's stand-in may not be.
        return v / norm if norm > 0 and abs(norm - 1.0) > 1e-4 else v

    def lookup(self, key: CacheKey, now: float | None = None) -> CacheHit | None:
        """Exact hit first, then the most similar entry of the same team and context if it
        passes (`lookup_detail`); None on a miss (or a store failure)."""
        return self.lookup_detail(key, now).hit

    def _floor(self, key: CacheKey) -> float:
        """The lowest cosine a candidate needs before it is looked at (above 1: none)."""
        if key.mode == "off":
            return 2.0
        threshold = self.threshold_for(key.task)
        if threshold > 1.0 or self.verifier is None:
            return threshold
        return self.verifier.floor(key.mode)

    def lookup_detail(self, key: CacheKey, now: float | None = None) -> Lookup:
        now = time.time() if now is None else now
        self._count("lookups")
        mode = key.mode if self.verifier is not None or key.mode == "off" else "threshold"
        sim: float | None = None
        score: float | None = None
        reason = "no_candidate"
        try:
            e = self.store.fetch(key.team, entry_id(key.team, key.exact), now)
            if e is not None and e.context_hash == key.context_hash:
                self._count("exact_hits")
                return Lookup(self._hit(e, "exact", 1.0, now), 1.0, None, "exact", mode)
            vec = self._vector(key.embedding)
            floor = self._floor(key)
            if floor > 1.0:
                reason = "off"
            elif vec is not None:
                best = self.store.search(key.team, key.context_hash, vec, now)
                if best is not None:
                    sim = min(float(best[1]), 1.0)
                    reason = "below_floor"
                if best is not None and best[1] >= floor:
                    e = self.store.fetch(key.team, best[0], now)
                    if e is not None and e.context_hash == key.context_hash:
                        ok, score, reason = True, None, "threshold"
                        if self.verifier is not None:
                            v = self.verifier.decide(
                                key.mode, key.text, e.query, sim, vec, e.embedding
                            )
                            ok, score, reason = v.hit, v.score, v.reason
                        if ok:
                            self._count("semantic_hits")
                            hit = self._hit(e, "semantic", sim, now, score)
                            return Lookup(hit, sim, score, reason, mode)
        except Exception:
            self._count("errors")
            reason = "error"
            log.warning("cache lookup failed; treated as a miss", exc_info=True)
        self._count("misses")
        return Lookup(None, sim, score, reason, mode)

    @staticmethod
    def _hit(e: Entry, kind: Literal["exact", "semantic"], sim: float, now: float,
             score: float | None = None) -> CacheHit:  # fmt: skip
        return CacheHit(clone(e.response), kind, sim, e.id, e.member,
                        max(0.0, now - e.created_at), score)  # fmt: skip

    def put(
        self, key: CacheKey, response: dict, member: str | None, now: float | None = None
    ) -> str:
        """Store an answer for `key` (replacing one with the same exact key); returns the
        entry id. The caller decides what is worth caching (complete, non-error answers)."""
        now = time.time() if now is None else now
        eid = entry_id(key.team, key.exact)
        try:
            entry = Entry(
                id=eid,
                team=key.team,
                context_hash=key.context_hash,
                task=key.task,
                embedding=self._vector(key.embedding),
                response=clone(response),  # the caller may go on to modify its copy
                member=member,
                created_at=now,
                expires_at=now + self.ttl_s,
                query=key.text,
            )
        except (TypeError, ValueError):  # not JSON: nothing to cache, but no failed request
            self._count("errors")
            log.warning("cache put refused an unserialisable response", exc_info=True)
            return eid
        if self._store_put(entry, now) and self.persist is not None:
            try:
                self.persist.save(entry)
            except Exception:
                log.warning("cache persistence failed", exc_info=True)
        return eid

    def _store_put(self, entry: Entry, now: float) -> bool:
        try:
            dropped = self.store.put(entry, self.max_entries_per_team, now)
        except Exception:
            self._count("errors")
            log.warning("cache put failed; entry dropped", exc_info=True)
            return False
        self._count("puts")
        if dropped:
            self._count("evicted", dropped)
        return True

    def restore(self, entry: Entry, now: float | None = None) -> bool:
        """Insert an entry loaded from persistence (not persisted again); False if expired."""
        now = time.time() if now is None else now
        if entry.expires_at <= now:
            return False
        entry.embedding = self._vector(entry.embedding)
        return self._store_put(entry, now)

    def invalidate(self, team: str) -> int:
        """Drop all entries of `team` (and its persisted rows, through `persist`); returns how
        many the store held."""
        n = self.store.delete_team(team)
        self._count("invalidated", n)
        if self.persist is not None:
            self.persist.delete_team(team)
        return n

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._n)
        hits = out["exact_hits"] + out["semantic_hits"]
        out["hit_rate"] = hits / out["lookups"] if out["lookups"] else 0.0
        try:
            out["entries"] = self.store.count()
        except Exception:
            out["entries"] = None
        out.update(
            store=type(self.store).__name__,
            threshold=self.threshold,
            verifier=(
                {m: vars(r) for m, r in self.verifier.modes.items()} if self.verifier else None
            ),
            task_thresholds=dict(self.task_thresholds),
            ttl_s=self.ttl_s,
            max_entries_per_team=self.max_entries_per_team,
        )
        return out
