"""Shared by the UI tests: a two-member pool where lambda decides, and a signed-in client."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import Engine

from store.schema import Decision
from tests.conftest import ADMIN_KEY, Gateway

PROMPT = "Explain photosynthesis in two sentences."


def lambda_pool(fake_url: str) -> list[dict[str, Any]]:
    """'big' has the stronger warm-start prior and burns 40x the energy of 'green': at lambda
    0 'auto' picks big, at lambda 0.9 green."""
    return [
        {"name": "green", "kind": "openai", "model": "up-green", "base_url": fake_url,
         "prior": "mistralai/Mistral-7B-v0.1",
         "price": {"input_per_1m": 0.1, "output_per_1m": 0.1},
         "energy": {"j_per_token": 0.05, "source": "test figure"}},
        {"name": "big", "kind": "openai", "model": "up-big", "base_url": fake_url,
         "prior": "gpt-4-1106-preview",
         "price": {"input_per_1m": 1.0, "output_per_1m": 1.0},
         "energy": {"j_per_token": 2.0, "source": "test figure"}},
    ]


def ask_auto(gw: Gateway, key: str, text: str = PROMPT) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", headers=gw.headers(key), timeout=30,
                      json={"model": "auto", "max_tokens": 64,
                            "messages": [{"role": "user", "content": text}]})


def sign_in(gw: Gateway, key: str = ADMIN_KEY) -> httpx.Client:
    """A client holding a UI session, as a browser would after the sign-in form."""
    c = httpx.Client(base_url=gw.url, timeout=30)
    form = c.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token, form.text
    r = c.post("/ui/login", data={"key": key, "csrf": token.group(1), "next": "/ui"})
    assert r.status_code == 303, r.text
    return c


def csrf_of(client: httpx.Client, page: str = "/ui") -> str:
    m = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get(page).text)
    assert m, "no CSRF token on the page"
    return m.group(1)


def seed_history(engine: Engine, hours: int = 23) -> int:
    """A day of earlier traffic for two teams, so the dashboards have something to draw
    across the whole window (written straight to the decision log, as a replica would)."""
    now = datetime.now(UTC)
    rows = []
    for h in range(1, hours + 1):
        for i, (team, member) in enumerate((("lab", "green"), ("lab", "big"), ("ops", "big"),
                                            ("ops", "green"))):
            big = member == "big"
            n_out = 40 + (h * 7 + i * 13) % 90
            energy = n_out * (2.0 if big else 0.05)
            cost = (12 + n_out) * (1.0 if big else 0.1) / 1e6
            rows.append({
                "id": uuid.uuid4().hex, "created_at": now - timedelta(hours=h, minutes=i * 7),
                "team": team, "endpoint": "chat/completions", "requested_model": "auto",
                "served_member": member, "upstream_model": f"up-{member}",
                "route_reason": "auto:bandit", "stream": False, "status": 200,
                "latency_ms": 300 + 9 * n_out if big else 60 + n_out, "prompt_tokens": 12,
                "completion_tokens": n_out, "cost_usd": cost, "energy_j": energy,
                "energy_source": ("measured:nvml" if not big and h % 3 == 0
                                  else "estimated:declared-j-per-token"),
                "cache_hit": False, "gco2e": energy / 3.6e6 * 480,
                "counterfactual_member": "big", "counterfactual_cost_usd": (12 + n_out) / 1e6,
                "counterfactual_energy_j": n_out * 2.0})
    with engine.begin() as conn:
        conn.execute(sa.insert(Decision), rows)
    return len(rows)
