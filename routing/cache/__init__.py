"""The semantic response cache, one of the stages that feed routing: keys (`keys`), records and
the persistence protocol (`records`), the in-process and Redis stores (`stores`), the cache
itself (`semantic`) and the pair verifier that judges semantic candidates (`verifier`).

What the package offers other packages is listed in `__all__`; the SQL persistence is the
gateway's (gateway/cache_persistence.py)."""

from routing.cache.keys import (
    DEFAULT_THRESHOLD,
    CacheKey,
    context_hash,
    entry_id,
    exact_key,
    last_turn_text,
    make_key,
    numbers_signature,
)
from routing.cache.records import QUERY_FIELD, CacheHit, Entry, Lookup, Persistence
from routing.cache.semantic import SemanticCache
from routing.cache.stores import CacheStore, MemoryStore, RedisStore
from routing.cache.verifier import PairVerifier

__all__ = [
    "DEFAULT_THRESHOLD",
    "QUERY_FIELD",
    "CacheHit",
    "CacheKey",
    "CacheStore",
    "Entry",
    "Lookup",
    "MemoryStore",
    "PairVerifier",
    "Persistence",
    "RedisStore",
    "SemanticCache",
    "context_hash",
    "entry_id",
    "exact_key",
    "last_turn_text",
    "make_key",
    "numbers_signature",
]
