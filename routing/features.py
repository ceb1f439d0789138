"""Per-request query features for the routing bandit, computed once per request.

`FeatureExtractor.extract(body)` reads an OpenAI chat/completions request and returns
`QueryFeatures`: the task type (MiniLM embedding -> logistic regression), a semantic cluster
(online k-means on the same embedding), readability (inverted Flesch), code/math markers,
the prompt's token count, user turns, tools, and the expected output length class.
`vector(features)` turns them into the bandit's fixed-length context (see `layout`).

The embedding is the only expensive part. It goes through a `MicroBatcher`, so concurrent
requests share one encode call on the embedder's torch thread. What is embedded is the last
user turn, prefixed with the tail of the previous message when that turn is short ("yes, do
that" means little alone); long texts keep their head and tail (`Embedder`).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from routing import complexity as cx
from routing import tokens
from routing.embedder import Embedder, MicroBatcher
from routing.kmeans import OnlineKMeans
from routing.task_classifier import TaskClassifier

OUTPUT_CLASSES = ("short", "medium", "long")
TURNS_CAP = 8  # turns feature = min(turns, 8) / 8
TOKENS_CAP = 32768  # tokens feature = min(1, log1p(tokens) / log1p(32768))
SHORT_MAX_TOKENS = 256  # max_tokens <= 256: short; <= 1024: medium; above: long
MEDIUM_MAX_TOKENS = 1024
CONTEXT_WORDS = 24  # a last user turn shorter than this gets the previous message's tail
CONTEXT_CHARS = 300
LAYOUT_VERSION = "features-v1"


@dataclass(frozen=True)
class QueryFeatures:
    task: str
    task_confidence: float
    cluster: int
    complexity: float  # inverted Flesch in [0,1]
    complexity_bin: int  # 0 easy, 1 medium, 2 hard
    prompt_tokens: int
    has_code: bool
    has_math: bool
    turns: int  # user turns in the conversation
    tools: bool  # request has tools
    output_class: str  # "short" | "medium" | "long"
    # False when the embedding was skipped to keep routing within its latency budget: task
    # and cluster are then unknown ("unknown", -1) and left out of the context vector.
    embedded: bool = True

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["task_confidence"] = round(self.task_confidence, 4)
        d["complexity"] = round(self.complexity, 4)
        return d


# -- reading the request ----------------------------------------------------------------------


def content_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a multimodal list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "")
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def request_text(body: dict) -> tuple[str, str, int]:
    """(text to embed, last user text, user turns) of a chat or completions request."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        inp = body.get("input")  # Responses-style input: a string or a list of messages
        messages = inp if isinstance(inp, list) else None
        if isinstance(inp, str):
            return inp, inp, 1
    if isinstance(messages, list):
        msgs = [m for m in messages if isinstance(m, dict)]
        users = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
        if users:
            idx = users[-1]
        else:
            rest = [i for i, m in enumerate(msgs) if m.get("role") not in ("system", "developer")]
            idx = (rest or list(range(len(msgs))) or [-1])[-1]
        if idx < 0:
            return "", "", 0
        last = content_text(msgs[idx].get("content"))
        text = last
        if len(last.split()) < CONTEXT_WORDS:
            prev = [
                content_text(m.get("content"))
                for m in msgs[:idx]
                if m.get("role") not in ("system", "developer")
            ]
            prev = [p for p in prev if p.strip()]
            if prev:
                text = prev[-1][-CONTEXT_CHARS:] + "\n" + last
        return text, last, len(users)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt, prompt, 1
    if isinstance(prompt, list):
        text = "\n".join(p for p in prompt if isinstance(p, str))
        return text, text, 1
    return "", "", 0


def _prompt_tokens(body: dict, text: str) -> int:
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    if isinstance(body.get("messages"), list):
        msgs = [m for m in body["messages"] if isinstance(m, dict)]
        tools = body.get("tools") if isinstance(body.get("tools"), list) else None
        return tokens.count_messages(msgs, model, tools)
    if "prompt" in body:
        return tokens.count_prompt(body["prompt"], model)
    return tokens.count_text(text, model)


