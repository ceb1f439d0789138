"""Which adapters the engine can serve, which are resident, and which version a request pins.

An adapter name maps to a file (registered) or to versions a trainer published; each resident
version has an int key, used both by the runner (which deltas apply to a request's rows) and
as the KV block hash's extra key, so KV computed under one version is never reused by another.
A request leases the current version at submit and keeps it to its end, so a trainer publishing
a new version mid-stream never changes the weights a stream started with. Resident versions are
capped (LRU over idle ones); a version in use is never evicted, so the cap is exceeded rather
than a request refused while every resident adapter is busy (counted in `stats`). No torch
beyond holding the tensors the `build` callable makes.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backends.engine.lora.layers import AdapterTensors
from backends.engine.lora.weights import LoraWeights, load_adapter

__all__ = ["AdapterRegistry", "UnknownAdapter"]


class UnknownAdapter(ValueError):
    """A request named an adapter this engine does not know."""


@dataclass
class _Version:
    key: int
    name: str
    tensors: AdapterTensors
    rank: int
    leases: int = 0


class AdapterRegistry:
    def __init__(self, cap: int, build: Callable[[LoraWeights], AdapterTensors]) -> None:
        if cap < 1:
            raise ValueError("the resident adapter cap must be >= 1")
        self.cap = cap
        self._build = build
        self._paths: dict[str, Path] = {}
        self._current: dict[str, int] = {}  # name -> key of its newest version
        self._resident: OrderedDict[int, _Version] = OrderedDict()  # LRU order, oldest first
        self._keys = itertools.count(1)
        self.loads = 0
        self.over_cap = 0

    def register(self, name: str, path: Path) -> None:
        """Know `name` from a PEFT folder; loaded on first use. Checked now, so a bad file fails
        the call that registers it rather than a request."""
        load_adapter(path)
        self._paths[name] = path
        old = self._current.pop(name, None)
        if old is not None:
            self._retire(old)

    def publish(self, name: str, weights: LoraWeights) -> int:
        """Make `weights` the version new requests for `name` get (a trainer's snapshot)."""
        key = self._admit(name, weights)
        old = self._current.get(name)
        self._current[name] = key
        if old is not None:
            self._retire(old)
        return key

    def unregister(self, name: str) -> None:
        self._paths.pop(name, None)
        key = self._current.pop(name, None)
        if key is not None:
            self._retire(key)

    def names(self) -> list[str]:
        return sorted(set(self._paths) | set(self._current))

    def __contains__(self, name: str) -> bool:
        return name in self._paths or name in self._current

    def acquire(self, name: str) -> int:
        """Lease the current version of `name` (loading it if needed); returns its key."""
        key = self._current.get(name)
        if key is None or key not in self._resident:
            path = self._paths.get(name)
            if path is None:
                raise UnknownAdapter(f"no adapter named {name!r} is loaded in this engine")
            key = self._admit(name, load_adapter(path))
            self._current[name] = key
            self.loads += 1
        v = self._resident[key]
        v.leases += 1
        self._resident.move_to_end(key)
        return key

    def release(self, key: int) -> None:
        v = self._resident.get(key)
        if v is None:
            return
        v.leases = max(0, v.leases - 1)
        if v.leases == 0 and self._current.get(v.name) != key:
            del self._resident[key]  # an old version nobody reads any more
        self._evict()

    def tensors(self, key: int) -> AdapterTensors:
        return self._resident[key].tensors

    def stats(self) -> dict[str, object]:
        return {"cap": self.cap, "known": self.names(), "loads": self.loads,
                "over_cap": self.over_cap,
                "resident": [{"name": v.name, "key": v.key, "rank": v.rank, "leases": v.leases}
                             for v in self._resident.values()]}

    def _admit(self, name: str, weights: LoraWeights) -> int:
        key = next(self._keys)
        self._resident[key] = _Version(key, name, self._build(weights), weights.rank)
        self._evict(keep=key)
        return key

    def _retire(self, key: int) -> None:
        v = self._resident.get(key)
        if v is not None and v.leases == 0:
            del self._resident[key]

    def _evict(self, keep: int | None = None) -> None:
        while len(self._resident) > self.cap:
            victim = next((v for k, v in self._resident.items()
                           if v.leases == 0 and k != keep and self._reloadable(v)), None)
            if victim is None:
                self.over_cap += 1
                return
            del self._resident[victim.key]
            if self._current.get(victim.name) == victim.key:
                del self._current[victim.name]

    def _reloadable(self, v: _Version) -> bool:
        """Old versions, and current ones with a file; a trainer's current snapshot has no file
        to come back from, so it stays resident until a newer one replaces it."""
        return self._current.get(v.name) != v.key or v.name in self._paths
