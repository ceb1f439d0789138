"""A member with several replica endpoints: placement by load and prefix affinity, ejection and
probing, and migration of a stream to another replica when one dies or preempts it.

A user grows past one machine by listing the OpenAI-compatible engines they already run
(greengate engine servers, vLLM, SGLang, TGI, llama.cpp) as one member's `endpoints`; greengate
places each request on one of them, it does not manage them.

Placement, per request (in the spirit of the SGLang router and Llumnix):
- load comes from each replica's `/metrics`, scraped in the background (never on the request
  path): greengate's own names, vLLM's `vllm:num_requests_running`/`_waiting` and
  `vllm:kv_cache_usage_perc` (or `gpu_cache_usage_perc`), SGLang's and TGI's where present,
  together with the requests this member has in flight there (a scrape is up to an interval
  old; a burst would otherwise land on one replica);
- prefix affinity: the first blocks of the prompt's text are hashed (chained, as the engine
  hashes KV blocks) and the hash picks a replica on a consistent-hash ring, so requests sharing
  a long prefix (a system prompt) land where that prefix is already cached, and a replica that
  leaves or joins moves only its own share of prefixes. When the ring's replica is overloaded
  (KV nearly full, or its load well above the least loaded one's), least load wins instead.
  Requests in flight there with the same prefix count half: they share its prefill (the
  engine computes a prefix once and the others wait for it and hit it), so a burst on one
  system prompt is not sent away from its cache the moment its siblings queue up, yet one hot
  prefix cannot take more than about twice the least loaded replica's load.
- `round_robin` and `least_load` stay available (the benchmark compares all three).

Migration (Llumnix's idea, simple form): when a replica dies mid-stream, or a greengate engine
server reports that it preempted the request, the stream resumes on another replica with the
tokens already streamed appended to the prompt: token ids for greengate servers (exact: a greedy
continuation equals what the first replica would have produced), the streamed text for other
engines (chat via vLLM/SGLang's `continue_final_message`). The client sees one stream; the
decision row records each replica the request ran on and the migration (`usage.replicas`, which
the gateway moves into the row)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from backends.base import (
    EXTENSION_FIELD,
    Member,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
)
from backends.openai_compat import HttpLimits, OpenAICompatMember
from backends.pool_config import MemberConfig, ReplicaOptions

log = logging.getLogger("greengate.replicas")

RING_POINTS = 64  # virtual nodes per replica: an even share of the hash space for each
# What a request in flight with the same prefix key weighs in the overload test (others: 1).
SIBLING_WEIGHT = 0.5
# A new prefix goes to its ring owner unless another replica has more than this many fewer
# requests; then to the least loaded one.
NEW_PREFIX_SLACK = 1.0
HOMES = 4096  # prefix keys whose first replica a member remembers

# Metric names by engine, summed over label sets (vLLM labels by model name).
RUNNING = ("greengate_engine_running_requests", "vllm:num_requests_running",
           "sglang:num_running_reqs", "tgi_batch_current_size")
WAITING = ("greengate_engine_waiting_requests", "vllm:num_requests_waiting",
           "sglang:num_queue_reqs", "tgi_queue_size")
KV_USAGE = ("greengate_engine_kv_cache_usage", "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc", "sglang:token_usage")
KINDS = (("greengate_engine_", "greengate"), ("vllm:", "vllm"), ("sglang:", "sglang"),
         ("tgi_", "tgi"))


# --- metrics -------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {name: value}, values of one name summed over its labels."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_end = line.find("{")
        if name_end < 0:
            name, _, rest = line.partition(" ")
        else:
            name = line[:name_end]
            close = line.find("}", name_end)
            rest = line[close + 1:] if close >= 0 else ""
        parts = rest.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + value
    return out


@dataclass(frozen=True)
class ReplicaLoad:
    """One scrape of a replica's /metrics; None where the engine does not publish a figure."""

    kind: str
    running: float | None
    waiting: float | None
    kv_usage: float | None
    tokens_per_s: float | None
    prefix_hit_tokens: float | None
    prompt_tokens: float | None
    at: float

    @classmethod
    def from_metrics(cls, values: dict[str, float], at: float) -> ReplicaLoad:
        def first(names: tuple[str, ...]) -> float | None:
            return next((values[n] for n in names if n in values), None)

        kind = next((k for prefix, k in KINDS if any(n.startswith(prefix) for n in values)),
                    "openai")
        kv = first(KV_USAGE)
        return cls(kind=kind, running=first(RUNNING), waiting=first(WAITING),
                   kv_usage=None if kv is None else min(max(kv, 0.0), 1.0),
                   tokens_per_s=values.get("greengate_engine_tokens_per_second"),
                   prefix_hit_tokens=values.get("greengate_engine_prefix_cache_hit_tokens_total"),
                   prompt_tokens=values.get("greengate_engine_prompt_tokens_total"), at=at)