def _max_tokens(body: dict) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = body.get(key)
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float) and v > 0:
            return int(v)
        if isinstance(v, str) and v.strip().isdigit() and int(v) > 0:
            return int(v)
    return None


_SHORT_PHRASES = (
    "one word",
    "one-word",
    "single word",
    "1 word",
    "yes or no",
    "true or false",
    "in one sentence",
    "in a single sentence",
    "in one line",
    "briefly",
    "short answer",
    "just the answer",
    "only the answer",
    "just the number",
    "only the number",
    "just the name",
    "only the name",
    "just the letter",
    "only the letter",
    "answer with",
    "reply with",
    "respond with",
    "single choice",
    "without explanation",
    "no explanation",
    "tl;dr",
    "tldr",
    "one-liner",
    "one liner",
    "in a few words",
    "short reply",
)
_LONG_PHRASES = (
    "essay",
    "article",
    "blog post",
    "report",
    "story",
    "novel",
    "chapter",
    "tutorial",
    "guide",
    "lesson plan",
    "business plan",
    "cover letter",
    "in detail",
    "detailed",
    "comprehensive",
    "thorough",
    "step by step",
    "step-by-step",
    "elaborate",
    "full implementation",
    "full code",
    "full program",
    "complete implementation",
    "complete program",
    "complete application",
    "entire program",
    "whole program",
    "long answer",
    "longer answer",
    "long explanation",
    "long response",
)
_SHORT_RE = re.compile(r"\b(?:" + "|".join(map(re.escape, _SHORT_PHRASES)) + r")\b")
_LONG_RE = re.compile(r"\b(?:" + "|".join(map(re.escape, _LONG_PHRASES)) + r")\b")
_WORD_COUNT = re.compile(r"\b(\d{2,5})[- ]?(?:\+ )?words?\b")
_CHOICES = re.compile(r"^\s*\(?[A-E][).:]\s+\S", re.M)


def output_class(text: str, task: str | None = None, max_tokens: int | None = None) -> str:
    """Expected length of the answer. `max_tokens` decides when given (<= 256 short,
    <= 1024 medium, more long); otherwise an asked-for word count, then phrasing ("in one
    word", "answer with the letter" -> short), multiple-choice options A)-E) outside code and
    math -> short, a summary -> medium, then phrasing again ("essay", "in detail", "step by
    step" -> long), else medium."""
    if max_tokens is not None:
        if max_tokens <= SHORT_MAX_TOKENS:
            return "short"
        return "medium" if max_tokens <= MEDIUM_MAX_TOKENS else "long"
    t = text if len(text) <= 8000 else text[:2000] + "\n" + text[-6000:]
    low = t.lower()
    m = _WORD_COUNT.search(low) if "word" in low else None
    if m:
        words = int(m.group(1))
        return "short" if words <= 150 else "medium" if words <= 700 else "long"
    # plain substring tests first (fast), then the same phrases as whole words
    if low.rstrip().endswith("answer:") or (
        any(p in low for p in _SHORT_PHRASES) and _SHORT_RE.search(low)
    ):
        return "short"
    if len(_CHOICES.findall(t[-3000:])) >= 2 and task not in ("code", "math"):
        return "short"  # multiple choice: the answer is a letter
    if "summar" in low or "tl;dr" in low:
        return "medium"  # "summarise this article": the article is the input, not the output
    if any(p in low for p in _LONG_PHRASES) and _LONG_RE.search(low):
        return "long"
    return "medium"


# -- the extractor ----------------------------------------------------------------------------


