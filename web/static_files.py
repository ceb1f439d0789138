"""Static files: the UI's own CSS and JS, and plotly.js straight from the installed plotly
package (a dependency, never a copy in this repository), gzipped once in memory."""

from __future__ import annotations

import gzip
import importlib.metadata
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from gateway import GatewayError

OWN = Path(__file__).parent / "static"
TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
YEAR = "public, max-age=31536000, immutable"


@lru_cache(maxsize=1)
def _own_version() -> str:
    # Changes whenever a static file does, so long cache lifetimes never serve stale files.
    stamp = max((p.stat().st_mtime_ns for p in OWN.iterdir()), default=0)
    return format(stamp, "x")[-8:]


def url(name: str) -> str:
    return f"/ui/static/{name}?v={_own_version()}"


@lru_cache(maxsize=1)
def plotly_version() -> str:
    return importlib.metadata.version("plotly")


def plotly_url() -> str:
    return f"/ui/static/plotly.min.js?v={plotly_version()}"


@lru_cache(maxsize=1)
def _plotly_js() -> tuple[bytes, bytes]:
    path = files("plotly") / "package_data" / "plotly.min.js"
    raw = path.read_bytes()
    return raw, gzip.compress(raw, compresslevel=6)


async def plotly(request: Request) -> Response:
    raw, packed = await run_in_threadpool(_plotly_js)
    headers = {"cache-control": YEAR, "vary": "accept-encoding",
               "x-content-type-options": "nosniff"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(packed, media_type=TYPES[".js"],
                        headers={**headers, "content-encoding": "gzip"})
    return Response(raw, media_type=TYPES[".js"], headers=headers)


async def own(request: Request) -> Response:
    name = request.path_params["name"]
    path = OWN / name
    # Only plain files directly inside web/static, of the kinds the UI uses.
    if "/" in name or "\\" in name or path.suffix not in TYPES or not path.is_file():
        raise GatewayError(404, f"No static file {name!r}.", code="not_found")
    return FileResponse(path, media_type=TYPES[path.suffix],
                        headers={"cache-control": YEAR, "x-content-type-options": "nosniff"})