# --- replicas and placement ----------------------------------------------------------------


class _WholeBody(UpstreamRequest):
    """A request to a replica that is a greengate engine server: the extension object goes
    with it (a plain OpenAI provider gets the body without it)."""

    def wire_body(self) -> dict:
        return self.body


@dataclass
class Replica:
    url: str  # the OpenAI base, e.g. http://gpu-1:8000/v1
    client: OpenAICompatMember
    load: ReplicaLoad | None = None
    inflight: int = 0
    inflight_keys: dict[int, int] = field(default_factory=dict)  # prefix key -> in flight
    ejected: bool = False
    ejected_at: float = 0.0
    scrape_failures: int = 0
    ejections: int = 0
    served: int = 0
    migrated_out: int = 0
    migrated_in: int = 0
    energy_j: float = 0.0
    energy_sources: set[str] = field(default_factory=set)

    @property
    def root(self) -> str:
        """Where /metrics and /health live: the base URL without its /v1."""
        base = self.url.rstrip("/")
        return base[:-3] if base.endswith("/v1") else base

    @property
    def kind(self) -> str:
        return self.load.kind if self.load is not None else "unknown"

    def queue(self) -> float:
        """Requests on the replica: what its metrics say, or at least what we sent there."""
        scraped = 0.0
        if self.load is not None:
            scraped = (self.load.running or 0.0) + (self.load.waiting or 0.0)
        return max(float(self.inflight), scraped)

    def state(self) -> dict[str, Any]:
        ld = self.load
        return {"url": self.url, "kind": self.kind,
                "state": "ejected" if self.ejected else "healthy",
                "inflight": self.inflight, "running": ld.running if ld else None,
                "waiting": ld.waiting if ld else None, "kv_usage": ld.kv_usage if ld else None,
                "tokens_per_s": ld.tokens_per_s if ld else None,
                "scraped_s_ago": round(time.monotonic() - ld.at, 1) if ld else None,
                "served": self.served, "ejections": self.ejections,
                "migrated_out": self.migrated_out, "migrated_in": self.migrated_in,
                "energy_j": self.energy_j if self.energy_sources else None,
                "energy_source": _merge_sources(self.energy_sources)}


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def prompt_text(endpoint: str, body: dict) -> str:
    """The prompt as text, in order (chat: role and content of each message)."""
    if endpoint == "chat/completions":
        parts = []
        for m in body.get("messages") or []:
            if isinstance(m, dict):
                content = m.get("content")
                if isinstance(content, list):
                    content = "".join(str(p.get("text", "")) for p in content
                                      if isinstance(p, dict))
                parts.append(f"{m.get('role', '')}\x00{content or ''}\x01")
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return " ".join(str(p) for p in prompt)
    return str(prompt or "")


def prefix_key(endpoint: str, body: dict, block_chars: int, blocks: int) -> int | None:
    """Chained hash of the prompt's first `blocks` blocks of `block_chars` characters; None for
    a prompt shorter than that (no prefix worth keeping together)."""
    text = prompt_text(endpoint, body)
    if len(text) < block_chars * blocks:
        return None
    h = b""
    for i in range(blocks):
        h = hashlib.blake2b(h + text[i * block_chars:(i + 1) * block_chars].encode(),
                            digest_size=8).digest()
    return int.from_bytes(h, "big")


