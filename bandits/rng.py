"""JSON-safe snapshots of a NumPy PCG64 generator.

PCG64's state and increment are 128-bit integers; JSON tools outside Python (JavaScript,
many stores) silently round integers above 2**53, so they travel as decimal strings."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np


def make_rng(seed: int | None) -> np.random.Generator:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return np.random.Generator(np.random.PCG64(seed))


def rng_to_state(rng: np.random.Generator) -> dict[str, Any]:
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise ValueError(f"only PCG64 generators can be saved, got {st['bit_generator']}")
    return {
        "bit_generator": "PCG64",
        "state": str(st["state"]["state"]),
        "inc": str(st["state"]["inc"]),
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    try:
        if state["bit_generator"] != "PCG64":
            raise ValueError(f"unsupported bit generator {state['bit_generator']!r}")
        bit_gen = np.random.PCG64(0)
        bit_gen.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(state["state"]), "inc": int(state["inc"])},
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed RNG state: {exc!r}") from None
    return np.random.Generator(bit_gen)
