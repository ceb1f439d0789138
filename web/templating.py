"""Jinja2 for the UI pages, with the number formats every page shares."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Undefined
from starlette.templating import Jinja2Templates

TEMPLATES = Path(__file__).parent / "templates"


def usd(v: float | None) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "$0"
    if abs(v) >= 1:
        return f"${v:,.2f}"
    # Per-request dollars are tiny: keep four significant digits instead of rounding to $0.00.
    decimals = min(10, max(2, 3 - math.floor(math.log10(abs(v)))))
    text = f"{v:.{decimals}f}".rstrip("0")
    if len(text.partition(".")[2]) < 2:
        text = f"{v:.2f}"
    return "$" + text


def num(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) < 0.001:
        # Plain decimals, not 4.67e-05: people compare these by eye.
        decimals = min(12, digits - 1 - math.floor(math.log10(abs(v))))
        return f"{v:.{decimals}f}"
    return f"{v:.{digits}g}"


def joules(j: float | None) -> str:
    if j is None:
        return "—"
    if abs(j) >= 3.6e6:
        return f"{j / 3.6e6:.3g} kWh"
    if abs(j) >= 3600:
        return f"{j / 3600:.3g} Wh"
    return f"{num(j)} J"


def energy(j: float | None, source: str | None) -> str:
    """Energy with where it came from: an estimate always says so."""
    if j is None:
        return "unknown"
    if source and source.startswith("estimated"):
        return f"{joules(j)} (estimated)"
    if source and source.startswith("measured"):
        return f"{joules(j)} (measured)"
    return joules(j)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.0f}%"


def params(billions: float | None) -> str:
    """A parameter count given in billions, as people say it: 9.7M, 1.5B, 70B."""
    if billions is None:
        return "—"
    n = billions * 1e9
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.0f}{unit}" if abs(v) >= 10 else f"{v:.2g}{unit}"
    return f"{n:.0f}"


def ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms"


def when(iso: str | None) -> str:
    if not iso:
        return "—"
    try:
        t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _tolerant(f: Callable[..., str]) -> Callable[..., str]:
    # A figure missing from the API answer (no traffic in a window) renders like None.
    def wrapped(v: Any, *args: Any) -> str:
        return f(None if isinstance(v, Undefined) else v, *args)

    return wrapped


@lru_cache(maxsize=1)
def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(TEMPLATES))
    env = t.env
    for f in (usd, num, joules, energy, pct, params, ms, when):
        env.filters[f.__name__] = _tolerant(f)
    env.globals["estimated"] = lambda src: bool(src) and str(src).startswith("estimated")
    return t


def render(template: str, context: dict[str, Any]) -> str:
    return templates().get_template(template).render(context)