class HashRing:
    """Consistent hashing over replica URLs: a key goes to the first point at or after it."""

    def __init__(self, urls: list[str], points: int = RING_POINTS) -> None:
        nodes = sorted((_hash(f"{url}#{i}".encode()), url) for url in urls for i in range(points))
        self._keys = [k for k, _ in nodes]
        self._urls = [u for _, u in nodes]

    def walk(self, key: int) -> list[str]:
        """Distinct URLs in ring order from `key`: the owner first, then who takes over."""
        start = bisect.bisect_left(self._keys, key)
        seen: dict[str, None] = {}
        n = len(self._urls)
        for i in range(n):
            seen.setdefault(self._urls[(start + i) % n], None)
        return list(seen)


@dataclass(frozen=True)
class Placement:
    replica: Replica
    reason: str  # round_robin | least_load | affinity | overloaded


def _kv(r: Replica) -> float:
    kv = r.load.kv_usage if r.load is not None else None
    return kv or 0.0


class Placer:
    """Placement for one member. Under `affinity` a prefix key this member has not placed yet
    goes to its ring owner unless another replica has more than `NEW_PREFIX_SLACK` fewer
    requests: with a handful of system prompts a hash alone splits them unevenly (8 keys land
    6:2 or worse on two replicas 29% of the time) and the crowded owner then spills them. Where
    a key went first is remembered (LRU, `HOMES` keys) and it sticks there, as in the SGLang
    router's cache-aware policy; gateways that do not share this table still agree through
    the ring whenever the replicas' loads are close."""

    def __init__(self, replicas: list[Replica], opts: ReplicaOptions) -> None:
        self.replicas = replicas
        self.opts = opts
        self.ring = HashRing([r.url for r in replicas])
        self._by_url = {r.url: r for r in replicas}
        self._rr = itertools.count()
        self._homes: OrderedDict[int, str] = OrderedDict()  # prefix key -> first replica

    def overloaded(self, r: Replica, least: float, key: int | None = None) -> bool:
        if _kv(r) >= self.opts.overload_kv_usage:
            return True
        siblings = min(r.inflight_keys.get(key, 0), r.queue()) if key is not None else 0
        load = r.queue() - (1 - SIBLING_WEIGHT) * siblings
        return load > least + max(self.opts.overload_gap, self.opts.overload_ratio * least)

    def choose(self, key: int | None, exclude: AbstractSet[str] = frozenset()
               ) -> Placement | None:
        live = [r for r in self.replicas if not r.ejected and r.url not in exclude]
        if not live:
            return None
        policy = self.opts.policy
        if policy == "round_robin":
            return Placement(live[next(self._rr) % len(live)], "round_robin")
        # Ties go to the replica with the lower KV usage, then in list order.
        least = min(live, key=lambda r: (r.queue(), _kv(r)))
        if policy == "least_load" or key is None:
            return Placement(least, "least_load")
        urls = {r.url for r in live}
        home = self._homes.get(key)
        if home is not None and self._by_url[home].ejected:
            del self._homes[key]  # its cache is gone with it: placed anew
            home = None
        if home is not None:
            self._homes.move_to_end(key)
        # A request moving off its home (migration) follows the ring among the others.
        target = self._by_url[home] if home in urls else next(
            self._by_url[u] for u in self.ring.walk(key) if u in urls)
        if home is None:
            reason = "affinity"
            if target is not least and (target.queue() > least.queue() + NEW_PREFIX_SLACK
                                        or _kv(target) >= self.opts.overload_kv_usage):
                target, reason = least, "least_load"
            self._homes[key] = target.url
            if len(self._homes) > HOMES:
                self._homes.popitem(last=False)
            return Placement(target, reason)
        if self.overloaded(target, least.queue(), key):
            return Placement(least, "overloaded")
        return Placement(target, "affinity")