class FeatureExtractor:
    def __init__(
        self,
        embedder: Embedder,
        classifier: TaskClassifier,
        kmeans: OnlineKMeans,
        batcher: MicroBatcher | None = None,
    ) -> None:
        if kmeans.dim != classifier.dim:
            raise ValueError("k-means and classifier disagree on the embedding size")
        self.embedder = embedder
        self.classifier = classifier
        self.kmeans = kmeans
        self.batcher = batcher or MicroBatcher(embedder)
        self.tasks: tuple[str, ...] = classifier.labels
        self._task_index = {t: i for i, t in enumerate(self.tasks)}
        self._names = self._feature_names()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def default(cls, k: int = 3, *, load: bool = False, **batcher_kw: Any) -> FeatureExtractor:
        """Shipped classifier and centroids; MiniLM is loaded by `load=True`, `load()`, or the
        first request (about 1 s)."""
        classifier = TaskClassifier.load()
        emb_cfg = classifier.meta.get("embedder", {})
        # One torch thread: with intra-op parallelism on the cores the event loop also needs,
        # libgomp's workers spin-wait between ops; on the 2-core host, one new prompt per
        # request (`model: auto` at concurrency 1) cost 90 ms of process CPU per request with
        # 2 threads and 3.5 ms with 1, p99 408 ms vs 13 ms (bench/vs_litellm.py). Batches under
        # concurrency were cheaper on 1 thread too (2.0 vs 0.8 ms CPU per request at 16).
        embedder = Embedder(
            max_seq_length=int(emb_cfg.get("max_seq_length", 64)),
            head_fraction=float(emb_cfg.get("head_fraction", 0.25)),
            num_threads=1,
        )
        kmeans = OnlineKMeans.from_artifact(k, dim=classifier.dim)
        fx = cls(embedder, classifier, kmeans, MicroBatcher(embedder, **batcher_kw))
        return fx.load() if load else fx

    def load(self) -> FeatureExtractor:
        self.embedder.load()
        return self

    async def aclose(self) -> None:
        """Stop the micro-batcher (finishing queued texts) and the embedder's torch thread."""
        await self.batcher.aclose()
        if isinstance(self.embedder, Embedder):
            await asyncio.to_thread(self.embedder.close)

    # -- the context vector -------------------------------------------------------------------

    def _feature_names(self) -> list[str]:
        return (
            ["bias"]
            + [f"task={t}" for t in self.tasks]
            + [f"cluster={i}" for i in range(self.kmeans.k)]
            + [f"complexity={b}" for b in cx.BIN_NAMES]
            + ["log_prompt_tokens", "has_code", "has_math", "turns", "tools"]
            + [f"output={o}" for o in OUTPUT_CLASSES]
        )

    @property
    def feature_names(self) -> list[str]:
        return list(self._names)

    @property
    def dim(self) -> int:
        """Length of `vector()`: 1 + n_tasks + k + 3 + 5 + 3 (20 with 5 tasks and k=3)."""
        return len(self._names)

    @property
    def layout(self) -> str:
        """Signature of the vector's meaning: equal layouts mean interchangeable vectors."""
        return (
            f"{LAYOUT_VERSION}/{self.classifier.fingerprint}:bias|task[{','.join(self.tasks)}]"
            f"|cluster[{self.kmeans.k}]"
            f"|complexity[{','.join(cx.BIN_NAMES)}]|log1p(tokens)/log1p({TOKENS_CAP})"
            f"|code|math|min(turns,{TURNS_CAP})/{TURNS_CAP}|tools"
            f"|output[{','.join(OUTPUT_CLASSES)}]"
        )

    def vector(self, f: QueryFeatures) -> np.ndarray:
        """[1, task one-hot, cluster one-hot, complexity-bin one-hot, scaled log tokens,
        code, math, scaled turns, tools, output-class one-hot], float64."""
        v = np.zeros(self.dim, dtype=np.float64)
        v[0] = 1.0
        o = 1
        if f.task in self._task_index:
            v[o + self._task_index[f.task]] = 1.0
        o += len(self.tasks)
        if 0 <= f.cluster < self.kmeans.k:
            v[o + f.cluster] = 1.0
        o += self.kmeans.k
        if 0 <= f.complexity_bin < cx.N_BINS:
            v[o + f.complexity_bin] = 1.0
        o += cx.N_BINS
        v[o] = min(1.0, math.log1p(max(0, f.prompt_tokens)) / math.log1p(TOKENS_CAP))
        v[o + 1] = float(f.has_code)
        v[o + 2] = float(f.has_math)
        v[o + 3] = min(max(f.turns, 0), TURNS_CAP) / TURNS_CAP
        v[o + 4] = float(f.tools)
        o += 5
        if f.output_class in OUTPUT_CLASSES:
            v[o + OUTPUT_CLASSES.index(f.output_class)] = 1.0
        return v

    # -- extraction ---------------------------------------------------------------------------

    def _assemble(
        self,
        emb: np.ndarray,
        text: str,
        last: str,
        *,
        turns: int,
        tools: bool,
        prompt_tokens: int,
        max_tokens: int | None,
        update: bool,
    ) -> QueryFeatures:
        proba = self.classifier.predict_proba(emb)
        i = int(proba.argmax())
        task = self.tasks[i]
        cluster = self.kmeans.update(emb) if update else self.kmeans.assign(emb)
        c = cx.complexity(last)
        return QueryFeatures(
            task=task,
            task_confidence=float(proba[i]),
            cluster=int(cluster),
            complexity=float(c),
            complexity_bin=cx.complexity_bin(c),
            prompt_tokens=int(prompt_tokens),
            has_code=cx.has_code(text),
            has_math=cx.has_math(text),
            turns=int(turns),
            tools=tools,
            output_class=output_class(last, task, max_tokens),
        )

    async def extract(
        self, body: dict, *, update_clusters: bool = True, budget_ms: float | None = None
    ) -> QueryFeatures:
        """Features of one request; the embedding is micro-batched with concurrent calls and
        the k-means cluster is updated online (unless `update_clusters=False`). With
        `budget_ms`, a request that would wait longer than that for its embedding (the CPU
        is saturated) is routed on the cheap features alone rather than queued."""
        qf, _, _ = await self.analyse(body, update_clusters=update_clusters, budget_ms=budget_ms)
        return qf

    async def analyse(
        self, body: dict, *, update_clusters: bool = True, budget_ms: float | None = None
    ) -> tuple[QueryFeatures, np.ndarray | None, str]:
        """`extract`, plus the embedding (None when the budget skipped it) and the text it
        embeds, so safety and the cache reuse the one embedding per request."""
        text, last, turns = request_text(body)
        tools = bool(body.get("tools") or body.get("functions"))
        if (budget_ms is not None and self.batcher.backlog_wait_s() * 1000 > budget_ms
                and self.batcher.cached(text) is None):  # a cached embedding costs no wait
            c = cx.complexity(last)
            max_tokens = _max_tokens(body)
            return QueryFeatures(
                task="unknown", task_confidence=0.0, cluster=-1, complexity=float(c),
                complexity_bin=cx.complexity_bin(c), prompt_tokens=_prompt_tokens(body, text),
                has_code=cx.has_code(text), has_math=cx.has_math(text), turns=int(turns),
                tools=tools, output_class=output_class(last, None, max_tokens), embedded=False,
            ), None, text
        emb = await self.batcher.embed(text)
        return self._assemble(
            emb,
            text,
            last,
            turns=turns,
            tools=tools,
            prompt_tokens=_prompt_tokens(body, text),
            max_tokens=_max_tokens(body),
            update=update_clusters,
        ), emb, text

    def extract_many(
        self, texts: Sequence[str], *, update_clusters: bool = False
    ) -> list[QueryFeatures]:
        """Features of single-turn prompts without tools (offline replay), one batched
        encode call. The same features `extract` gives for {"messages": [{"role": "user",
        "content": text}]}; clusters are only updated when asked."""
        return self.analyse_many(texts, update_clusters=update_clusters)[0]

    def analyse_many(
        self, texts: Sequence[str], *, update_clusters: bool = False
    ) -> tuple[list[QueryFeatures], np.ndarray]:
        """`extract_many`, plus the (n, 384) embeddings, so offline quality predictors see
        the same embedding the gateway computes per request."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        embs = self.embedder.encode(texts)
        out = []
        for t, e in zip(texts, embs, strict=True):
            n = tokens.count_messages([{"role": "user", "content": t}])
            out.append(
                self._assemble(
                    e,
                    t,
                    t,
                    turns=1,
                    tools=False,
                    prompt_tokens=n,
                    max_tokens=None,
                    update=update_clusters,
                )
            )
        return out, embs
