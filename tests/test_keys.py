"""Teams and virtual keys: admin API and CLI, hashed storage, revocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import sqlalchemy as sa

from gateway.keys import hash_key
from tests.conftest import Gateway

MSG = [{"role": "user", "content": "hi"}]


def test_key_lifecycle_via_admin_api(gw: Gateway, fake) -> None:
    r = gw.post("/admin/teams", {"name": "research"})
    assert r.status_code == 201
    assert gw.post("/admin/teams", {"name": "research"}).status_code == 409

    r = gw.post("/admin/keys", {"team": "research", "name": "notebook",
                                "allowed_models": ["fake-small", "auto"]})
    assert r.status_code == 201
    created = r.json()
    secret = created["key"]
    assert secret.startswith("gg-") and created["prefix"] == secret[:10]

    ok = gw.post("/v1/chat/completions", {"model": "fake-small", "messages": MSG}, key=secret)
    assert ok.status_code == 200
    row = gw.decision(ok.headers["x-request-id"])
    assert row["team"] == "research" and row["key_id"] == created["id"]
    assert row["key_prefix"] == secret[:10]

    listed = httpx.get(gw.url + "/admin/keys?team=research", headers=gw.headers(),
                       timeout=10).json()
    assert [k["prefix"] for k in listed] == [secret[:10]]
    assert secret not in json.dumps(listed)

    # Only the hash is stored.
    with gw.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT key_hash, prefix FROM api_keys")).all()
    assert stored == [(hash_key(secret), secret[:10])]

    r = httpx.delete(gw.url + f"/admin/keys/{created['id']}", headers=gw.headers(), timeout=10)
    assert r.status_code == 200 and r.json()["revoked_at"]
    refused = gw.post("/v1/chat/completions", {"model": "fake-small", "messages": MSG},
                      key=secret)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "revoked_api_key"

    missing = httpx.delete(gw.url + "/admin/keys/99999", headers=gw.headers(), timeout=10)
    assert missing.status_code == 404


def test_unknown_model_in_key_is_refused(gw: Gateway) -> None:
    r = gw.post("/admin/keys", {"team": "t", "allowed_models": ["gpt-9"]})
    assert r.status_code == 400 and "gpt-9" in r.json()["error"]["message"]


def test_cli_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    env = {**os.environ, "GREENGATE_DATABASE_URL": url, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}

    def gg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "greengate.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    r = gg("keys", "create", "--team", "ops", "--name", "ci", "--models", "fake-small,auto")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["team"] == "ops" and created["allowed_models"] == ["fake-small", "auto"]
    assert "only its hash" in r.stderr

    listed = gg("keys", "list")
    assert created["prefix"] in listed.stdout and created["key"] not in listed.stdout
    assert "active" in listed.stdout

    assert gg("keys", "revoke", created["prefix"]).returncode == 0
    assert "revoked" in gg("keys", "list", "--team", "ops").stdout
    assert gg("keys", "revoke", "gg-nothing").returncode == 1

    assert gg("teams", "create", "finance").returncode == 0
    assert gg("teams", "create", "finance").returncode == 1
    assert "finance" in gg("teams", "list").stdout