# --- one request's progress across replicas ------------------------------------------------


class _Preempted(Exception):
    pass


def _enter(r: Replica, key: int | None) -> None:
    """Count a request on its replica, and under its prefix key, while it runs there."""
    r.inflight += 1
    if key is not None:
        r.inflight_keys[key] = r.inflight_keys.get(key, 0) + 1


def _leave(r: Replica, key: int | None) -> None:
    r.inflight -= 1
    if key is not None:
        left = r.inflight_keys.get(key, 0) - 1
        if left > 0:
            r.inflight_keys[key] = left
        else:
            r.inflight_keys.pop(key, None)


@dataclass
class _Hop:
    url: str
    reason: str
    tokens: int = 0
    energy_j: float | None = None
    energy_source: str | None = None
    end: str = "running"  # done | died | preempted | error

    def row(self) -> dict[str, Any]:
        return {"replica": self.url, "placed_by": self.reason, "tokens": self.tokens,
                "energy_j": self.energy_j, "energy_source": self.energy_source,
                "end": self.end}


@dataclass
class _Progress:
    """What the client has been sent so far, to resume elsewhere and to keep one stream."""

    kind: str  # chat | text
    hops: list[_Hop] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    chunks: int = 0  # content chunks sent (a token count for engines that send no ids)
    first: dict[str, Any] | None = None  # id, created, model of the first chunk
    role_sent: bool = False
    usage: dict[str, Any] | None = None
    usage_meta: dict[str, Any] | None = None
    ids_exact: bool = True  # every hop sent token ids (greengate servers)
    preempted: bool = False

    @property
    def started(self) -> bool:
        return self.chunks > 0

    def take(self, payload: bytes, hop: _Hop) -> bytes | None:
        """One payload of the current hop -> what the client gets (None: nothing)."""
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamError("replica sent a chunk that is not JSON", kind="protocol") from None
        if not isinstance(data, dict):
            return payload
        if isinstance(data.get("error"), dict):
            raise UpstreamError(f"replica stream failed: {data['error'].get('message')}",
                                kind="protocol")
        ext = data.pop(EXTENSION_FIELD, None)
        if isinstance(ext, dict):
            if ext.get("energy_j") is not None:
                hop.energy_j, hop.energy_source = float(ext["energy_j"]), ext.get("energy_source")
            if ext.get("preempted"):
                self.preempted = True
                return None
            ids = ext.get("token_ids")
            if isinstance(ids, list):
                self.token_ids.extend(int(t) for t in ids)
                hop.tokens += len(ids)
        if self.first is None:
            self.first = {k: data.get(k) for k in ("id", "created", "model")}
        elif len(self.hops) > 1:
            data.update(self.first)  # the continuation keeps the stream's identity
        if data.get("usage"):
            self.usage, self.usage_meta = data["usage"], data
            return None  # sent at the end, with every hop's energy
        choices = data.get("choices")
        if not choices:
            return None if ext is not None else orjson.dumps(data)
        choice = choices[0]
        if self.kind == "chat":
            delta = choice.get("delta") or {}
            if "role" in delta:
                if self.role_sent:
                    delta.pop("role")
                    if not delta.get("content") and choice.get("finish_reason") is None:
                        return None
                self.role_sent = True
            text = delta.get("content") or ""
        else:
            text = choice.get("text") or ""
        if text:
            self.text += text
            self.chunks += 1
            if not isinstance(ext, dict) or not isinstance(ext.get("token_ids"), list):
                self.ids_exact = False
                hop.tokens += 1
        return orjson.dumps(data)

    def merged_usage(self, policy: str) -> dict[str, Any] | None:
        """The last hop's usage with the whole request's figures and the replica record."""
        if self.usage is None:
            return None
        use = dict(self.usage)
        last = self.hops[-1]
        if len(self.hops) > 1 and not self.ids_exact:
            # A text resume: the earlier hops' output sat in the last hop's prompt.
            before = sum(h.tokens for h in self.hops[:-1])
            use["prompt_tokens"] = max(0, int(use.get("prompt_tokens") or 0) - before)
            use["completion_tokens"] = int(use.get("completion_tokens") or 0) + before
            use["total_tokens"] = use["prompt_tokens"] + use["completion_tokens"]
        if last.energy_j is None and use.get("energy_j") is not None:
            last.energy_j, last.energy_source = use["energy_j"], use.get("energy_source")
        energy = _sum_energy(self.hops)
        use.pop("energy_j", None)
        use.pop("energy_source", None)
        if energy is not None:
            use["energy_j"], use["energy_source"] = energy
        use["replicas"] = record(self.hops, policy)
        return use


