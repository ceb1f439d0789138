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
* `text` and `mode`: with a pair verifier (routing/cache_verifier.py), the candidate is
  served when its cosine reaches the mode's floor and the verifier, reading both questions,
  says they ask the same thing (`strict` / `balanced`, per team policy; `off`: exact hits
  only). Without a verifier, the candidate is served when its cosine is >= the threshold of
  the request's task (the behaviour before the verifier; `off` still means exact only).
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

SQL persistence (`save_entry`, `delete_team`, `load_from_sql`, `SqlPersister`) keeps entries
in `cache_entries` so a restarted gateway starts warm. Store failures (Redis down) never fail
a request: `lookup` then misses and `put` drops the entry, and both are counted in `stats`.
Nothing is computed at import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson

from routing.features import content_text

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from routing.cache_verifier import PairVerifier

log = logging.getLogger(__name__)

# Chosen by bench/cache_eval.py on 20,000 QQP pairs (seed 0; numbers guard on): the lowest
# threshold on a 0.005 grid whose wrong-hit rate is under 1% with 95% confidence. At 0.97:
# 0.74% of non-duplicates served (92 of 12,482; upper 0.90%), recall 12.7%, precision 91.2%.
# 0.965 is the lowest with an observed rate under 1% (0.89%, upper 1.07%; recall 14.8%); the
# 10,000-pair default run of the benchmark picks 0.965 (0.72%, upper 0.97%; recall 15.1%).
# QQP's non-duplicates were picked as look-alikes, so this is a hard test: real traffic's
# near-misses are rarer, and so are its exact paraphrases.
DEFAULT_THRESHOLD = 0.97
KEY_VERSION = "gg-cache-v1"  # part of every hash: bump when the normalisation changes

# Request fields that cannot change the answer (transport, bookkeeping): left out of the key.
IGNORED_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
    }
)
# Fields that change what kind of answer is valid: part of the context, so a semantic hit can
# only come from a request that asked for the same kind of answer from the same model.
SHAPE_FIELDS = (
    "model",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "n",
    "logprobs",
    "top_logprobs",
    "modalities",
    "audio",
)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


# -- keys -------------------------------------------------------------------------------------


