"""The cache's records: a stored entry, a hit, what a lookup found, and the persistence
protocol through which entries outlive the process (the SQL side lives in
gateway/cache_persistence.py, so routing/ never imports a table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import orjson


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


class Persistence(Protocol):
    """Keeps entries beyond the store (gateway.cache_persistence.SqlPersister saves them in the
    background). Called with every new entry and told about invalidations; never on the
    response path's critical section (implementations queue the work)."""

    def save(self, entry: Entry) -> None: ...

    def delete_team(self, team: str) -> None: ...


def clone(response: dict) -> dict:
    """A deep copy through JSON: what is stored can never be changed by a caller's copy."""
    return orjson.loads(orjson.dumps(response))