def _merge_sources(sources: set[str] | list[str]) -> str | None:
    s = set(sources)
    if not s:
        return None
    if len(s) == 1:
        return next(iter(s))
    # A sum that includes an estimate is an estimate.
    return "estimated:mixed" if any(x.startswith("estimated") for x in s) else "measured:mixed"


def _sum_energy(hops: list[_Hop]) -> tuple[float, str] | None:
    """All hops' joules, or None when any hop's is unknown (unknown is not 0)."""
    if any(h.energy_j is None or not h.energy_source for h in hops):
        return None
    return sum(h.energy_j or 0.0 for h in hops), str(
        _merge_sources([h.energy_source for h in hops if h.energy_source]))


def record(hops: list[_Hop], policy: str) -> dict[str, Any]:
    """The decision row's `replicas` value."""
    migrations = [{"from": a.url, "to": b.url, "reason": a.end, "after_tokens":
                   sum(h.tokens for h in hops[:i + 1])}
                  for i, (a, b) in enumerate(itertools.pairwise(hops))]
    return {"policy": policy, "served_by": hops[-1].url if hops else None,
            "hops": [h.row() for h in hops], "migrations": migrations}


# --- the member ----------------------------------------------------------------------------


class ReplicaMember(Member):
    """One pool member over several OpenAI-compatible replicas of the same model."""

    def __init__(self, cfg: MemberConfig, limits: HttpLimits | None = None) -> None:
        if not cfg.endpoints:
            raise ValueError(f"member {cfg.name}: no endpoints")
        self.name = cfg.name
        self.upstream_model = cfg.model
        self.opts = cfg.replicas or ReplicaOptions()
        self.replicas = [
            Replica(url, OpenAICompatMember(cfg.model_copy(update={"base_url": url,
                                                                     "endpoints": None}),
                                            limits))
            for url in cfg.endpoints]
        self.placer = Placer(self.replicas, self.opts)
        self._scraper: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- background scraping and probing ---------------------------------------------------

    async def start(self) -> None:
        """Start scraping (idempotent); the first scrape of every replica is awaited."""
        if self._scraper is not None and not self._scraper.done():
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.opts.scrape_timeout_s), trust_env=False)
        await self.scrape_once()
        self._scraper = asyncio.create_task(self._scrape_loop(), name=f"scrape-{self.name}")

    async def _scrape_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.scrape_interval_s)
            try:
                await self.scrape_once()
            except Exception:  # one bad round must not end scraping for good
                log.exception("member %s: scrape round failed", self.name)

    async def scrape_once(self) -> None:
        await asyncio.gather(*(self._scrape(r) for r in self.replicas))

    async def _scrape(self, r: Replica) -> None:
        assert self._session is not None
        try:
            if r.ejected:
                # Probed back in only after the ejection interval, and only if healthy.
                if time.monotonic() - r.ejected_at < self.opts.eject_s:
                    return
                async with self._session.get(r.root + "/health") as resp:
                    if resp.status != 200:
                        raise aiohttp.ClientError(f"health {resp.status}")
            async with self._session.get(r.root + "/metrics") as resp:
                if resp.status >= 500:
                    raise aiohttp.ClientError(f"metrics {resp.status}")
                # An engine without /metrics (404) is placed by what we have in flight there.
                text = await resp.text() if resp.status == 200 else ""
            r.load = ReplicaLoad.from_metrics(parse_metrics(text), time.monotonic())
            r.scrape_failures = 0
            if r.ejected:
                log.info("member %s: replica %s passed its probe, back in", self.name, r.url)
                r.ejected = False
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            r.scrape_failures += 1
            if r.ejected:
                r.ejected_at = time.monotonic()  # failed probe: wait another interval
            elif r.scrape_failures >= self.opts.eject_after_scrape_failures:
                self.eject(r, f"scrape failed: {e!r}")

    def eject(self, r: Replica, why: str) -> None:
        if not r.ejected:
            log.warning("member %s: replica %s ejected (%s)", self.name, r.url, why)
            r.ejections += 1
        r.ejected, r.ejected_at = True, time.monotonic()

    async def _ensure_started(self) -> None:
        if self._scraper is None:
            await self.start()

    # --- requests --------------------------------------------------------------------------

    def _key(self, req: UpstreamRequest) -> int | None:
        return prefix_key(req.endpoint, req.body, self.opts.affinity_block_chars,
                          self.opts.affinity_blocks)

    def _place(self, key: int | None, exclude: set[str], last: UpstreamError | None
               ) -> Placement:
        placed = self.placer.choose(key, exclude)
        if placed is None:
            if last is not None:
                raise last
            raise UpstreamError(f"every replica of {self.name} is ejected or was tried",
                                kind="connect")
        return placed

    def _request(self, req: UpstreamRequest, r: Replica, progress: _Progress | None,
                 others: bool) -> UpstreamRequest:
        body = dict(req.body)
        if req.stream:
            body["stream"] = True
        if r.kind != "greengate":
            if progress is not None and progress.started:
                body = _text_resume(req.endpoint, body, progress)
            return UpstreamRequest(req.endpoint, body, req.stream)
        ext = dict(body.get(EXTENSION_FIELD) or {})
        if req.stream:
            ext["return_token_ids"] = True
            ext["migrate_on_preempt"] = others
        if progress is not None and progress.started:
            if progress.ids_exact and progress.token_ids:
                ext["resume_token_ids"] = list(progress.token_ids)
            else:
                body = _text_resume(req.endpoint, body, progress)
        body[EXTENSION_FIELD] = ext
        return _WholeBody(req.endpoint, body, req.stream)

    def _others(self, r: Replica, tried: AbstractSet[str] = frozenset()) -> bool:
        """Whether a preempted stream could move on: the last replica left recomputes it."""
        return any(o is not r and not o.ejected and o.url not in tried for o in self.replicas)

    async def complete(self, req: UpstreamRequest) -> UpstreamResponse:
        await self._ensure_started()
        key = self._key(req)
        tried: set[str] = set()
        last: UpstreamError | None = None
        hops: list[_Hop] = []
        while True:
            placed = self._place(key, tried, last)
            r = placed.replica
            hop = _Hop(r.url, placed.reason)
            hops.append(hop)
            _enter(r, key)
            try:
                resp = await r.client.complete(self._request(req, r, None, False))
            except UpstreamError as e:
                if e.client_fault or not e.retryable:
                    raise
                hop.end = "died" if e.status is None else "error"
                self._failed(r, e)
                tried.add(r.url)
                last = e
                continue
            finally:
                _leave(r, key)
            hop.end = "done"
            r.served += 1
            data = resp.data
            ext = data.pop(EXTENSION_FIELD, None)
            use = dict(data.get("usage") or {})
            if isinstance(ext, dict) and ext.get("energy_j") is not None:
                hop.energy_j, hop.energy_source = float(ext["energy_j"]), ext.get("energy_source")
            elif use.get("energy_j") is not None:
                hop.energy_j, hop.energy_source = use["energy_j"], use.get("energy_source")
            hop.tokens = int(use.get("completion_tokens") or 0)
            self._account(r, hop)
            use.pop("energy_j", None)
            use.pop("energy_source", None)
            # Earlier hops failed before any output: their energy is not this answer's.
            if hop.energy_j is not None and hop.energy_source:
                use["energy_j"], use["energy_source"] = hop.energy_j, hop.energy_source
            use["replicas"] = record(hops, self.opts.policy)
            data["usage"] = use
            return UpstreamResponse(content=orjson.dumps(data), data=data)

    def _failed(self, r: Replica, e: UpstreamError) -> None:
        # A replica that cannot be reached or broke its answer is out until a probe passes;
        # an overloaded one (503/429) stays in: its load figures steer requests away.
        if e.status is None or e.status >= 500 and e.status != 503:
            self.eject(r, str(e)[:200])

    @staticmethod
    def _account(r: Replica, hop: _Hop) -> None:
        if hop.energy_j is not None and hop.energy_source:
            r.energy_j += hop.energy_j
            r.energy_sources.add(hop.energy_source)

    async def stream(self, req: UpstreamRequest) -> AsyncIterator[bytes]:
        async for batch in self.stream_batches(req):
            for payload in batch:
                yield payload

    async def stream_batches(self, req: UpstreamRequest) -> AsyncIterator[list[bytes]]:
        await self._ensure_started()
        key = self._key(req)
        progress = _Progress("chat" if req.endpoint == "chat/completions" else "text")
        tried: set[str] = set()
        last: UpstreamError | None = None
        while True:
            placed = self._place(key, tried, last)
            r = placed.replica
            hop = _Hop(r.url, placed.reason)
            progress.hops.append(hop)
            progress.preempted = False
            if len(progress.hops) > 1:
                r.migrated_in += progress.started
            _enter(r, key)
            try:
                sub = self._request(req, r, progress, self._others(r, tried))
                async with contextlib.aclosing(r.client.stream_batches(sub)) as agen:
                    async for batch in agen:
                        out = [p for payload in batch
                               if (p := progress.take(payload, hop)) is not None]
                        if out:
                            yield out
                        if progress.preempted:
                            raise _Preempted
            except UpstreamError as e:
                if e.client_fault and not progress.started:
                    raise
                hop.end = "died" if e.kind in ("connect", "protocol", "timeout") else "error"
                self._failed(r, e)
                tried.add(r.url)
                last = e
                if progress.started:
                    r.migrated_out += 1
                    log.warning("member %s: replica %s failed mid-stream after %d chunks; "
                                "resuming elsewhere", self.name, r.url, progress.chunks)
                self._account(r, hop)
                continue
            except _Preempted:
                hop.end = "preempted"
                r.migrated_out += 1
                tried.add(r.url)
                self._account(r, hop)
                continue
            finally:
                _leave(r, key)
            hop.end = "done"
            r.served += 1
            use = progress.merged_usage(self.opts.policy)
            self._account(r, hop)
            if use is not None:
                meta = dict(progress.usage_meta or {})
                meta.update(progress.first or {})
                meta["usage"] = use
                yield [orjson.dumps(meta)]
            return

    def stats(self) -> dict[str, Any]:
        return {"policy": self.opts.policy, "replicas": [r.state() for r in self.replicas]}

    async def aclose(self) -> None:
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._scraper
        if self._session is not None:
            await self._session.close()
        for r in self.replicas:
            await r.client.aclose()


def _text_resume(endpoint: str, body: dict, progress: _Progress) -> dict:
    """Resume on an engine that takes no token ids: the streamed text joins the prompt (chat:
    as the assistant message to continue, vLLM's and SGLang's `continue_final_message`)."""
    body = dict(body)
    if endpoint == "chat/completions":
        body["messages"] = [*body.get("messages", []),
                            {"role": "assistant", "content": progress.text}]
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    else:
        body["prompt"] = str(body.get("prompt") or "") + progress.text
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int):
            body[name] = max(1, body[name] - progress.chunks)
    return body
