"""Schemathesis checks for greengate (loaded through SCHEMATHESIS_HOOKS by the fuzz test)."""

from __future__ import annotations

import json

import schemathesis


@schemathesis.check
def openai_error_shape(ctx, response, case) -> None:  # noqa: ANN001 - schemathesis' signature
    """Every 4xx is OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    if not 400 <= response.status_code < 500:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body") from None
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict), f"{response.status_code} without an 'error' object: {body}"
    assert isinstance(err.get("message"), str) and err["message"], "error.message missing"
    assert isinstance(err.get("type"), str) and err["type"], "error.type missing"
    assert set(err) >= {"message", "type", "param", "code"}, f"error keys: {sorted(err)}"


@schemathesis.check
def no_server_error(ctx, response, case) -> None:  # noqa: ANN001
    """No 5xx, except the one a caller asks for: a 504 at the deadline it set itself
    (request_timeout_s), which is the documented answer, not a fault."""
    if response.status_code < 500:
        return
    body = case.body if isinstance(case.body, dict) else {}
    if response.status_code == 504 and body.get("request_timeout_s") is not None:
        assert b'"request_timeout"' in response.content, response.content[:300]
        return
    raise AssertionError(f"server error {response.status_code}: {response.content[:300]!r}")
