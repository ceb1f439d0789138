"""/docs and /redoc work offline: every asset they load is served by greengate itself, and
Swagger UI and ReDoc render in a browser that may not reach anything but the gateway."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_load_only_local_assets(gw: Gateway, page: str) -> None:
    html = httpx.get(gw.url + page, timeout=10).text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    urls += re.findall(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""", html)
    assert urls, html
    assert not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
    for u in urls:
        r = httpx.get(gw.url + u, timeout=10)
        assert r.status_code == 200 and len(r.content) > 100, u


def test_browser_renders_both_offline(gw: Gateway) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser`")
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()

        def only_local(route) -> None:  # type: ignore[no-untyped-def]
            if route.request.url.startswith(gw.url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_local)
        page.goto(gw.url + "/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
        assert "greengate" in page.inner_text(".swagger-ui .info .title")
        assert page.locator(".opblock-summary-path", has_text="/v1/chat/completions").count()
        page.goto(gw.url + "/redoc")
        page.wait_for_selector("h1", timeout=30_000)
        assert "greengate" in page.inner_text("h1")
        browser.close()
    assert outside == []
