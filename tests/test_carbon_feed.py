"""Carbon intensity feeds: the static daily profile (greengate.yaml's or the built-in one), an
HTTP forecast served by a real local server in the carbon-intensity API's shape, and the
fallback to the profile when the forecast does not answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from backends.pool_config import PoolConfig
from telemetry.carbon_feed import (
    DEFAULT_PROFILE,
    CarbonFeedConfig,
    HttpForecast,
    StaticProfile,
    make_feed,
    parse_forecast,
)
from tests.conftest import closed_port_url
from tests.servers import ServerThread

NOON = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_static_profile_interpolates_and_shifts() -> None:
    p = StaticProfile([100.0 + 10 * h for h in range(24)])
    assert p.intensity_at(NOON) == 220.0
    assert p.intensity_at(NOON + timedelta(minutes=30)) == pytest.approx(225.0)
    shifted = StaticProfile([100.0 + 10 * h for h in range(24)], utc_offset_h=2)
    assert shifted.intensity_at(NOON) == 240.0  # 14:00 local
    assert max(DEFAULT_PROFILE) / min(DEFAULT_PROFILE) == pytest.approx(2.0)


def test_profile_from_the_pool_file() -> None:
    cfg = PoolConfig.model_validate({"pool": [{"name": "m", "kind": "openai", "model": "x",
                                               "base_url": "http://127.0.0.1:1/v1"}],
                                     "carbon": {"profile": [50.0] * 24, "label": "mine"}})
    feed = make_feed(cfg.carbon)
    assert feed.intensity_at(NOON) == 50.0 and feed.source == "mine"
    with pytest.raises(ValueError):
        CarbonFeedConfig(profile=[1.0] * 23)
    with pytest.raises(ValueError):
        make_feed(CarbonFeedConfig(source="http"))  # no url


def _forecast_server(calls: list[int]) -> ServerThread:
    async def forecast(_):  # type: ignore[no-untyped-def]
        calls.append(1)
        return JSONResponse({"data": [
            {"from": "2026-06-01T12:00Z", "to": "2026-06-01T12:30Z",
             "intensity": {"forecast": 111, "actual": None, "index": "low"}},
            {"from": "2026-06-01T12:30Z", "to": "2026-06-01T13:00Z", "intensity": 222}]})

    return ServerThread(Starlette(routes=[Route("/intensity", forecast)])).start()


def test_http_forecast_and_fallback() -> None:
    calls: list[int] = []
    server = _forecast_server(calls)
    try:
        fallback = StaticProfile([300.0] * 24, label="profile")
        feed = HttpForecast(server.url + "/intensity", fallback, refresh_s=3600)
        assert feed.intensity_at(NOON) == 111.0
        assert feed.intensity_at(NOON + timedelta(minutes=45)) == 222.0
        assert feed.intensity_at(NOON + timedelta(hours=3)) == 300.0  # beyond the forecast
        assert len(calls) == 1 and feed.source.startswith("http forecast")  # cached
    finally:
        server.stop()
    away = HttpForecast(closed_port_url(), StaticProfile([300.0] * 24, label="profile"))
    assert away.intensity_at(NOON) == 300.0
    assert "unavailable" in away.source


def test_parse_forecast_skips_unknown_figures() -> None:
    rows = parse_forecast({"data": [
        {"from": "2026-06-01T12:00Z", "to": "2026-06-01T12:30Z", "intensity": {}},
        {"from": "2026-06-01T12:30Z", "to": "2026-06-01T13:00Z", "intensity": 5}]})
    assert [r[2] for r in rows] == [5.0]
