"""The admin UI in a real browser: Debian's Chromium driven by Playwright, against a real
gateway in front of the fake provider. Screenshots of every page at 1280 px and at 390 px
(phone) land in tests/artifacts/ for a person to look at."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.ui_support import ask_auto, lambda_pool, seed_history

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).parent / "artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium); "
                    "the UI tests never download a browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def extractor() -> Iterator[Any]:
    from routing.features import FeatureExtractor

    yield FeatureExtractor.default(3)


@pytest.fixture
def ui_gw(make_gateway: GatewayFactory, extractor: Any, fake: Any, fake_url: str) -> Gateway:
    return make_gateway(lambda_pool(fake_url), router="bandit", extractor=extractor,
                        safety_classifier=False)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def no_sideways_scroll(page: Any) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    if overflow > 1:
        shot(page, "overflow")
        wide = page.evaluate("""() => [...document.querySelectorAll('main *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
            .slice(0, 5).map(e => e.tagName + '.' + e.className + '#' + e.id)""")
        print("too wide:", wide)
    assert overflow <= 1, f"{page.url} is {overflow}px wider than the screen"


def sign_in(page: Any, gw: Gateway, key: str) -> None:
    page.goto(gw.url + "/ui")
    assert "/ui/login" in page.url
    page.fill("#key", key)
    page.click("#sign-in")
    page.wait_for_url(gw.url + "/ui")


def save_policy(page: Any, lam: float) -> None:
    page.fill("#lambda", str(lam))
    assert page.input_value("#lambda-range") == str(lam) or lam == 0  # the slider follows
    page.click("#save-policy")
    page.wait_for_selector(f"#policy-status.ok >> text=lambda {lam:g}")


def test_admin_console_end_to_end(browser: Any, ui_gw: Gateway) -> None:
    gw = ui_gw
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda d: d.accept())  # the revoke confirmation

    page.goto(gw.url + "/ui")
    shot(page, "01-login-1280")
    sign_in(page, gw, gw.admin_key)
    assert page.locator("#pool-table tr[data-member=big]").is_visible()
    assert "estimated" in page.inner_text("#pool-table")
    cookies = {c["name"]: c for c in ctx.cookies()}
    assert cookies["gg_session"]["httpOnly"] and cookies["gg_session"]["sameSite"] == "Strict"
    assert gw.admin_key not in str(ctx.storage_state())  # never kept by the browser
    page.goto(gw.url + "/ui/dashboards")
    assert page.locator("#no-data").is_visible()  # an empty gateway says so, no blank axes
    shot(page, "01-dashboards-empty-1280")

    # A team and a key; the key is shown once.
    page.click("nav >> text=Keys")
    page.fill("#team-name", "lab")
    page.click("#create-team")
    page.wait_for_selector("#teams-table >> text=lab")
    page.fill("#key-team", "lab")
    page.fill("#key-name", "notebook")
    page.click("#create-key")
    page.wait_for_selector("#new-key-dialog[open]")
    key = page.inner_text("#new-key-secret").strip()
    assert key.startswith("gg-")
    shot(page, "02-new-key-dialog-1280")
    page.click("#close-key-dialog")
    page.wait_for_selector("#keys-table >> text=notebook")
    assert key not in page.content()  # gone after the dialog
    shot(page, "03-keys-1280")

    # lambda decides the next auto request.
    page.click("nav >> text=Policies")
    page.click("#policies-table tr:has-text('lab') >> text=Edit")
    page.wait_for_url(re.compile(r".*/ui/policies/lab$"))
    page.uncheck("input[name=exploration]")
    page.fill("#mu", "0")
    save_policy(page, 0)
    r = ask_auto(gw, key)
    assert r.status_code == 200 and r.headers["x-greengate-member"] == "big"
    save_policy(page, 0.9)
    r = ask_auto(gw, key)
    assert r.status_code == 200 and r.headers["x-greengate-member"] == "green"
    rid = r.headers["x-request-id"]
    gw.decision(rid)
    page.reload()
    assert page.input_value("#lambda") == "0.9"
    assert page.locator("#recent-table tbody tr").count() == 2
    shot(page, "04-policy-1280")

    # The decision: features, candidates and why the winner won.
    page.goto(gw.url + "/ui/decisions?team=lab")
    shot(page, "05-decisions-1280")
    page.click(f"a[href='/ui/decisions/{rid}']")
    page.wait_for_url(f"**/ui/decisions/{rid}")
    why = page.inner_text("#why")
    assert why.startswith("green had the highest score") and "lower expected energy" in why
    assert page.locator("#candidates-table tbody tr").count() == 2
    assert page.locator("#candidates-table tr.win").inner_text().startswith("green")
    assert "lambda 0.9" in page.inner_text("main")
    shot(page, "06-decision-1280")

    # Dashboards draw real charts from the report (with a day of earlier traffic).
    seed_history(gw.engine)
    page.goto(gw.url + "/ui/dashboards?range=24h")
    page.wait_for_selector("#chart-energy .main-svg", state="attached")
    for chart in ("energy", "carbon", "cost", "jpt", "saved-cost", "saved-energy", "share"):
        bars = page.locator(f"#chart-{chart} .trace.bars path")
        assert bars.count() > 0, chart
    heights = page.eval_on_selector_all(
        "#chart-energy .trace.bars path", "ps => ps.map(p => p.getBBox().height)")
    assert max(heights) > 10  # drawn with data, not an empty axis
    assert sorted(page.locator("#chart-energy .legendtext").all_text_contents()) == ["lab", "ops"]
    shot(page, "07-dashboards-team-1280")
    page.select_option("#split", "member")
    page.wait_for_selector("#chart-energy .legendtext >> text=green")
    shot(page, "07-dashboards-member-1280")

    # Revoke the key: the next request with it is refused.
    page.goto(gw.url + "/ui/keys")
    page.click("#keys-table tr:has-text('notebook') >> button[data-revoke]")
    page.wait_for_selector("#keys-table tr:has-text('notebook') >> text=revoked")
    refused = ask_auto(gw, key)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "revoked_api_key"

    # Phone width: every page fits the screen.
    page.set_viewport_size(PHONE)
    for name, path in (("pool", "/ui"), ("keys", "/ui/keys"), ("policy", "/ui/policies/lab"),
                       ("decisions", "/ui/decisions"), ("decision", f"/ui/decisions/{rid}"),
                       ("dashboards", "/ui/dashboards?range=24h")):
        page.goto(gw.url + path)
        if name == "dashboards":
            page.wait_for_selector("#chart-share .main-svg", state="attached")
        no_sideways_scroll(page)
        shot(page, f"08-{name}-390")
    page.set_viewport_size(DESKTOP)
    page.goto(gw.url + "/ui")
    shot(page, "09-pool-1280")

    page.click("#logout")
    page.wait_for_url("**/ui/login")
    page.goto(gw.url + "/ui/keys")
    assert "/ui/login" in page.url
    assert not errors, errors
    ctx.close()


def test_team_key_sees_its_team_read_only(browser: Any, ui_gw: Gateway) -> None:
    gw = ui_gw
    key = gw.create_key("lab")
    other = gw.create_key("other")
    assert ask_auto(gw, key).status_code == 200
    assert ask_auto(gw, other).status_code == 200
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    sign_in(page, gw, key)
    assert "read-only" in page.inner_text("header")
    page.click("nav >> text=Policy")
    page.wait_for_url("**/ui/policies/lab")
    assert page.locator("#lambda").is_disabled() and page.locator("#lambda-range").is_disabled()
    assert page.locator("#save-policy").count() == 0
    no_sideways_scroll(page)
    shot(page, "10-team-policy-390")
    page.goto(gw.url + "/ui/decisions")
    teams = page.locator("#decisions-table td[data-label=Team]").all_text_contents()
    assert teams == ["lab"]
    # Writing through the API from this session is refused, CSRF token or not.
    status = page.evaluate("""async () => {
        const token = document.querySelector('meta[name="csrf-token"]').content;
        const r = await fetch('/admin/policies/lab', {method: 'PUT',
            headers: {'content-type': 'application/json', 'x-csrf-token': token},
            body: JSON.stringify({lambda: 1})});
        return r.status; }""")
    assert status == 403
    assert httpx.get(gw.url + "/admin/policies/lab", headers=gw.headers(),
                     timeout=10).status_code == 404  # nothing was written
    page.goto(gw.url + "/ui/keys")
    assert page.locator("#create-key").count() == 0
    assert page.locator("[data-revoke]").count() == 0
    shot(page, "11-team-keys-390")
    ctx.close()
