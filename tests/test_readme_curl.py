"""Every curl command in the README, run as written (real curl, real bash) against a gateway.

The commands are read from the README's ```bash blocks (continuation lines joined), so a curl
line added to the README is tested without touching this file. Only the address changes
(`http://127.0.0.1:8000` becomes the test gateway's); `$KEY` is the admin key, as the README's
`KEY=$(cat .greengate/admin_key)` sets it; a placeholder such as `<x-request-id>` is filled
with a real one. Each command must answer 2xx with a body that is not an error.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, GatewayFactory

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_BASE = "http://127.0.0.1:8000"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def readme_curl_commands(text: str) -> list[str]:
    """The curl commands of the README's bash blocks, one string each (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip()
            if line.startswith("curl "):
                commands.append(line)
    return commands


COMMANDS = readme_curl_commands(README.read_text())


def test_the_readme_has_its_curl_commands() -> None:
    # Chat, feedback, a budget, a report at least: a parsing slip must not test nothing.
    assert len(COMMANDS) >= 4
    assert all(README_BASE in c for c in COMMANDS)


def _prepare(gw: Gateway) -> dict[str, str]:
    """What the README's reader has at that point: a team with a key (teams come from keys)
    and an answered request whose id feedback can name."""
    gw.create_key("research")
    r = gw.post("/v1/chat/completions",
                {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return {"<x-request-id>": r.headers["x-request-id"]}


def run_curl(command: str, gw: Gateway, fills: dict[str, str]) -> tuple[int, str]:
    command = command.replace(README_BASE, gw.url)
    for placeholder, value in fills.items():
        command = command.replace(placeholder, value)
    # -w appends the status on its own line; -sS shows transport errors.
    proc = subprocess.run(
        ["bash", "-c", command + " -sS -w '\\n%{http_code}'"],
        env={"KEY": gw.admin_key, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"{command}\n{proc.stderr}"
    body, _, status = proc.stdout.rpartition("\n")
    return int(status), body


@pytest.mark.parametrize("command", COMMANDS, ids=[f"curl-{i}" for i in range(len(COMMANDS))])
def test_readme_curl_command_works(command: str, make_gateway: GatewayFactory) -> None:
    gw = make_gateway(router="cheapest")
    fills = _prepare(gw)
    status, body = run_curl(command, gw, fills)
    assert 200 <= status < 300, f"{command}\n-> {status} {body}"
    if body.lstrip().startswith(("{", "[")):
        data = json.loads(body)
        assert not (isinstance(data, dict) and "error" in data), body


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"],
                         ids=["no-header", "curl-default"])
def test_a_json_body_without_its_header_is_read_as_json(
    gw: Gateway, content_type: str | None
) -> None:
    # curl -d labels a body application/x-www-form-urlencoded unless told otherwise.
    gw.create_key("research")
    headers = gw.headers() | ({"content-type": content_type} if content_type else {})
    body = json.dumps({"scope": "team", "subject": "research", "metric": "usd",
                       "period": "day", "limit": 5})
    r = httpx.post(gw.url + "/admin/budgets", content=body, headers=headers, timeout=30)
    assert r.status_code == 201, r.text


def test_a_body_that_is_not_json_is_refused_naming_the_header(gw: Gateway) -> None:
    headers = gw.headers() | {"content-type": "application/x-www-form-urlencoded"}
    r = httpx.post(gw.url + "/admin/budgets", content="scope=team&subject=research",
                   headers=headers, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_json"
    assert "Content-Type: application/json" in err["message"]