def _sha256(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    data = text.encode("utf-8", "surrogatepass")  # JSON input may hold lone surrogates
    return hashlib.sha256(data).hexdigest()


def _canon(value: Any) -> Any:
    """JSON value in canonical form: integral floats as ints (1.0 and 1 are the same
    temperature), nulls dropped from objects."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return str(value)


def _collapse(text: str) -> str:
    return " ".join(text.split())




def _norm_content(content: Any) -> Any:
    if isinstance(content, str):
        return _collapse(content)
    if isinstance(content, list):
        parts = [p for p in content if p is not None]
        if all(isinstance(p, dict) and p.get("type", "text") == "text" for p in parts):
            # [{"type": "text", "text": "hi"}] and "hi" are the same question
            return _collapse(" ".join(str(p.get("text", "")) for p in parts))
        return [
            {**_canon(p), "text": _collapse(p["text"])}
            if isinstance(p, dict) and isinstance(p.get("text"), str)
            else _canon(p)
            for p in parts
        ]
    return _canon(content)


def _norm_message(m: Any) -> Any:
    if not isinstance(m, dict):
        return _canon(m)
    # Empty values ([] tool_calls, "" name) mean the same as absent: SDKs echo them back.
    out = {k: _canon(v) for k, v in m.items() if v not in (None, [], {}, "") and k != "content"}
    content = _norm_content(m.get("content"))
    if content not in (None, "", []):
        out["content"] = content
    return out


def _messages(body: dict) -> list[Any] | None:
    messages = body.get("messages")
    if isinstance(messages, list):
        return messages
    inp = body.get("input")
    return inp if isinstance(inp, list) else None


def _last_turn_index(msgs: list[Any]) -> int:
    """Index of the last user message; without one, of the last non-system message (the same
    choice as routing.features.request_text)."""
    dicts = [i for i, m in enumerate(msgs) if isinstance(m, dict)]
    users = [i for i in dicts if msgs[i].get("role") == "user"]
    if users:
        return users[-1]
    rest = [i for i in dicts if msgs[i].get("role") not in ("system", "developer")]
    return (rest or dicts or [-1])[-1]


def exact_key(body: dict) -> str:
    """sha256 hex of the normalised request: equal for requests that must get the same answer
    (key order, whitespace in messages, 1 vs 1.0, stream/user fields do not matter), different
    when the model, a message, or any sampling/format parameter differs."""
    payload: dict[str, Any] = {
        k: _canon(v) for k, v in body.items() if k not in IGNORED_FIELDS and v is not None
    }
    if isinstance(body.get("messages"), list):
        payload["messages"] = [_norm_message(m) for m in body["messages"]]
    for field in ("prompt", "input"):
        v = body.get(field)
        if isinstance(v, str):
            payload[field] = _collapse(v)
        elif isinstance(v, list):
            payload[field] = [_collapse(x) if isinstance(x, str) else _norm_message(x) for x in v]
    if isinstance(payload.get("model"), str):
        payload["model"] = payload["model"].strip()
    return _sha256([KEY_VERSION, "exact", payload])


def last_turn_text(body: dict) -> str:
    """The text whose embedding goes into `CacheKey.embedding`: the last user turn alone
    (its context is matched exactly through `context_hash`)."""
    msgs = _messages(body)
    if msgs is not None:
        i = _last_turn_index(msgs)
        return content_text(msgs[i].get("content")) if i >= 0 else ""
    for field in ("input", "prompt"):
        v = body.get(field)
        if isinstance(v, str):
            return v
        if isinstance(v, list):
            return "\n".join(x for x in v if isinstance(x, str))
    return ""


def numbers_signature(text: str) -> list[str]:
    """The numbers of a text in order ("1,000" == "1000"): questions that differ in a number
    usually need different answers but embed almost identically."""
    return [n.replace(",", "") for n in _NUMBER.findall(text)]


def context_hash(body: dict, *, numbers: bool = True) -> str:
    """sha256 hex of everything except the last user turn: system/developer prompts, earlier
    turns and tool results (messages after the last user turn included), the answer-shaping
    parameters (SHAPE_FIELDS) and, unless `numbers=False`, the numbers of the last turn."""
    msgs = _messages(body)
    context: list[Any] = []
    if msgs is not None:
        i = _last_turn_index(msgs)
        context = [_norm_message(m) for j, m in enumerate(msgs) if j != i]
    shape = {k: _canon(body[k]) for k in SHAPE_FIELDS if body.get(k) is not None}
    if isinstance(shape.get("model"), str):
        shape["model"] = shape["model"].strip()
    nums = numbers_signature(last_turn_text(body)) if numbers else None
    return _sha256([KEY_VERSION, "context", context, shape, nums])


def entry_id(team: str, exact: str) -> str:
    """Entry id (the `cache_entries` primary key): per team, so two teams sending the same
    request get two entries, never a shared one."""
    return hashlib.sha256(f"{KEY_VERSION}\0{team}\0{exact}".encode()).hexdigest()


def _context_code(ctx: str) -> int:
    """64-bit code of a context hash for the vectorised filter; a (2^-64) collision is caught
    by comparing the full hash of the entry found."""
    return int.from_bytes(hashlib.blake2b(ctx.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class CacheKey:
    team: str  # namespace: entries of one team are never visible to another
    exact: str  # exact_key(body)
    context_hash: str  # context_hash(body): a semantic hit needs the same context
    embedding: np.ndarray | None  # L2-normalised embedding of the last user turn, or None
    task: str | None = None  # task type, for per-task thresholds
    text: str = ""  # the last user turn (what the verifier compares)
    mode: str = "balanced"  # CachePolicy.semantic: strict | balanced | off


def make_key(
    body: dict,
    team: str,
    embedding: np.ndarray | None = None,
    task: str | None = None,
    mode: str = "balanced",
) -> CacheKey:
    return CacheKey(
        team, exact_key(body), context_hash(body), embedding, task, last_turn_text(body), mode
    )


@dataclass(frozen=True)
class CacheHit:
    response: dict  # the stored chat.completion body (a copy: safe to modify)
    kind: Literal["exact", "semantic"]
    similarity: float  # 1.0 for exact hits
    entry_id: str
    member: str | None  # the pool member that produced the answer
    age_s: float
    verifier_score: float | None = None  # None: exact hit, or no verifier


@dataclass(frozen=True)
class Lookup:
    """What a lookup found, for the decision row: the hit (or None) and, for the best
    semantic candidate, its cosine and the verifier's score."""

    hit: CacheHit | None
    similarity: float | None = None
    verifier_score: float | None = None
    reason: str = "miss"  # exact | verified | rejected | below_floor | off | no_candidate | ...
    mode: str | None = None

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.hit.kind if self.hit else "miss",
                               "reason": self.reason, "mode": self.mode}  # fmt: skip
        if self.similarity is not None:
            out["similarity"] = round(self.similarity, 4)
        if self.verifier_score is not None:
            out["verifier_score"] = round(self.verifier_score, 4)
        return out


@dataclass(slots=True)
class Entry:
    """A stored answer. Times are Unix seconds."""

    id: str
    team: str
    context_hash: str
    task: str | None
    embedding: np.ndarray | None
    response: dict
    member: str | None
    created_at: float
    expires_at: float
    hits: int = 0
    query: str | None = None  # the last user turn it answers (for the verifier)


QUERY_FIELD = "_greengate_query"  # where SQL rows keep `Entry.query` (inside `response`)


# Called with every new entry (e.g. SqlPersister: saves it in the background). An object that
# also has `delete_team(team)` is told about invalidations.
PersistFn = Callable[[Entry], None]


