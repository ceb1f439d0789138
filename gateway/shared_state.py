"""What replicas share through Redis: a link that knows when Redis is away, and an event bus.

Why an event bus and not SQL polling: a budget, a key revocation or a policy written on one
replica must be in force on every other within a second, and polling SQL that often from
every replica for every kind of state costs the database more than the traffic does. Each
change is published on one pub/sub channel (`{prefix}events`) as a small JSON message that
says what changed; every replica reloads that piece from SQL (the source of truth) or, for
bandit learning, applies the additive update carried in the message.

Pub/sub is fire-and-forget: a replica that is disconnected misses messages. So:
- when the listener reconnects it raises a "resync" event: handlers reload everything;
- messages a replica could not publish (Redis away) wait in a bounded queue and go out on
  recovery (bandit deltas are additive, so late is as good as on time).

The link fails fast: after one failed call it is marked down and calls are refused at once
(`RedisDown`) while a background probe retries every `probe_s`, so an outage costs requests
nothing but a flag check, never a socket timeout each. The socket timeout (1 s) is long
enough that a busy machine (2 cores under load) is not taken for an outage."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

log = logging.getLogger("greengate.shared")
Handler = Callable[[dict[str, Any]], Any]
OUTBOX_MAX = 50_000  # unpublished messages kept while Redis is away; the oldest go first


class RedisDown(Exception):
    """Redis did not answer (or was marked away by an earlier failure)."""


@dataclass
class LinkStats:
    failures: int = 0
    recoveries: int = 0
    down_since: float | None = None  # time.time() of the first failure of this outage


class RedisLink:
    """A Redis client that fails fast during an outage and tells listeners on recovery."""

    def __init__(self, url: str, timeout_s: float = 1.0, probe_s: float = 0.5,
                 client: Any = None) -> None:
        import redis

        self.url = url
        self.probe_s = probe_s
        self.client = client or redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=0)
        self.ok = True
        self.stats = LinkStats()
        self._on_recover: list[Callable[[], Any]] = []
        self._probe: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # where the probe runs
        self._errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError, redis.TimeoutError, OSError)

    def on_recover(self, fn: Callable[[], Any]) -> None:
        """Called (on the event loop; may be a coroutine function) when Redis answers again."""
        self._on_recover.append(fn)

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """fn(client), or RedisDown without touching the network while Redis is away."""
        if self._loop is None:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
        if not self.ok:
            raise RedisDown("redis marked unreachable")
        try:
            return fn(self.client)
        except self._errors as e:
            self._down(e)
            raise RedisDown(str(e)) from None

    def _down(self, e: BaseException) -> None:
        if self.ok:
            log.warning("redis unreachable (%s): shared state degraded until it answers",
                        type(e).__name__)
            self.stats.down_since = time.time()
        self.ok = False
        self.stats.failures += 1
        self._start_probe()

    def _start_probe(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a worker thread (budget charges): hand it to the loop
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._start_probe)
            return
        if self._probe is None or self._probe.done():
            self._probe = loop.create_task(self._probe_loop(), name="redis-probe")

    async def _probe_loop(self) -> None:
        while not self.ok:
            await asyncio.sleep(self.probe_s)
            try:
                await asyncio.to_thread(self.client.ping)
            except Exception:
                continue
            self.ok = True
            self.stats.recoveries += 1
            log.info("redis answers again after %.1f s; reconciling shared state",
                     time.time() - (self.stats.down_since or time.time()))
            self.stats.down_since = None
            for fn in self._on_recover:
                try:
                    out = fn()
                    if asyncio.iscoroutine(out):
                        await out
                except Exception:
                    log.exception("reconciling after the redis outage failed")

    def ensure_probe(self) -> None:
        """From the loop: start the probe if a worker thread saw the outage."""
        if not self.ok:
            self._start_probe()

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(BaseException):
                await self._probe
        with contextlib.suppress(Exception):
            self.client.close()


@dataclass
class BusStats:
    published: int = 0
    received: int = 0
    own_skipped: int = 0
    resyncs: int = 0
    outbox_dropped: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class EventBus:
    """One pub/sub channel per deployment prefix. `publish(kind, data)` from anywhere;
    handlers run on the event loop. A replica's own messages are not handed back to it."""

    def __init__(self, link: RedisLink, prefix: str) -> None:
        self.link = link
        self.channel = f"{prefix}events"
        self.replica = uuid.uuid4().hex[:12]
        self.stats = BusStats()
        self._handlers: dict[str, list[Handler]] = collections.defaultdict(list)
        self._outbox: collections.deque[bytes] = collections.deque(maxlen=OUTBOX_MAX)
        self._outbox_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.listening = False
        link.on_recover(self.flush)

    def on(self, kind: str, handler: Handler) -> None:
        """handler(message) for each message of `kind` ("resync": after a reconnect)."""
        self._handlers[kind].append(handler)

    # ---- publishing --------------------------------------------------------------------
    def publish(self, kind: str, data: dict[str, Any] | None = None) -> bool:
        """Send now, or queue for when Redis answers again; True when sent."""
        msg = orjson.dumps({"kind": kind, "from": self.replica, "at": time.time(),
                            **(data or {})})
        try:
            self.link.call(lambda r: r.publish(self.channel, msg))
        except RedisDown:
            with self._outbox_lock:
                if len(self._outbox) == self._outbox.maxlen:
                    self.stats.outbox_dropped += 1
                self._outbox.append(msg)
            return False
        self.stats.published += 1
        return True

    async def publish_async(self, kind: str, data: dict[str, Any] | None = None) -> bool:
        """publish() off the event loop (a network round trip)."""
        return await asyncio.to_thread(self.publish, kind, data)

    def flush(self) -> None:
        """Send what waited during an outage (called on recovery)."""
        while True:
            with self._outbox_lock:
                if not self._outbox:
                    return
                msg = self._outbox[0]
            try:
                self.link.call(lambda r, m=msg: r.publish(self.channel, m))
            except RedisDown:
                return
            with self._outbox_lock:
                if self._outbox and self._outbox[0] is msg:
                    self._outbox.popleft()
            self.stats.published += 1

    @property
    def waiting(self) -> int:
        return len(self._outbox)

    # ---- listening ---------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._listen, name="greengate-bus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _listen(self) -> None:
        """The listener thread: subscribe, hand messages to the loop, reconnect on error."""
        first = True
        while not self._stop.is_set():
            ps = None
            try:
                ps = self.link.client.pubsub(ignore_subscribe_messages=True)
                ps.subscribe(self.channel)
                self.listening = True
                if not first:  # messages were missed while away: reload everything
                    self._dispatch({"kind": "resync", "from": "", "at": time.time()})
                first = False
                while not self._stop.is_set():
                    m = ps.get_message(timeout=0.5)
                    if m is not None and m.get("type") == "message":
                        self._handle_raw(m["data"])
            except Exception as e:
                if self.listening:
                    log.warning("event bus disconnected (%s); reconnecting", type(e).__name__)
                self.listening = False
                if self._loop is not None:
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(self.link.ensure_probe)
                self._stop.wait(0.3)
            finally:
                if ps is not None:
                    with contextlib.suppress(Exception):
                        ps.close()
        self.listening = False

    def _handle_raw(self, raw: bytes) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.error("unreadable bus message skipped: %r", raw[:200])
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("kind"), str):
            return
        if msg.get("from") == self.replica:
            self.stats.own_skipped += 1
            return
        self._dispatch(msg)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if self._loop is None:
            return
        kind = msg["kind"]
        if kind == "resync":
            self.stats.resyncs += 1
        else:
            self.stats.received += 1
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        for h in list(self._handlers.get(kind, ())):
            with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                self._loop.call_soon_threadsafe(self._run_handler, h, msg)

    @staticmethod
    def _run_handler(h: Handler, msg: dict[str, Any]) -> None:
        try:
            out = h(msg)
            if asyncio.iscoroutine(out):
                task = asyncio.get_running_loop().create_task(out)
                task.add_done_callback(_log_failure)
        except Exception:
            log.exception("bus handler for %r failed", msg.get("kind"))


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("bus handler failed", exc_info=task.exception())


__all__ = ["EventBus", "RedisDown", "RedisLink"]
