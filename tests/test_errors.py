"""Bad input gets an OpenAI-shaped error with the right status, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Gateway, GatewayFactory


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in r.text
    if param is not None:
        assert err["param"] == param
    return err


def chat(gw: Gateway, content: bytes | None = None, key: str | None = None,
         headers: dict | None = None) -> httpx.Response:
    h = {**gw.headers(key), "content-type": "application/json", **(headers or {})}
    return httpx.post(gw.v1 + "/chat/completions", content=content, headers=h, timeout=10)


def test_missing_and_bad_keys(gw: Gateway) -> None:
    body = b'{"model":"fake-small","messages":[{"role":"user","content":"x"}]}'
    r = httpx.post(gw.v1 + "/chat/completions", content=body, timeout=10)
    assert assert_error(r, 401)["code"] == "missing_api_key"
    assert assert_error(chat(gw, body, key="gg-nope"), 401)["code"] == "invalid_api_key"
    r = httpx.post(gw.v1 + "/chat/completions", content=body, timeout=10,
                   headers={"Authorization": "Basic abc"})
    assert_error(r, 401)
    assert_error(httpx.get(gw.v1 + "/models", timeout=10), 401)
    assert gw.count_decisions() == 0  # nobody known: nothing to attribute


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (b'"a string"', None),
        (b'{"messages":[{"role":"user","content":"x"}]}', "model"),
        (b'{"model": 5, "messages":[{"role":"user","content":"x"}]}', "model"),
        (b'{"model":"fake-small"}', "messages"),
        (b'{"model":"fake-small","messages":[]}', "messages"),
        (b'{"model":"fake-small","messages":"hello"}', "messages"),
        (b'{"model":"fake-small","messages":[{"content":"no role"}]}', "messages[0]"),
        (b'{"model":"fake-small","messages":[{"role":"user","content":"x"}],"temperature":9}',
         "temperature"),
        (b'{"model":"fake-small","messages":[{"role":"user","content":"x"}],"max_tokens":-1}',
         "max_tokens"),
        (b'{"model":"fake-small","messages":[{"role":"user","content":"x"}],"stream":"yes"}',
         "stream"),
        (b'{"model":"fake-small","messages":[{"role":"user","content":"x"}],"tools":{}}',
         "tools"),
    ],
)
def test_malformed_requests_get_400(gw: Gateway, fake, content: bytes, param: str | None) -> None:
    r = chat(gw, content)
    err = assert_error(r, 400, param)
    assert err["type"] == "invalid_request_error"
    assert r.headers["x-request-id"]
    assert fake.requests == []  # never reached the upstream


def test_bad_requests_still_leave_a_row(gw: Gateway) -> None:
    r = chat(gw, b'{"model":"fake-small","messages":[]}')
    row = gw.decision(r.headers["x-request-id"])
    assert row["status"] == 400 and row["requested_model"] == "fake-small"
    assert "messages" in row["error"]


def test_unknown_model_404(gw: Gateway) -> None:
    r = chat(gw, b'{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}')
    err = assert_error(r, 404, "model")
    assert err["code"] == "model_not_found" and "gpt-9" in err["message"]


def test_model_not_allowed_403(gw: Gateway, fake) -> None:
    key = gw.create_key("team-b", ["fake-small"])
    r = chat(gw, b'{"model":"fake-large","messages":[{"role":"user","content":"x"}]}', key=key)
    assert assert_error(r, 403, "model")["code"] == "model_not_allowed"
    models = httpx.get(gw.v1 + "/models", headers=gw.headers(key), timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["auto", "fake-small"]


def test_wrong_endpoint_for_member(gw: Gateway) -> None:
    r = chat(gw, b'{"model":"fake-embed","messages":[{"role":"user","content":"x"}]}')
    assert assert_error(r, 400, "model")["code"] == "wrong_endpoint"


def test_body_over_limit_413(make_gateway: GatewayFactory, fake) -> None:
    gw = make_gateway(max_body_bytes=2048)
    big = b'{"model":"fake-small","messages":[{"role":"user","content":"' + b"x" * 4096 + b'"}]}'
    assert_error(chat(gw, big), 413)

    def chunks():  # no content-length: the limit holds for chunked uploads too
        yield big[:1000]
        yield big[1000:]

    r = httpx.post(gw.v1 + "/chat/completions", content=chunks(), timeout=10,
                   headers={**gw.headers(), "content-type": "application/json"})
    assert_error(r, 413)
    assert fake.requests == []


def test_unknown_path_and_method(gw: Gateway) -> None:
    assert_error(httpx.get(gw.url + "/v1/nope", timeout=10), 404)
    assert_error(httpx.get(gw.v1 + "/chat/completions", timeout=10), 405)


def test_admin_api_needs_admin_key(gw: Gateway) -> None:
    key = gw.create_key("team-c")
    assert assert_error(httpx.get(gw.url + "/admin/keys", headers=gw.headers(key), timeout=10),
                        403)["code"] == "admin_only"
    assert_error(httpx.get(gw.url + "/admin/keys", timeout=10), 401)


def test_admin_validation_422(gw: Gateway) -> None:
    r = gw.post("/admin/keys", {"team": "bad name with spaces"})
    assert assert_error(r, 422)["param"] == "team"
    assert_error(gw.post("/admin/keys", {"name": "no team"}), 422)
