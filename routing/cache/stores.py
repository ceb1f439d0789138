"""Where entries live: `MemoryStore` (one process) and `RedisStore` (replicas share one
cache), both behind `CacheStore`, with the per-team embedding matrix they search.

* `MemoryStore`: per team, an `OrderedDict` of entries (LRU order, exact lookup) and a NumPy
  matrix of embeddings (preallocated, doubled when full, freed rows reused) with a context code
  and expiry per row: a semantic search is one matrix-vector product over the team's rows with
  the other contexts and expired rows masked out (see `_dots`): ~0.5 ms at 10k rows, ~5 ms at
  100k (bench/cache_eval.py).
* `RedisStore`: entries are hashes with a Redis TTL; each team has an index hash (entry id ->
  context code, expiry, embedding), a ZSET of last-use times (LRU), a ZSET of expiries, a
  version counter and a change log. Writes are Lua scripts, so each is atomic. Every replica
  mirrors a team's index in-process (a `_Matrix`) and brings it up to date from the change log
  before a search: usually one round trip that returns nothing."""

from __future__ import annotations

import threading
import urllib.parse
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any

import numpy as np
import orjson

from extras import require
from routing.cache.keys import _context_code
from routing.cache.records import Entry

# -- the embedding matrix ---------------------------------------------------------------------


