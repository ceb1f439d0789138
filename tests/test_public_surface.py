"""Each package's public surface (`__all__` in its __init__.py): every name resolves, the
serving packages import each other through it, and importing it pulls no optional extra."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SURFACES = ["store", "extras", "telemetry", "bandits", "backends", "routing", "routing.cache",
            "routing.safety", "gateway", "web"]
# Packages whose modules serve requests; tests, bench/ and train/ may reach into modules.
SERVING = ["gateway", "web", "greengate", "routing", "backends", "telemetry", "store",
           "migrations", "extras", "bandits"]
# Sub-packages with a surface of their own (the engine: torch, imported where it is needed).
OWN_SURFACE = ("routing.cache", "routing.safety", "backends.engine")


@pytest.mark.parametrize("name", SURFACES)
def test_every_exported_name_resolves(name: str) -> None:
    pkg = importlib.import_module(name)
    assert pkg.__all__, f"{name} exports nothing"
    missing = [n for n in pkg.__all__ if not hasattr(pkg, n)]
    assert missing == [], f"{name}.__all__ names what it does not have: {missing}"


def _reaching_imports() -> list[str]:
    """`from other_pkg.module import x` in serving code where `other_pkg` is another package
    of ours: the import should name the package (or a sub-package with its own surface)."""
    out = []
    for top in SERVING:
        for f in sorted((REPO / top).rglob("*.py")):
            tree = ast.parse(f.read_text(), str(f))
            for n in ast.walk(tree):
                if not isinstance(n, ast.ImportFrom) or n.level or not n.module:
                    continue
                other = n.module.split(".")[0]
                if other == top or other not in SERVING or "." not in n.module:
                    continue
                if n.module == "migrations.runner" or n.module.startswith(OWN_SURFACE):
                    continue
                out.append(f"{f.relative_to(REPO)}:{n.lineno} from {n.module} import ...")
    return out


def test_serving_packages_import_each_other_through_the_surface() -> None:
    assert _reaching_imports() == []


def test_importing_the_surfaces_pulls_no_optional_extra() -> None:
    """In a fresh interpreter: the surfaces (and the app factory) import no torch, litellm,
    scikit-learn, redis, psycopg or NVML; those load when a configuration uses them."""
    code = ("import sys\n"
            f"for m in {SURFACES!r}: __import__(m)\n"
            "import greengate.app\n"
            "heavy = ('torch', 'litellm', 'sklearn', 'redis', 'psycopg', 'pynvml')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"},
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
