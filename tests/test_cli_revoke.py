"""`greengate keys revoke` says when a running gateway stops accepting the key, and with Redis
tells the gateways at once (the replicas' event bus)."""

from __future__ import annotations

import uuid

import orjson
import pytest
import redis

from gateway.settings import Settings
from greengate.cli import revocation_reach

REDIS_URL = "redis://127.0.0.1:6379/0"


def test_without_redis_it_says_how_long_the_key_cache_keeps_the_key() -> None:
    msg = revocation_reach(Settings(_env_file=None, key_cache_ttl_s=7.5), 3)
    assert "within 7.5 s" in msg and "GREENGATE_KEY_CACHE_TTL_S" in msg


def test_with_redis_the_gateways_are_told_on_their_bus() -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("Redis is not reachable")
    prefix = f"gg-test-{uuid.uuid4().hex[:8]}:"
    sub = client.pubsub()
    sub.subscribe(f"{prefix}events")
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    msg = revocation_reach(Settings(_env_file=None, redis_url=REDIS_URL, redis_prefix=prefix), 42)
    assert "were told" in msg
    got = sub.get_message(timeout=5)
    assert got is not None
    assert {"kind": "keys", "key_id": 42}.items() <= orjson.loads(got["data"]).items()
    sub.close()
    client.close()