def _dots(mat: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """Row-wise dot products on this thread only. Not `mat @ vec`: that is OpenBLAS gemv on
    all cores, and on a loaded 2-core host its two threads wait for each other (10k rows: 6-8
    ms p50 instead of 0.13 ms; its spinning threads also slow the embedder's torch thread).
    `np.vecdot` (NumPy >= 2) loops over the rows: 0.4 ms for 10k rows, loaded or not."""
    if hasattr(np, "vecdot"):
        return np.vecdot(mat, vec)
    return np.einsum("ij,j->i", mat, vec)  # NumPy 1.x: also single-threaded, ~0.6 ms


class _Matrix:
    """Embedding rows with a context code and an expiry each. Rows of removed entries are
    reused; the arrays double when full and are compacted when mostly empty, so a search
    never scans much more than the live rows."""

    def __init__(self, dim: int, capacity: int = 64) -> None:
        self.dim = dim
        self.emb = np.zeros((capacity, dim), dtype=np.float32)
        self.code = np.zeros(capacity, dtype=np.uint64)
        self.expires = np.full(capacity, -np.inf)  # -inf: a free row
        self.ids: list[str | None] = [None] * capacity
        self.row: dict[str, int] = {}
        self.free: list[int] = []
        self.hi = 0  # rows [0, hi) have been used

    def __len__(self) -> int:
        return len(self.row)

    def _grow(self) -> None:
        cap = 2 * len(self.ids)
        emb = np.zeros((cap, self.dim), dtype=np.float32)
        emb[: self.hi] = self.emb[: self.hi]
        code = np.zeros(cap, dtype=np.uint64)
        code[: self.hi] = self.code[: self.hi]
        expires = np.full(cap, -np.inf)
        expires[: self.hi] = self.expires[: self.hi]
        self.emb, self.code, self.expires = emb, code, expires
        self.ids.extend([None] * (cap - len(self.ids)))

    def upsert(self, eid: str, code: int, expires: float, vec: np.ndarray) -> None:
        if vec.shape != (self.dim,):
            raise ValueError(f"embedding shape {vec.shape}, expected ({self.dim},)")
        r = self.row.get(eid)
        if r is None:
            if self.free:
                r = self.free.pop()
            else:
                if self.hi == len(self.ids):
                    self._grow()
                r = self.hi
                self.hi += 1
            self.row[eid] = r
            self.ids[r] = eid
        self.emb[r] = vec
        self.code[r] = code
        self.expires[r] = expires

    def remove(self, eid: str) -> None:
        r = self.row.pop(eid, None)
        if r is None:
            return
        self.ids[r] = None
        self.expires[r] = -np.inf
        self.free.append(r)
        if self.hi > 1024 and len(self.row) * 4 < self.hi:
            self._compact()

    def _compact(self) -> None:
        keep = np.array(sorted(self.row.values()), dtype=np.int64)
        n = len(keep)
        self.emb[:n] = self.emb[keep]
        self.code[:n] = self.code[keep]
        self.expires[:n] = self.expires[keep]
        self.expires[n : self.hi] = -np.inf
        ids = [self.ids[r] for r in keep]
        self.ids[: self.hi] = ids + [None] * (self.hi - n)
        self.row = {eid: i for i, eid in enumerate(ids) if eid is not None}
        self.free = []
        self.hi = n

    def expired(self, now: float) -> list[str]:
        n = self.hi
        rows = np.flatnonzero((self.expires[:n] <= now) & (self.expires[:n] > -np.inf))
        return [eid for r in rows if (eid := self.ids[r]) is not None]

    def best(self, code: int, vec: np.ndarray, now: float) -> tuple[str, float] | None:
        """The most similar live row of context `code`: (entry id, cosine)."""
        n = self.hi
        if not self.row or vec.shape != (self.dim,):
            return None
        ok = (self.code[:n] == np.uint64(code)) & (self.expires[:n] > now)
        rows = np.flatnonzero(ok)
        if rows.size == 0:
            return None
        if rows.size * 4 >= n:  # most rows qualify: one product over all, mask the rest
            sims = _dots(self.emb[:n], vec)
            sims[~ok] = -np.inf
            r = int(np.argmax(sims))
            sim = float(sims[r])
        else:  # few qualify (a long conversation's context): gather them first
            sims = _dots(self.emb[rows], vec)
            j = int(np.argmax(sims))
            r, sim = int(rows[j]), float(sims[j])
        eid = self.ids[r]
        return (eid, sim) if eid is not None else None


# -- stores -----------------------------------------------------------------------------------


class CacheStore(ABC):
    """Where entries live. Every method takes the team: a store never mixes teams."""

    @abstractmethod
    def fetch(self, team: str, eid: str, now: float) -> Entry | None:
        """The live entry `eid` of `team`, recorded as used (LRU order, hits); None if absent
        or expired."""

    @abstractmethod
    def search(
        self, team: str, context_hash: str, embedding: np.ndarray, now: float
    ) -> tuple[str, float] | None:
        """(entry id, cosine) of the most similar live entry of `team` with this context."""

    @abstractmethod
    def put(self, entry: Entry, max_entries: int, now: float) -> int:
        """Insert or replace; then drop expired entries and the least recently used beyond
        `max_entries` in the entry's team. Returns how many were dropped."""

    @abstractmethod
    def delete_team(self, team: str) -> int:
        """Drop every entry of `team`; returns how many there were."""

    @abstractmethod
    def count(self, team: str | None = None) -> int:
        """Entries of `team` (all teams when None), expired ones not yet swept included."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class _Team:
    __slots__ = ("entries", "matrix")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self.matrix: _Matrix | None = None  # created at the first embedding (its dim)


class MemoryStore(CacheStore):
    """In-process store (one replica). Thread-safe."""

    def __init__(self) -> None:
        self._teams: dict[str, _Team] = {}
        self._lock = threading.Lock()

    def fetch(self, team: str, eid: str, now: float) -> Entry | None:
        with self._lock:
            t = self._teams.get(team)
            e = t.entries.get(eid) if t else None
            if e is None or t is None:
                return None
            if e.expires_at <= now:
                self._drop(t, eid)
                return None
            t.entries.move_to_end(eid)
            e.hits += 1
            return e

    def search(
        self, team: str, context_hash: str, embedding: np.ndarray, now: float
    ) -> tuple[str, float] | None:
        with self._lock:
            t = self._teams.get(team)
            if t is None or t.matrix is None:
                return None
            return t.matrix.best(_context_code(context_hash), embedding, now)

    def put(self, entry: Entry, max_entries: int, now: float) -> int:
        with self._lock:
            t = self._teams.get(entry.team)
            if t is None:
                t = self._teams[entry.team] = _Team()
            if entry.embedding is not None:
                if t.matrix is None:
                    t.matrix = _Matrix(entry.embedding.shape[0])
                t.matrix.upsert(
                    entry.id, _context_code(entry.context_hash), entry.expires_at, entry.embedding
                )
            elif t.matrix is not None:
                t.matrix.remove(entry.id)  # replaced by an entry without embedding
            t.entries[entry.id] = entry
            t.entries.move_to_end(entry.id)
            dropped = 0
            if len(t.entries) > max_entries:
                # Expired entries go first; only then the least recently used.
                for eid in [k for k, e in t.entries.items() if e.expires_at <= now]:
                    self._drop(t, eid)
                    dropped += 1
                while len(t.entries) > max_entries:
                    eid = next(iter(t.entries))
                    self._drop(t, eid)
                    dropped += 1
            return dropped

    @staticmethod
    def _drop(t: _Team, eid: str) -> None:
        t.entries.pop(eid, None)
        if t.matrix is not None:
            t.matrix.remove(eid)

    def delete_team(self, team: str) -> int:
        with self._lock:
            t = self._teams.pop(team, None)
            return len(t.entries) if t else 0

    def count(self, team: str | None = None) -> int:
        with self._lock:
            if team is not None:
                t = self._teams.get(team)
                return len(t.entries) if t else 0
            return sum(len(t.entries) for t in self._teams.values())


# Lua scripts: each write is atomic, so the change log, the index and the entries agree.
# KEYS: idx, lru, exp, ver, log. The entry keys are built from ARGV[1] (prefix:team:e:), so the
# store needs a single Redis (not Cluster).
_LUA_PUT = """
local ek = ARGV[1] .. ARGV[2]
redis.call('DEL', ek)
redis.call('HSET', ek, 'meta', ARGV[3], 'resp', ARGV[4], 'hits', 0)
redis.call('PEXPIRE', ek, ARGV[5])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[6])
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[8], ARGV[2])
local changed = {ARGV[2]}
local dropped = 0
local function drop(id)
  if redis.call('ZREM', KEYS[2], id) == 1 then
    dropped = dropped + 1
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[1], id)
    redis.call('DEL', ARGV[1] .. id)
    table.insert(changed, id)
  end
