"""Values every SQL backend can store. PostgreSQL refuses NUL in text and JSON, and lone UTF-16
surrogates anywhere; VARCHAR(n) refuses longer values. A caller controls many of the strings
in a decision row (the model name, a feedback comment, an upstream's error text), so each one
is made storable before it reaches the database, and the row says what was changed."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import orjson
from sqlalchemy import JSON, String, Table, Text

REPLACEMENT = "\ufffd"
TEXT_MAX = 20_000  # a Text column is unbounded in SQL; an error message need not be
_BAD = re.compile("[\x00\ud800-\udfff]")


def clean_text(value: str, max_len: int | None = None) -> tuple[str, list[str]]:
    """`value` with NUL and lone surrogates replaced by U+FFFD and cut to `max_len` characters,
    and what was done (empty when nothing was)."""
    notes: list[str] = []
    if _BAD.search(value):
        # A valid surrogate pair cannot occur in a Python str (it would be one code point),
        # so every surrogate here is a lone one.
        value = _BAD.sub(REPLACEMENT, value)
        notes.append("invalid characters replaced")
    if max_len is not None and len(value) > max_len:
        value = value[: max_len - 1] + "\u2026"
        notes.append(f"truncated to {max_len} characters")
    return value, notes


def _json_is_clean(value: Any) -> bool:
    """The common case, cheaply: orjson refuses lone surrogates, writes NUL as an escape, and a
    document shorter than TEXT_MAX holds no string longer than it."""
    try:
        dumped = orjson.dumps(value)
    except TypeError:  # a lone surrogate, or something orjson cannot write: look closely
        return False
    return b"\\u0000" not in dumped and len(dumped) < TEXT_MAX


def clean_json(value: Any, notes: list[str], path: str) -> Any:
    """A copy of a JSON value whose strings (keys too) are storable; notes name the paths."""
    if isinstance(value, str):
        out, n = clean_text(value, TEXT_MAX)
        notes.extend(f"{path}: {x}" for x in n)
        return out
    if isinstance(value, dict):
        return {
            clean_json(str(k), notes, f"{path} key"): clean_json(v, notes, f"{path}.{k}")
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [clean_json(v, notes, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


@cache
def _plan(table: Table) -> tuple[tuple[str, int | None], ...]:
    """(column, length limit) per text column, None as the limit marking a JSON column:
    worked out once per table, since walking SQLAlchemy's columns per row costs more than
    the cleaning."""
    plan: list[tuple[str, int | None]] = []
    for col in table.columns:
        if isinstance(col.type, JSON):
            plan.append((col.name, None))
        elif isinstance(col.type, String | Text):
            plan.append((col.name, col.type.length or TEXT_MAX))
    return tuple(plan)


def storable_row(table: Table, row: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of `row` for `table` with every string column and JSON value storable, and the
    list of changes made ("column: what")."""
    out = dict(row)
    notes: list[str] = []
    for name, limit in _plan(table):
        v = out.get(name)
        if v is None:
            continue
        if limit is None:
            if not _json_is_clean(v):
                out[name] = clean_json(v, notes, name)
        elif isinstance(v, str) and (len(v) > limit or _BAD.search(v)):
            out[name], n = clean_text(v, limit)
            notes.extend(f"{name}: {x}" for x in n)
    return out, notes


def storable_decision(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """A decision row made storable, its changes listed under features.storage_notes."""
    out, notes = storable_row(table, row)
    if notes:
        features = dict(out.get("features") or {})
        features["storage_notes"] = notes
        out["features"] = features
    return out
