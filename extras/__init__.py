"""Optional parts of the install and the one line that says how to get a missing one.

`pip install greengate` is the gateway core; members and stores that need more come as extras
(pyproject.toml): `[engine]`, `[postgres]`, `[redis]`, `[providers]`, `[gpu]`, `[train]`,
`[all]`. Code that needs an extra imports it through `require`, so a missing one reads
"the litellm member needs `pip install greengate[providers]`" instead of a traceback.
The bottom of the layers: it imports nothing of ours."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtra", "require"]


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message is the one line to show."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        self.what, self.extra, self.module = what, extra, module
        super().__init__(f"{what} needs `pip install greengate[{extra}]` "
                         f"(module {module!r} is not installed)", name=module)


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or raise MissingExtra naming the extra that brings it. Only a missing
    module counts (ModuleNotFoundError, also what `sys.modules[name] = None` raises): a
    module that is there but fails for another reason raises as it is."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise MissingExtra(what, extra, e.name or module) from None