end
-- expired entries first, then the least recently used beyond the bound
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[7], 'LIMIT', 0, 1000)) do
  drop(id)
end
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[9])
if over > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do drop(id) end
end
local seq = 0
for _, id in ipairs(changed) do
  seq = redis.call('INCR', KEYS[4])
  redis.call('ZADD', KEYS[5], seq, seq .. ':' .. id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', seq - tonumber(ARGV[10]))
-- the team's keys live as long as its newest entry; the version never expires, so a
-- replica's mirror can never mistake a recreated team for the one it has seen
for _, i in ipairs({1, 2, 3, 5}) do redis.call('PEXPIRE', KEYS[i], ARGV[11]) end
return dropped
"""
# A fetch that records the use; an entry past its logical expiry is not returned.
# KEYS: entry, lru. ARGV: id, now.
_LUA_FETCH = """
local v = redis.call('HMGET', KEYS[1], 'meta', 'resp', 'hits')
if not v[1] then return nil end
local hits = redis.call('HINCRBY', KEYS[1], 'hits', 1)
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1])
return {v[1], v[2], hits}
"""
# KEYS: idx, lru, exp, ver, log. ARGV: entry key prefix.
_LUA_DELETE_TEAM = """
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, id in ipairs(ids) do redis.call('DEL', ARGV[1] .. id) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[5])
redis.call('INCR', KEYS[4])
return #ids
"""


class _Mirror:
    __slots__ = ("matrix", "seq")

    def __init__(self) -> None:
        self.matrix: _Matrix | None = None
        self.seq = 0  # the team's version this mirror reflects


class RedisStore(CacheStore):
    """Store shared by several replicas through one Redis.

    Per team (team names are URL-quoted into the keys):
    `{prefix}:{team}:e:{id}` hash (meta JSON, response JSON, hits) with the entry's TTL;
    `:idx` hash id -> packed (context code u64, expiry f64, embedding f32[dim]);
    `:lru` ZSET id -> last use; `:exp` ZSET id -> expiry; `:ver` counter; `:log` ZSET of
    "seq:id" scored by seq (which ids changed at which version, the last `log_max`).
    A replica's mirror of `:idx` catches up by re-reading the index entries of the ids in the
    log after its version; if its version is not in the log any more, it reloads `:idx`.
    A stale mirror can only cause misses: a found entry is fetched and checked before use.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "greengate:cache",
        client: Any = None,
        log_max: int = 20_000,
        timeout_s: float = 0.5,
    ) -> None:
        if client is None:
            redis = require("redis", "redis", "the Redis cache store")
            client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
        self._r = client
        self.prefix = prefix
        self.log_max = log_max
        self._put = client.register_script(_LUA_PUT)
        self._fetch = client.register_script(_LUA_FETCH)
        self._delete = client.register_script(_LUA_DELETE_TEAM)
        self._mirrors: dict[str, _Mirror] = {}
        self._lock = threading.Lock()
        self.full_syncs = 0  # for stats and tests: how often a whole index was reloaded

    def _team_prefix(self, team: str) -> str:
        return f"{self.prefix}:{urllib.parse.quote(team, safe='')}"

    def _keys(self, team: str) -> list[str]:
        p = self._team_prefix(team)
        return [f"{p}:idx", f"{p}:lru", f"{p}:exp", f"{p}:ver", f"{p}:log"]

    @staticmethod
    def _pack(code: int, expires: float, vec: np.ndarray) -> bytes:
        head = np.array([code], dtype="<u8").tobytes() + np.array([expires], "<f8").tobytes()
        return head + np.ascontiguousarray(vec, dtype="<f4").tobytes()

    @staticmethod
    def _unpack(raw: bytes) -> tuple[int, float, np.ndarray]:
        code = int(np.frombuffer(raw, dtype="<u8", count=1)[0])
        expires = float(np.frombuffer(raw, dtype="<f8", count=1, offset=8)[0])
        return code, expires, np.frombuffer(raw, dtype="<f4", offset=16).astype(np.float32)

    def fetch(self, team: str, eid: str, now: float) -> Entry | None:
        ek = f"{self._team_prefix(team)}:e:{eid}"
        res = self._fetch(keys=[ek, self._keys(team)[1]], args=[eid, repr(now)])
        if not res:
            return None
        meta = orjson.loads(res[0])
        if meta["expires_at"] <= now:  # logical expiry (Redis TTL is only the backstop)
            return None
        return Entry(
            id=eid,
            team=team,
            context_hash=meta["context_hash"],
            task=meta["task"],
            embedding=None,  # not needed to serve; the index holds it
            response=orjson.loads(res[1]),
            member=meta["member"],
            created_at=meta["created_at"],
            expires_at=meta["expires_at"],
            hits=int(res[2]),
            query=meta.get("query"),
        )

    def _sync(self, team: str) -> _Mirror:
        """Bring the team's mirror up to date (one round trip when nothing changed)."""
        idx, _, _, ver_key, log_key = self._keys(team)
        m = self._mirrors.get(team) or _Mirror()
        pipe = self._r.pipeline(transaction=True)
        pipe.get(ver_key)
        pipe.zrangebyscore(log_key, f"({m.seq}", "+inf", withscores=True)
        raw_ver, changes = pipe.execute()
        ver = int(raw_ver or 0)
        if ver == m.seq and team in self._mirrors:
            return m
        seqs = [int(s) for _, s in changes]
        if ver > m.seq and seqs == list(range(m.seq + 1, ver + 1)):
            ids = list(dict.fromkeys(c.decode().split(":", 1)[1] for c, _ in changes))
            for eid, raw in zip(ids, self._r.hmget(idx, ids), strict=True):
                self._apply(m, eid, raw)
        else:  # new mirror, fell behind the log, or the team was deleted: reload it all
            pipe = self._r.pipeline(transaction=True)
            pipe.get(ver_key)
            pipe.hgetall(idx)
            raw_ver, rows = pipe.execute()
            ver = int(raw_ver or 0)
            m = _Mirror()
            for eid, raw in rows.items():
                self._apply(m, eid.decode(), raw)
            self.full_syncs += 1
        m.seq = ver
        self._mirrors[team] = m
        return m

    def _apply(self, m: _Mirror, eid: str, raw: bytes | None) -> None:
        if raw is None:
            if m.matrix is not None:
                m.matrix.remove(eid)
            return
        code, expires, vec = self._unpack(raw)
        if m.matrix is None:
            m.matrix = _Matrix(vec.shape[0])
        m.matrix.upsert(eid, code, expires, vec)

    def search(
        self, team: str, context_hash: str, embedding: np.ndarray, now: float
    ) -> tuple[str, float] | None:
        with self._lock:
            m = self._sync(team)
            if m.matrix is None:
                return None
            return m.matrix.best(_context_code(context_hash), embedding, now)

    def put(self, entry: Entry, max_entries: int, now: float) -> int:
        meta = orjson.dumps(
            {
                "context_hash": entry.context_hash,
                "task": entry.task,
                "member": entry.member,
                "created_at": entry.created_at,
                "expires_at": entry.expires_at,
                "query": entry.query,
            }
        )
        packed = (
            self._pack(_context_code(entry.context_hash), entry.expires_at, entry.embedding)
            if entry.embedding is not None
            else b""
        )
        # Redis expiry is relative to the server clock; a little slack over the logical TTL
        # so an entry is never gone while the caller still considers it live.
        ttl_ms = max(1000, int((entry.expires_at - now) * 1000) + 60_000)
        dropped = self._put(
            keys=self._keys(entry.team),
            args=[
                f"{self._team_prefix(entry.team)}:e:",
                entry.id,
                meta,
                orjson.dumps(entry.response),
                ttl_ms,
                packed,
                repr(now),
                repr(entry.expires_at),
                max_entries,
                self.log_max,
                ttl_ms,
            ],
        )
        return int(dropped)

    def delete_team(self, team: str) -> int:
        n = int(self._delete(keys=self._keys(team), args=[f"{self._team_prefix(team)}:e:"]))
        with self._lock:
            self._mirrors.pop(team, None)
        return n

    def count(self, team: str | None = None) -> int:
        if team is not None:
            return int(self._r.zcard(self._keys(team)[1]))
        return sum(int(self._r.zcard(k)) for k in self._r.scan_iter(f"{self.prefix}:*:lru"))

    def close(self) -> None:
        self._r.close()
