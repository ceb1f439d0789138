"""/docs (Swagger UI) and /redoc served with their assets from an installed package, so they
work without internet (FastAPI's defaults load them from a CDN: a blank page offline).

The assets come from the `fastapi-offline` wheel (Swagger UI's bundle and CSS, ReDoc's
standalone bundle, FastAPI's favicon), the one package on PyPI that ships both; greengate
uses only its static files, not its FastAPI subclass."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

ASSETS = "/docs-assets"
# ReDoc's bundle shows its maker's logo from a CDN: the one outside request it makes.
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
LOCAL_LOGO = (b'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16">'
              b'<rect width="16" height="16" rx="3" fill="#2e7d32"/></svg>')


def assets_dir() -> Path:
    return Path(str(resources.files("fastapi_offline") / "static"))


def install(app: FastAPI) -> None:
    """Needs an app created with docs_url=None and redoc_url=None."""
    title = app.title
    redoc_js: list[bytes] = []  # read once, on first use (no work at import or start)

    @app.get(f"{ASSETS}/redoc.standalone.js", include_in_schema=False)
    async def redoc_bundle() -> Response:
        if not redoc_js:
            raw = (assets_dir() / "redoc.standalone.js").read_bytes()
            redoc_js.append(raw.replace(REDOC_CDN_LOGO, f"{ASSETS}/redoc-logo.svg".encode()))
        return Response(redoc_js[0], media_type="text/javascript",
                        headers={"cache-control": "public, max-age=86400"})

    @app.get(f"{ASSETS}/redoc-logo.svg", include_in_schema=False)
    async def redoc_logo() -> Response:
        return Response(LOCAL_LOGO, media_type="image/svg+xml")

    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    def root(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=base + (app.openapi_url or "/openapi.json"), title=f"{title} - API",
            oauth2_redirect_url=base + "/docs/oauth2-redirect",
            swagger_js_url=f"{base}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSETS}/favicon.png",
            # no "valid" badge: it asks validator.swagger.io about the spec
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return get_redoc_html(openapi_url=base + (app.openapi_url or "/openapi.json"),
                              title=f"{title} - ReDoc",
                              redoc_js_url=f"{base}{ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{base}{ASSETS}/favicon.png",
                              with_google_fonts=False)