def _clone(response: dict) -> dict:
    return orjson.loads(orjson.dumps(response))


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
            import redis

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
        persist: PersistFn | None = None,
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
                            v = self.verifier.decide(key.mode, key.text, e.query, sim)
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
        return CacheHit(_clone(e.response), kind, sim, e.id, e.member,
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
                response=_clone(response),  # the caller may go on to modify its copy
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
                self.persist(entry)
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
        """Drop all entries of `team` (and its persisted rows, through a persist object that
        has `delete_team`); returns how many the store held."""
        n = self.store.delete_team(team)
        self._count("invalidated", n)
        forget = getattr(self.persist, "delete_team", None)
        if callable(forget):
            forget(team)
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


# -- SQL persistence --------------------------------------------------------------------------


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _ts(dt: datetime) -> float:
    # SQLite hands back naive datetimes; they were written as UTC.
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def save_entry(engine: Engine, entry: Entry) -> None:
    """Insert or replace the entry's row (blocking: call it off the response path)."""
    from gateway.schema import CacheEntry

    row = {
        "id": entry.id,
        "team": entry.team,
        "context_hash": entry.context_hash,
        "task": entry.task,
        "embedding": (
            np.ascontiguousarray(entry.embedding, dtype="<f4").tobytes()
            if entry.embedding is not None
            else None
        ),
        "response": (
            {**entry.response, QUERY_FIELD: entry.query}
            if entry.query is not None
            else entry.response
        ),
        "member": entry.member,
        "created_at": _dt(entry.created_at),
        "expires_at": _dt(entry.expires_at),
        "hits": entry.hits,
    }
    table = CacheEntry.__table__
    name = engine.dialect.name
    with engine.begin() as conn:
        if name in ("postgresql", "sqlite"):
            if name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            stmt = insert(table).values(**row)
            update = {k: stmt.excluded[k] for k in row if k != "id"}
            conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=update))
        else:
            conn.execute(table.delete().where(table.c.id == entry.id))
            conn.execute(table.insert().values(**row))


def delete_team(engine: Engine, team: str) -> int:
    """Delete a team's rows; returns how many."""
    from gateway.schema import CacheEntry

    table = CacheEntry.__table__
    with engine.begin() as conn:
        return conn.execute(table.delete().where(table.c.team == team)).rowcount or 0


def purge_expired(engine: Engine, now: float | None = None) -> int:
    """Delete rows past their expiry; returns how many."""
    from gateway.schema import CacheEntry

    table = CacheEntry.__table__
    cutoff = _dt(time.time() if now is None else now)
    with engine.begin() as conn:
        return conn.execute(table.delete().where(table.c.expires_at <= cutoff)).rowcount or 0


def load_from_sql(
    engine: Engine, cache: SemanticCache, now: float | None = None, *, purge: bool = True
) -> int:
    """Fill `cache` with the rows that have not expired (oldest first, so when a team has more
    than the cache's bound the newest are kept); returns how many were restored. With
    `purge`, expired rows are deleted first. With a RedisStore, call it only when Redis has
    lost the cache (`store.count() == 0`): Redis outlives gateway restarts by itself, and
    every replica reloading would only reset the LRU order."""
    import sqlalchemy as sa

    from gateway.schema import CacheEntry

    now = time.time() if now is None else now
    if purge:
        purge_expired(engine, now)
    table = CacheEntry.__table__
    query = sa.select(table).where(table.c.expires_at > _dt(now)).order_by(table.c.created_at)
    n = 0
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=500).execute(query):
            emb = (
                np.frombuffer(row.embedding, dtype="<f4").astype(np.float32)
                if row.embedding
                else None
            )
            response = dict(row.response)
            query = response.pop(QUERY_FIELD, None)
            entry = Entry(
                id=row.id,
                team=row.team,
                context_hash=row.context_hash,
                task=row.task,
                embedding=emb,
                response=response,
                member=row.member,
                created_at=_ts(row.created_at),
                expires_at=_ts(row.expires_at),
                hits=row.hits or 0,
                query=query if isinstance(query, str) else None,
            )
            n += cache.restore(entry, now)
    return n


class SqlPersister:
    """`persist` for SemanticCache: saves entries on one background thread so the response
    path never waits for the database. When more than `max_pending` saves are queued (the
    database is slow or down), new ones are dropped: the cache itself still has them."""

    def __init__(self, engine: Engine, *, max_pending: int = 1000) -> None:
        self.engine = engine
        self.max_pending = max_pending
        self.dropped = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="greengate-cache-sql")

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(self.engine, *args)
        except Exception:
            log.warning("cache persistence (%s) failed", fn.__name__, exc_info=True)
        finally:
            with self._lock:
                self._pending -= 1

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._pending >= self.max_pending:
                self.dropped += 1
                return
            self._pending += 1
        self._pool.submit(self._run, fn, *args)

    def __call__(self, entry: Entry) -> None:
        self._submit(save_entry, entry)

    def delete_team(self, team: str) -> None:
        self._submit(delete_team, team)

    def flush(self) -> None:
        """Wait for the queued work (tests, shutdown)."""
        self._pool.submit(lambda: None).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
