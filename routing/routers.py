"""The routers `model: auto` can use, listed in one place: a new router is added to ROUTER_TYPES
here, not registered as a side effect of importing its module (which made the gateway import
a module it never named only so that its decorator ran)."""

from __future__ import annotations

from routing.bandit_router import BanditRouter
from routing.router import CheapestRouter, Router

ROUTER_TYPES: tuple[type[Router], ...] = (CheapestRouter, BanditRouter)


def router_names() -> list[str]:
    return sorted(cls.name for cls in ROUTER_TYPES)


def router_class(name: str) -> type[Router]:
    """The router called `name` (`settings.router`); ValueError names the known ones."""
    for cls in ROUTER_TYPES:
        if cls.name == name:
            return cls
    raise ValueError(f"unknown router {name!r}; known: {', '.join(router_names())}")
