"""Pool members behind one `Member` interface: `openai` (aiohttp pass-through), `litellm`
(other providers, the [providers] extra), replicas of one model, and the bundled engine
(`backends.engine`, torch: the [engine] extra). Knows nothing of routing or the gateway.

Other packages import these names from `backends`. The engine's names (`EngineMember`,
`AdapterMember`) resolve on first use, so importing `backends` never imports torch."""

from __future__ import annotations

import importlib
from typing import Any

from backends.base import Endpoint, Member, UpstreamError, UpstreamRequest, UpstreamResponse
from backends.health import CircuitBreaker
from backends.litellm_member import LiteLLMMember
from backends.mock_upstream import MockBehaviour
from backends.mock_upstream import create_app as create_mock_upstream
from backends.openai_compat import HttpLimits, OpenAICompatMember
from backends.pool_config import (
    RANDOM_WEIGHTS_TAG,
    ConfigError,
    EnergyProfile,
    MemberConfig,
    PoolConfig,
    Price,
    default_pool,
    load_pool,
    with_engine_model,
)
from backends.replicas import ReplicaMember

_ENGINE = {"EngineMember": "backends.engine_backend", "AdapterMember": "backends.engine_backend"}

__all__ = [
    "RANDOM_WEIGHTS_TAG",
    "AdapterMember",
    "CircuitBreaker",
    "ConfigError",
    "Endpoint",
    "EnergyProfile",
    "EngineMember",
    "HttpLimits",
    "LiteLLMMember",
    "Member",
    "MemberConfig",
    "MockBehaviour",
    "OpenAICompatMember",
    "PoolConfig",
    "Price",
    "ReplicaMember",
    "UpstreamError",
    "UpstreamRequest",
    "UpstreamResponse",
    "create_mock_upstream",
    "default_pool",
    "load_pool",
    "with_engine_model",
]


def __getattr__(name: str) -> Any:
    """The engine's names, imported when first asked for (torch comes with them)."""
    module = _ENGINE.get(name)
    if module is None:
        raise AttributeError(f"module 'backends' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
