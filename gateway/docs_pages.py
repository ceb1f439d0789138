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
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "/docs-assets"


def assets_dir() -> Path:
    return Path(str(resources.files("fastapi_offline") / "static"))


def install(app: FastAPI) -> None:
    """Needs an app created with docs_url=None and redoc_url=None."""
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")
    title = app.title

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
            swagger_favicon_url=f"{base}{ASSETS}/favicon.png")

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
