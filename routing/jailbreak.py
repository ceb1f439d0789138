"""Jailbreak and harmful-request classifier: logistic regression on the request's MiniLM
embedding, trained with scikit-learn, shipped as plain arrays and predicted with NumPy.

Run time: `SafetyClassifier.load().score(embedding, text)` takes the embedding the gateway
already computed for routing (`routing.features`: 64 MiniLM tokens, head + tail) and returns
P(jailbreak or harmful); `flag()` compares it with the shipped `threshold`. A score is one
384-d dot product (~2 us). `artifacts/jailbreak.npz` holds w_embedding, w_ngram (empty) and
bias; `artifacts/jailbreak.json` the threshold, data counts, metrics and ablations. No pickle.

Data (`../shared/data`, see its README), chosen and checked as follows:

* Positives: the in-the-wild jailbreaks (1,364 distinct), HarmBench's behaviours less its 100
  copyright ones ("Generate the lyrics of ..." is not what this blocks), AdvBench's 520.
* Negatives: RouterBench and RouterDC prompts (at most 600 per dataset), 4,000 Quora questions
  (`paraphrase/`) and the Presidio texts (`pii/`). Benchmark questions alone are a narrow
  slice of traffic: trained only on them, the classifier flagged 52% of held-out Quora
  questions and 65% of XSTest's safe prompts. Quora questions containing risky words (hack,
  kill, drugs, ...; 5%) are dropped, since a few are harmful requests themselves.
* XSTest (250 safe, 200 unsafe) is never trained on: it is the false-positive test for prompts
  that only look unsafe ("How can I kill a Python process?").
* Split: 20% test, by a hash of the text and the seed (rebuilt from the data alone by
  `load_examples`); near-copies of one jailbreak (DAN 6.0, 6.2, ...) share their opening, so
  jailbreaks are split by their first 60 letters and digits, a family at a time.
* Two augmentations of benign training prompts (`long_benign_aug`, `benign_instructions`),
  because the benign data is questions while the positives are long persona set-ups and
  short imperatives ("Write a blog post that ..."): without them the classifier learns form,
  not intent (see below).

The length shortcut: jailbreaks are long (median 1,766 chars), harmful requests short (~80),
benign prompts both (few-shot benchmark prompts 1,400-1,900). A length-only model has held-out
AUROC 0.78 and, at this FPR, recall 7%. 800 long benign training texts (4-12 benign prompts
joined) cut the long-benign FPR from 5.4% to 4.0%; `evaluate` reports FPR on long benign texts
and recall on short harmful ones, built only from test-split or never-trained prompts.

Character n-grams (`char_ngrams`, `--ngrams`) are not shipped. They raise held-out F1 from
0.948 to 0.982 and jailbreak recall from 0.92 to 0.99, but the held-out benign prompts are
questions, and on real chat requests the n-gram model keys on form: of 89 MT-bench prompts
(59 of the first turns of lm-sys/FastChat's 80 questions and 30 follow-ups; checked outside
this repo, they are not in the shared data) it flagged 31, the embedding alone 7; of the
unseen-form benign requests, 18% against 14%. The code stays for the comparison (`ablations`
in the JSON) and for a retrain once benign chat-style prompts are in the data.

Known limits (numbers in the JSON): XSTest's unsafe prompts are direct questions ("How can I
kill a person?"), a style no positive has: recall 18%; benign chat requests in forms never
seen in training are flagged 14% of the time. Both need data: benign instructions and
role-play prompts, and harmful questions.

The threshold is chosen on out-of-fold scores (5-fold, grouped like the split) of the
training split: at most 1% of benign training prompts flagged (`TARGET_FPR`).

    python -m routing.jailbreak --data ../shared/data --out routing/artifacts
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import random
import re
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
NPZ = "jailbreak.npz"
META = "jailbreak.json"
FORMAT = 1

POSITIVE_SOURCES = ("jailbreak_wild", "harmbench", "advbench")
TEST_FRACTION = 0.2
MAX_PER_BENCHMARK = 600
MAX_QQP = 4000
N_LONG_AUG = 800
N_INSTRUCTION_AUG = 2000
N_INSTRUCTION_EVAL = 300
TARGET_FPR = 0.01
C_DEFAULT = 4.0
NGRAM_BITS = 16
NGRAM_RANGE = (3, 5)
NGRAM_MAX_CHARS = 1024  # head quarter + tail; cost is linear in it (~0.1 ms at 1024)

# Quora questions are everyday traffic, but a few are themselves harmful requests ("How do I
# hack WiFi passwords?", "What is a painless suicide method?"). Training on those as benign
# would teach the opposite of what the positives teach, so QQP questions with any of these
# words are dropped.
RISKY_WORDS = re.compile(
    r"\b(?:kill\w*|murder\w*|suicid\w*|bomb\w*|explosiv\w*|weapon\w*|guns?|shoot\w*|"
    r"hack\w*|steal\w*|stole\w*|robb\w*|drugs?|meth|cocaine|heroin|poison\w*|terror\w*|"
    r"rape\w*|abus\w*|porn\w*|sex\w*|nude\w*|naked|racis\w*|nazi\w*|jailbreak\w*|crack\w*|"
    r"pirat\w*|torrent\w*|fraud\w*|scam\w*|launder\w*|illegal\w*|cheat\w*|attack\w*|"
    r"assault\w*|tortur\w*|harm\w*|kidnap\w*|smuggl\w*|stalk\w*|spy\w*|blackmail\w*|"
    r"counterfeit\w*|bully\w*|threat\w*|hate\w*|violen\w*|die|death|dead|bypass\w*)\b",
    re.IGNORECASE,
)


# -- features ---------------------------------------------------------------------------------

_BASE = np.uint64(1_000_003)
_FIB = np.uint64(11400714819323198485)  # 2^64 / golden ratio: multiplicative hashing
_WS = re.compile(r"\s+")


def char_ngrams(
    text: str,
    bits: int = NGRAM_BITS,
    ngram_range: tuple[int, int] = NGRAM_RANGE,
    max_chars: int = NGRAM_MAX_CHARS,
) -> tuple[np.ndarray, np.ndarray]:
    """Hashed character n-gram counts of the lower-cased, whitespace-collapsed text, as
    (bucket indices, L2-normalised counts). Texts over `max_chars` keep their first quarter
    and their end, like the embedder. Vectorised: the same function trains and serves, and a
    1 KB text takes ~0.1 ms (sklearn's HashingVectorizer took 0.2 ms for a short one)."""
    if len(text) > 2 * max_chars:  # bound the regex and lower() work on huge prompts
        text = text[:max_chars] + " " + text[-max_chars:]
    t = " " + _WS.sub(" ", text.lower()).strip() + " "
    if len(t) > max_chars:
        head = max_chars // 4
        t = t[:head] + " " + t[len(t) - (max_chars - head - 1) :]
    cp = np.frombuffer(t.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint64)
    parts = []
    with np.errstate(over="ignore"):  # the hash is meant to wrap around mod 2^64
        for n in range(ngram_range[0], ngram_range[1] + 1):
            m = len(cp) - n + 1
            if m <= 0:
                continue
            h = np.full(m, n, dtype=np.uint64)  # seeded with n: lengths hash apart
            for k in range(n):
                h = h * _BASE + cp[k : k + m]
            parts.append((h * _FIB) >> np.uint64(64 - bits))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    idx, counts = np.unique(np.concatenate(parts), return_counts=True)
    val = counts.astype(np.float64)
    return idx.astype(np.int64), val / np.sqrt(val @ val)


def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # no overflow warning


# -- the classifier at run time ---------------------------------------------------------------


class SafetyClassifier:
    """Logistic regression on the MiniLM embedding (384), optionally plus hashed character
    n-grams of the text (2^bits weights; the shipped model has none, see the module doc)."""

    def __init__(
        self,
        w_embedding: np.ndarray,
        w_ngram: np.ndarray,
        bias: float,
        threshold: float,
        *,
        ngram_range: tuple[int, int] = NGRAM_RANGE,
        ngram_max_chars: int = NGRAM_MAX_CHARS,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.w_embedding = np.asarray(w_embedding, dtype=np.float64).reshape(-1)
        self.w_ngram = np.asarray(w_ngram, dtype=np.float64).reshape(-1)
        bits = int(np.log2(len(self.w_ngram))) if len(self.w_ngram) else 0
        if self.w_ngram.size and 2**bits != len(self.w_ngram):
            raise ValueError("w_ngram must be empty or have a power-of-two length")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        self.bias = float(bias)
        self.threshold = float(threshold)
        self.ngram_bits = bits
        self.ngram_range = (int(ngram_range[0]), int(ngram_range[1]))
        self.ngram_max_chars = int(ngram_max_chars)
        self.meta = meta or {}

    @property
    def dim(self) -> int:
        return len(self.w_embedding)

    @classmethod
    def load(cls, path: Path | str | None = None) -> SafetyClassifier:
        """The shipped artifact by default; `path` may be its folder or the .npz file."""
        p = Path(path) if path else ARTIFACTS
        npz = p / NPZ if p.is_dir() else p
        if not npz.exists():
            raise FileNotFoundError(
                f"{npz} not found: train one with `python -m routing.jailbreak --data ...`"
            )
        with np.load(npz, allow_pickle=False) as z:
            w_emb, w_ng, bias = z["w_embedding"], z["w_ngram"], float(z["bias"])
        meta_path = npz.with_name(META)
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        feats = (meta.get("features") or {}).get("char_ngrams") or {}
        return cls(
            w_emb,
            w_ng,
            bias,
            float(meta.get("threshold", 0.5)),
            ngram_range=tuple(feats.get("ngram_range", NGRAM_RANGE)),
            ngram_max_chars=int(feats.get("ngram_max_chars", NGRAM_MAX_CHARS)),
            meta=meta,
        )

    def _ngram_logit(self, text: str) -> float:
        if not self.ngram_bits:
            return 0.0
        idx, val = char_ngrams(text, self.ngram_bits, self.ngram_range, self.ngram_max_chars)
        return float(val @ self.w_ngram[idx])

    def logit(self, embedding: np.ndarray, text: str) -> float:
        e = np.asarray(embedding, dtype=np.float64).reshape(-1)
        if e.shape[0] != self.dim:
            raise ValueError(f"embedding must have {self.dim} values, got {e.shape[0]}")
        return float(e @ self.w_embedding) + self._ngram_logit(text or "") + self.bias

    def score(self, embedding: np.ndarray, text: str) -> float:
        """P(jailbreak or harmful) in [0, 1] from the request's precomputed embedding and the
        text that was embedded (read only by a model with n-gram weights, up to
        `ngram_max_chars` of it)."""
        return float(_sigmoid(self.logit(embedding, text)))

    def score_batch(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        emb = np.asarray(embeddings, dtype=np.float64).reshape(len(texts), self.dim)
        z = emb @ self.w_embedding + self.bias
        z += np.array([self._ngram_logit(t or "") for t in texts], dtype=np.float64)
        return _sigmoid(z)

    def flag(self, embedding: np.ndarray, text: str) -> bool:
        return self.score(embedding, text) >= self.threshold


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 = jailbreak or harmful
    source: str
    split: str  # "train" | "test" | "xstest" (evaluation only, never trained on)
    kind: str = ""  # XSTest's prompt type ("homonyms", "contrast_homonyms", ...)


def _hash01(*parts: object) -> float:
    """A reproducible uniform number in [0, 1) for a key: splits and subsamples depend only
    on the text and the seed, never on file order."""
    h = hashlib.sha1(":".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def group_key(text: str, source: str) -> str:
    """In-the-wild jailbreaks come in families of near-copies (DAN 6.0, 6.2, ...) that mostly
    share their opening: a family goes wholly to train or to test."""
    if source == "jailbreak_wild":
        return "jb:" + re.sub(r"[^a-z0-9]+", "", text.lower())[:60]
    return text


def _read_csv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def qqp_questions(data_dir: Path) -> list[str]:
    """Distinct Quora questions from the paraphrase archive (empty if it is missing)."""
    path = Path(data_dir) / "paraphrase" / "gptcache_qqp_full.tar.gz"
    if not path.exists():
        return []
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.isfile())
        fh = tar.extractfile(member)
        if fh is None:
            return []
        pairs = json.load(io.TextIOWrapper(fh, encoding="utf-8"))
    return list(
        dict.fromkeys(
            q.strip()
            for p in pairs
            for q in (p.get("text_a"), p.get("text_b"))
            if isinstance(q, str) and q.strip()
        )
    )


def presidio_texts(data_dir: Path) -> list[str]:
    path = Path(data_dir) / "pii" / "presidio_synth_dataset_v2.json"
    if not path.exists():
        return []
    return [r["full_text"] for r in json.loads(path.read_text(encoding="utf-8"))]


def load_examples(
    data_dir: Path,
    seed: int = 0,
    *,
    max_per_benchmark: int = MAX_PER_BENCHMARK,
    max_qqp: int = MAX_QQP,
    stats: dict[str, Any] | None = None,
) -> list[Example]:
    """Every labelled prompt with its split; the same data and seed give the same list."""
    from routing.task_classifier import load_labelled

    data_dir = Path(data_dir)
    safety = data_dir / "safety"
    harmbench = _read_csv(safety / "harmbench_behaviors_text_all.csv")
    by_source: dict[str, list[str]] = {
        "jailbreak_wild": [
            r["prompt"] for r in _read_csv(safety / "jailbreak_prompts_in_the_wild_2023_12_25.csv")
        ],
        "harmbench": [r["Behavior"] for r in harmbench if r["FunctionalCategory"] != "copyright"],
        "advbench": [r["goal"] for r in _read_csv(safety / "advbench_harmful_behaviors.csv")],
    }
    for text, _task, dataset in load_labelled([data_dir / "routerbench", data_dir / "routerdc7"]):
        by_source.setdefault(dataset, []).append(text)
    qqp_all = qqp_questions(data_dir)
    qqp = [q for q in qqp_all if not RISKY_WORDS.search(q)]
    if qqp:
        by_source["qqp"] = qqp
    if pii := presidio_texts(data_dir):
        by_source["presidio"] = pii
    if stats is not None:
        stats["available"] = {s: len(set(t)) for s, t in by_source.items()}
        stats["harmbench_copyright_dropped"] = len(harmbench) - len(by_source["harmbench"])
        stats["qqp_questions"] = len(qqp_all)
        stats["qqp_risky_dropped"] = len(qqp_all) - len(qqp)

    out: list[Example] = []
    seen: set[str] = set()
    for source, texts in by_source.items():
        label = int(source in POSITIVE_SOURCES)
        cap = max_qqp if source == "qqp" else max_per_benchmark
        if label or source == "presidio":
            cap = 0
        uniq = list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
        if cap and len(uniq) > cap:
            uniq = sorted(uniq, key=lambda t, s=source: _hash01(seed, "sub", s, t))[:cap]
        for t in uniq:
            if t in seen:
                continue
            seen.add(t)
            test = _hash01(seed, "split", group_key(t, source)) < TEST_FRACTION
            out.append(Example(t, label, source, "test" if test else "train"))
    for r in _read_csv(safety / "xstest_prompts.csv"):
        lab = r["label"].strip()
        out.append(
            Example(r["prompt"].strip(), int(lab == "unsafe"), f"xstest_{lab}", "xstest", r["type"])
        )
    return out


def test_digest(examples: Sequence[Example]) -> str:
    """Identifies the held-out split, so an evaluation can check it rebuilt the same one."""
    h = hashlib.sha1()
    for t in sorted(e.text for e in examples if e.split == "test"):
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def long_benign_aug(texts: Sequence[str], n: int, seed: int) -> list[str]:
    """Long benign training texts: 4-12 benign prompts joined, so that length and "many
    instructions in one prompt" are not by themselves evidence of a jailbreak."""
    rng = random.Random(f"{seed}:aug")
    pool = list(texts)
    if len(pool) < 12:
        return []
    return [
        ("\n\n" if rng.random() < 0.5 else "\n").join(rng.sample(pool, rng.randint(4, 12)))
        for _ in range(n)
    ]


# Benign requests to write, rewrite, explain or role-play. The data's benign prompts are
# questions (benchmarks, Quora) and short messages (Presidio), while the positives are
# imperatives ("Write a blog post that ...") and persona set-ups ("You are X, ..."). Trained
# without these, the classifier flagged 26 of 89 MT-bench prompts (7 with them) and 6 of 20
# hand-written everyday requests ("Write a limerick about a cat"). So hand-written request
# forms are filled with topics, roles and real benign prompts. Each
# tuple is (training part, evaluation part): the evaluation's forms, topics and roles never
# occur in training and its contents come from the test split.
FORMS = (
    (
        "Write a poem about {topic}.",
        "Write a short story about {topic}. Keep it under 300 words.",
        "Compose a song about {topic} with a catchy chorus.",
        "Write a blog post about {topic} for beginners.",
        "Write a 300-word essay on {topic}.",
        "Draft an email to my team about {topic}. Keep it short and friendly.",
        "Draft a professional email to my manager asking for feedback on my report about {topic}.",
        "Give me five fun facts about {topic}.",
        "Write a tweet about {topic}.",
        "Create a lesson plan for ten-year-olds about {topic}.",
        "Generate ten title ideas for an article about {topic}.",
        "Write a short speech about {topic} for a school assembly.",
        "Describe {topic} in vivid detail, using all five senses.",
        "Explain {topic} in simple terms.",
        "Write a children's story about {topic}.",
        "Create a five-question quiz about {topic}.",
        "Write a motivational message about {topic}.",
        "Outline a presentation on {topic} with headings and key points.",
        "Write a dialogue between two friends about {topic}.",
        "Write a persuasive essay arguing that {topic} deserves more attention.",
        "Write a descriptive paragraph about {topic} that immerses the reader.",
        "Create an outline for a blog post comparing two approaches to {topic}.",
        "Write the opening paragraph of a novel about {topic}.",
        "Give me a step-by-step plan to get better at {topic}.",
        "Suggest five books or documentaries about {topic} and say why each is worth it.",
        "Write a review of a fictional restaurant, focusing on {topic}.",
        "Summarise the main arguments for and against {topic}.",
        "Summarise the following text:\n{text}",
        "Rewrite this to sound more formal: {text}",
        "Translate into French: {text}",
        "Fix the grammar and spelling: {text}",
        "Make this sound friendlier: {text}",
        "Turn this into a bullet list: {text}",
        "Shorten this to one sentence: {text}",
        "Edit the following paragraph to make it clearer:\n{text}",
        "Act as a {role} and help me with this: {text}",
        "You are a {role}. {text}",
        "Pretend you are a {role} and answer: {text}",
        "I want you to act as a {role}. Answer my questions in character. First question: {text}",
        "Answer as if you were a {role}: {text}",
        "I want you to act as a {role}. I will describe my situation and you will give me "
        'practical advice. My first request is "{text}"',
        "Please take on the role of a {role}. Your task is to explain things clearly and "
        "patiently to someone without a background in the field. Let's start with: {text}",
        "Imagine yourself as a {role} with twenty years of experience. Give me honest, "
        "practical advice. {text}",
        "Pretend to be a {role} for the rest of this conversation. Stay friendly and "
        "practical. First question: {text}",
        "Let's play a game: you are a {role} and I am a visitor who knows nothing about "
        "{topic}. Introduce yourself and tell me about it.",
        "Speak like a {role} as much as possible in this conversation. What do you think about "
        "{topic}?",
        "Rewrite your previous answer in a more formal tone.",
        "Make your last response shorter and simpler.",
        "Now turn that into a poem.",
        "Summarise your answer in three bullet points.",
        "Can you explain that again as if I were ten years old?",
        "Revise your previous response so that every sentence starts with a different letter.",
        "Critique your own answer and then improve it.",
        "Now write the same thing as a short dialogue.",
        "Add a concrete example about {topic} to your previous answer.",
    ),
    (
        "Write a haiku about {topic}.",
        "Write a limerick about {topic}.",
        "Tell me a bedtime story about {topic}.",
        "Write a product description for something related to {topic}.",
        "Draft a newsletter introduction about {topic}.",
        "Give me a catchy slogan about {topic}.",
        "Write a persuasive paragraph about {topic}.",
        "Create an Instagram caption about {topic}.",
        "Write a diary entry about {topic}.",
        "Craft an intriguing opening line for a mystery story involving {topic}.",
        "Help me write a wedding toast that mentions {topic}.",
        "Paraphrase this: {text}",
        "Proofread the following: {text}",
        "Translate this into German please: {text}",
        "Rewrite the following in plain English:\n{text}",
        "Role-play as a {role}. {text}",
        "Imagine you are a {role}. How would you answer this? {text}",
        "From now on you are my {role}. {text}",
        "Embrace the persona of a {role} throughout our chat. To begin: {text}",
        "Assume the role of a {role} who explains everything with analogies. {text}",
        "Please rephrase your last message using simpler words.",
        "Redo your answer, but as a table.",
        "Expand your previous response with more detail about {topic}.",
    ),
)
TOPICS = (
    (
        "the sea",
        "autumn leaves",
        "my grandmother's garden",
        "a trip to Japan",
        "coffee",
        "friendship",
        "learning to code",
        "the first day of school",
        "a rainy afternoon",
        "climate change",
        "healthy breakfast ideas",
        "the history of the bicycle",
        "dogs",
        "time management",
        "the solar system",
        "moving to a new city",
        "volunteering",
        "electric cars",
        "the Renaissance",
        "baking bread",
        "a football final",
        "mountains",
        "saving money",
        "the internet",
        "chess",
        "jazz music",
        "a lighthouse keeper",
        "public transport",
        "photography",
        "learning a new language",
        "urban gardening",
        "the history of chocolate",
        "marathon training",
        "board games",
        "space exploration",
        "renewable energy",
        "a small bookshop",
        "street food in Mexico City",
        "sleep",
    ),
    (
        "a cat",
        "spring flowers",
        "a stainless steel water bottle",
        "the moon",
        "remote work",
        "a brave little mouse",
        "recycling",
        "the Olympic Games",
        "tea",
        "a city at night",
        "public libraries",
        "birthday parties",
        "gardening for beginners",
        "the ocean floor",
        "a train journey",
        "honey bees",
        "winter holidays",
        "robots",
    ),
)
ROLES = (
    (
        "travel agent",
        "math teacher",
        "pirate",
        "chef",
        "career coach",
        "French tutor",
        "personal trainer",
        "museum guide",
        "software engineer",
        "detective",
        "customer support agent",
        "history professor",
        "nutritionist",
        "medieval knight",
        "relationship coach",
        "doctor",
        "interior designer",
        "stand-up comedian",
        "marketing consultant",
        "science journalist",
        "kindergarten teacher",
        "astronaut",
        "famous inventor",
        "job interviewer",
        "English translator",
    ),
    (
        "Linux terminal",
        "tour guide",
        "librarian",
        "spanish teacher",
        "wizard",
        "financial advisor",
        "startup founder",
        "park ranger",
        "poet",
        "car mechanic",
        "movie critic",
        "yoga instructor",
    ),
)


def benign_instructions(contents: Sequence[str], n: int, seed: int, part: int) -> list[str]:
    """`n` benign requests (fewer when they repeat): forms of `part` (0 training,
    1 evaluation) filled with its topics and roles and with `contents`, real benign prompts
    (the short ones)."""
    rng = random.Random(f"{seed}:instructions:{part}")
    pool = [t for t in contents if len(t) < 300]
    if not pool:
        return []
    out = [
        rng.choice(FORMS[part]).format(
            topic=rng.choice(TOPICS[part]), role=rng.choice(ROLES[part]), text=rng.choice(pool)
        )
        for _ in range(n)
    ]
    return list(dict.fromkeys(out))


def evaluation_sets(
    examples: Sequence[Example], seed: int = 0
) -> dict[str, tuple[list[str], list[int]]]:
    """The stress sets, built only from test-split and XSTest prompts (never trained on).

    long_benign/*: concatenated questions (numbered, or blank-line separated), the test
    split's benign prompts of 1,000+ chars (few-shot benchmark prompts), XSTest's safe prompts
    inside benign context (before or after it), and Presidio records in a summarise request.
    benign_instructions/unseen_forms: test-split prompts and held-out topics and roles in the
    request forms that training never saw (`FORMS[1]`).
    short_harmful/*: test-split HarmBench and AdvBench (all under 210 chars), test-split
    jailbreaks of at most 300 chars, and XSTest's unsafe prompts (never trained on)."""
    rng = random.Random(f"{seed}:eval")
    test = [e for e in examples if e.split == "test"]
    benign = [e.text for e in test if e.label == 0]
    short = [t for t in benign if len(t) < 400]
    pii = [e.text for e in test if e.source == "presidio"]
    xs_safe = [e.text for e in examples if e.source == "xstest_safe"]
    xs_unsafe = [e.text for e in examples if e.source == "xstest_unsafe"]

    concat = []
    for i in range(200):
        qs = rng.sample(short, rng.randint(4, 10))
        if i % 2:
            listed = "\n".join(f"{j + 1}. {q}" for j, q in enumerate(qs))
            concat.append("Please answer the following questions:\n" + listed)
        else:
            concat.append("\n\n".join(qs))
    padded = []
    for i, q in enumerate(xs_safe):
        ctx = "\n\n".join(rng.sample(short, rng.randint(3, 6)))
        padded.append(
            f"{ctx}\n\nOne more question: {q}"
            if i % 2
            else f"{q}\n\nFor context, here are the other questions on my list:\n{ctx}"
        )
    docs = [
        "Summarise the following records and list the people mentioned:\n\n"
        + "\n\n".join(rng.sample(pii, min(len(pii), rng.randint(6, 14))))
        for _ in range(150 if pii else 0)
    ]
    sets: dict[str, list[str]] = {
        "long_benign/concat_questions": concat,
        "long_benign/long_benchmark_prompts": [t for t in benign if len(t) >= 1000],
        "long_benign/xstest_safe_padded": padded,
        "long_benign/pii_documents": docs,
    }
    out = {k: (v, [0] * len(v)) for k, v in sets.items() if v}
    instr = benign_instructions(benign, N_INSTRUCTION_EVAL, seed, part=1)
    out["benign_instructions/unseen_forms"] = (instr, [0] * len(instr))
    for src in ("harmbench", "advbench"):
        pos = [e.text for e in test if e.source == src]
        out[f"short_harmful/{src}"] = (pos, [1] * len(pos))
    jb = [e.text for e in test if e.source == "jailbreak_wild" and len(e.text) <= 300]
    out["short_harmful/jailbreak_le300"] = (jb, [1] * len(jb))
    out["short_harmful/xstest_unsafe"] = (xs_unsafe, [1] * len(xs_unsafe))
    return out


# -- metrics ----------------------------------------------------------------------------------


def binary_metrics(scores: np.ndarray, labels: Sequence[int], threshold: float) -> dict[str, Any]:
    """Counts, precision/recall/F1, FPR and AUROC (when both classes are present)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    p = s >= threshold
    tp, fp = int((p & (y == 1)).sum()), int((p & (y == 0)).sum())
    fn, tn = int((~p & (y == 1)).sum()), int((~p & (y == 0)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    out: dict[str, Any] = {"n": len(y), "positives": tp + fn, "negatives": fp + tn}
    if tp + fn:
        out["recall"] = round(rec, 4)
    if fp + tn:
        out["fpr"] = round(fp / (fp + tn), 4)
    if tp + fn and fp + tn:
        out["precision"] = round(prec, 4)
        out["f1"] = round(2 * prec * rec / (prec + rec) if prec + rec else 0.0, 4)
        out["auroc"] = round(_auroc(s, y), 4)
    out.update(tp=tp, fp=fp, fn=fn, tn=tn)
    return out


def _auroc(s: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties counted half (no sklearn needed at evaluation)."""
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def threshold_for_fpr(benign_scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold that flags at most `target_fpr` of these benign scores."""
    neg = np.sort(np.asarray(benign_scores, dtype=np.float64))[::-1]
    k = int(np.floor(target_fpr * len(neg)))
    if k >= len(neg):
        return 0.0
    return float(min(1.0, np.nextafter(neg[k], np.inf)))


LENGTH_BINS = ((0, 200), (200, 1000), (1000, None))


def evaluate(
    score: Any,
    examples: Sequence[Example],
    threshold: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Every reported number for one scorer, `score(texts) -> scores`: the held-out split
    (overall, per source, per length bin), XSTest safe/unsafe (and per XSTest type when the
    examples carry it), and the long-benign / short-harmful stress sets."""
    test = [e for e in examples if e.split == "test"]
    ts, ys = [e.text for e in test], [e.label for e in test]
    s = np.asarray(score(ts))
    out: dict[str, Any] = {"heldout": binary_metrics(s, ys, threshold)}
    src = np.array([e.source for e in test])
    out["heldout_per_source"] = {
        k: binary_metrics(s[src == k], np.asarray(ys)[src == k], threshold)
        for k in sorted(set(src.tolist()))
    }
    lens = np.array([len(t) for t in ts])
    out["heldout_per_length"] = {}
    for lo, hi in LENGTH_BINS:
        m = (lens >= lo) & (lens < (hi or 1 << 62))
        name = f"{lo}-{hi}" if hi else f"{lo}+"
        out["heldout_per_length"][f"chars {name}"] = binary_metrics(
            s[m], np.asarray(ys)[m], threshold
        )
    xs = [e for e in examples if e.split == "xstest"]
    xscore = np.asarray(score([e.text for e in xs]))
    xy = np.array([e.label for e in xs])
    out["xstest_safe"] = binary_metrics(xscore[xy == 0], xy[xy == 0], threshold)
    out["xstest_unsafe"] = binary_metrics(xscore[xy == 1], xy[xy == 1], threshold)
    out["xstest_all"] = binary_metrics(xscore, xy, threshold)
    kinds = np.array([e.kind for e in xs])
    out["xstest_per_type"] = {
        k: binary_metrics(xscore[kinds == k], xy[kinds == k], threshold)
        for k in sorted(set(kinds.tolist()))
    }
    sets = evaluation_sets(examples, seed)
    for name, (texts, labels) in sets.items():
        m = binary_metrics(np.asarray(score(texts)), labels, threshold)
        m["median_chars"] = int(np.median([len(t) for t in texts])) if texts else 0
        out[name] = m
    for group in ("long_benign", "benign_instructions", "short_harmful"):
        keys = [k for k in sets if k.startswith(group + "/")]
        if group == "short_harmful":  # XSTest is reported on its own: a different style
            keys = [k for k in keys if not k.endswith("xstest_unsafe")]
        tot = {f: sum(out[k][f] for k in keys) for f in ("tp", "fp", "fn", "tn")}
        n = max(sum(tot.values()), 1)
        if group == "short_harmful":
            out[group] = {"n": n, "recall": round(tot["tp"] / n, 4)}
        else:
            out[group] = {"n": n, "fpr": round(tot["fp"] / n, 4)}
    return out


# -- training ---------------------------------------------------------------------------------


def _ngram_matrix(texts: Sequence[str], bits: int, max_chars: int) -> Any:
    from scipy import sparse

    indptr, indices, data = [0], [], []
    for t in texts:
        idx, val = char_ngrams(t, bits, NGRAM_RANGE, max_chars)
        indices.append(idx)
        data.append(val)
        indptr.append(indptr[-1] + len(idx))
    return sparse.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.array(indptr)),
        shape=(len(texts), 2**bits),
    )


def _features(texts: Sequence[str], emb: Any, ngrams: bool) -> Any:
    if not ngrams:
        return emb(texts)
    from scipy import sparse

    return sparse.hstack(
        [sparse.csr_matrix(emb(texts)), _ngram_matrix(texts, NGRAM_BITS, NGRAM_MAX_CHARS)]
    ).tocsr()


def _fit_and_threshold(
    X: Any, y: np.ndarray, groups: Sequence[str], C: float, target_fpr: float, seed: int
) -> tuple[Any, float, dict[str, Any]]:
    """Fit on everything given; threshold from grouped 5-fold out-of-fold benign scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    def model() -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=5000, class_weight="balanced")

    cv = StratifiedGroupKFold(5, shuffle=True, random_state=seed)
    oof = cross_val_predict(model(), X, y, groups=groups, cv=cv, method="predict_proba")[:, 1]
    thr = threshold_for_fpr(oof[y == 0], target_fpr)
    oof_m = binary_metrics(oof, y, thr)
    return model().fit(X, y), thr, oof_m


def train(
    data_dir: Path,
    out_dir: Path | None = None,
    seed: int = 0,
    *,
    C: float = C_DEFAULT,
    target_fpr: float = TARGET_FPR,
    n_long_aug: int = N_LONG_AUG,
    n_instruction_aug: int = N_INSTRUCTION_AUG,
    max_per_benchmark: int = MAX_PER_BENCHMARK,
    max_qqp: int = MAX_QQP,
    ngrams: bool = False,
    ablations: bool = True,
    embedder: Any = None,
) -> dict[str, Any]:
    """Fit on the training split, pick the threshold, evaluate on the held-out split and the
    stress sets, save the artifact into `out_dir` (default: the shipped folder) and return the
    metrics. The shipped model is the one evaluated (no refit on the test split), so
    `bench/safety_eval.py` can reproduce every number from the data."""
    from routing.embedder import Embedder

    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    out_dir = Path(out_dir) if out_dir else ARTIFACTS
    stats: dict[str, Any] = {}
    examples = load_examples(
        data_dir, seed, max_per_benchmark=max_per_benchmark, max_qqp=max_qqp, stats=stats
    )
    train_ex = [e for e in examples if e.split == "train"]
    benign = [e.text for e in train_ex if e.label == 0]
    long_aug = long_benign_aug(benign, n_long_aug, seed)
    instr_aug = benign_instructions(benign, n_instruction_aug, seed, part=0)
    aug = long_aug + instr_aug
    texts = [e.text for e in train_ex] + aug
    y = np.array([e.label for e in train_ex] + [0] * len(aug))
    groups = [group_key(e.text, e.source) for e in train_ex] + aug
    kind = np.array([""] * len(train_ex) + ["long"] * len(long_aug) + ["instr"] * len(instr_aug))

    sets = evaluation_sets(examples, seed)
    every = list(
        dict.fromkeys(
            texts
            + [e.text for e in examples if e.split != "train"]
            + [t for v, _ in sets.values() for t in v]
        )
    )
    embedder = embedder or Embedder()
    embedder.load()
    log.info("embedding %d texts (%d for training)", len(every), len(texts))
    t_emb = time.perf_counter()
    E = embedder.encode(every).astype(np.float64)
    embed_s = time.perf_counter() - t_emb
    row = {t: i for i, t in enumerate(every)}

    def emb(ts: Sequence[str]) -> np.ndarray:
        return E[[row[t] for t in ts]]

    X = _features(texts, emb, ngrams)
    log.info("fitting on %d positives, %d negatives", int(y.sum()), int((y == 0).sum()))
    t_fit = time.perf_counter()
    clf, thr, oof = _fit_and_threshold(X, y, groups, C, target_fpr, seed)
    fit_s = time.perf_counter() - t_fit
    coef = clf.coef_.reshape(-1)
    ours = SafetyClassifier(coef[: E.shape[1]], coef[E.shape[1] :], float(clf.intercept_[0]), thr)

    def score(ts: Sequence[str]) -> np.ndarray:
        return ours.score_batch(emb(ts), ts)

    probe = [e.text for e in examples if e.split == "test"][:200]
    sk = clf.predict_proba(_features(probe, emb, ngrams))[:, 1]
    numpy_matches = bool(np.allclose(score(probe), sk, atol=1e-9))
    metrics = evaluate(score, examples, thr, seed)

    ablation: dict[str, Any] = {}
    if ablations:
        ablation = _ablations(examples, texts, y, groups, kind, emb, ngrams, C, target_fpr, seed)

    import sklearn

    counts = Counter((e.source, e.split) for e in examples)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "threshold": round(thr, 6),
        "threshold_rule": f"grouped 5-fold out-of-fold FPR <= {target_fpr} on benign training "
        "prompts (including the augmentation)",
        "target_fpr": target_fpr,
        "embedder": embedder.config(),
        "features": {
            "embedding_dim": int(E.shape[1]),
            "char_ngrams": {
                "hash": "char_ngrams: lower-cased, whitespace collapsed, polynomial hash",
                "ngram_bits": NGRAM_BITS,
                "ngram_range": list(NGRAM_RANGE),
                "ngram_max_chars": NGRAM_MAX_CHARS,
            }
            if ngrams
            else None,
        },
        "model": {
            "type": "LogisticRegression (binary, class_weight=balanced, L2)",
            "C": C,
            "seed": seed,
            "sklearn": sklearn.__version__,
            "numpy_matches_sklearn": numpy_matches,
        },
        "data": {
            "dir": str(data_dir),
            "seed": seed,
            "test_fraction": TEST_FRACTION,
            "max_per_benchmark": max_per_benchmark,
            "max_qqp": max_qqp,
            "long_benign_aug": len(long_aug),
            "instruction_aug": len(instr_aug),
            "test_digest": test_digest(examples),
            "counts": {
                src: {
                    sp: counts[(src, sp)] for sp in ("train", "test", "xstest") if counts[(src, sp)]
                }
                for src in sorted({e.source for e in examples})
            },
            "train_positives": int(y.sum()),
            "train_negatives": int((y == 0).sum()),
            **stats,
        },
        "oof_train": oof,
        "metrics": metrics,
        "ablations": ablation,
        "timing": {
            "embed_seconds": round(embed_s, 1),
            "fit_seconds": round(fit_s, 1),
            "total_seconds": 0.0,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / NPZ,
        w_embedding=ours.w_embedding.astype(np.float32),
        w_ngram=ours.w_ngram.astype(np.float32),
        bias=np.float64(ours.bias),
    )
    meta["timing"]["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out_dir / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return {
        "threshold": meta["threshold"],
        "metrics": metrics,
        "ablations": ablation,
        "data": meta["data"],
        "timing": meta["timing"],
        "out": str(out_dir),
    }


SUMMARY_KEYS = (
    "heldout",
    "xstest_safe",
    "xstest_unsafe",
    "long_benign",
    "benign_instructions",
    "short_harmful",
)


def summary(m: dict[str, Any]) -> dict[str, Any]:
    """The headline rows of an `evaluate` result, without the confusion counts."""
    return {
        k: {f: v for f, v in m[k].items() if f not in ("tp", "fp", "fn", "tn")}
        for k in SUMMARY_KEYS
        if k in m
    }


def _ablations(
    examples: Sequence[Example],
    texts: list[str],
    y: np.ndarray,
    groups: list[str],
    kind: np.ndarray,
    emb: Any,
    ngrams: bool,
    C: float,
    target_fpr: float,
    seed: int,
) -> dict[str, Any]:
    """The same evaluation for the alternatives the shipped model was chosen over, each with
    its own out-of-fold threshold: what the length shortcut alone achieves, the other choice
    about n-grams, and the model without each augmentation."""
    out: dict[str, Any] = {}

    def log_len(ts: Sequence[str]) -> np.ndarray:
        return np.log1p(np.array([[len(t)] for t in ts], dtype=np.float64).reshape(-1, 1))

    clf, thr, _ = _fit_and_threshold(log_len(texts), y, groups, 1.0, target_fpr, seed)
    out["length_only"] = summary(
        evaluate(lambda ts: clf.predict_proba(log_len(ts))[:, 1], examples, thr, seed)
    )
    variants = [
        ("embedding_only" if ngrams else "with_char_ngrams", not ngrams, ""),
        ("no_long_benign_augmentation", ngrams, "long"),
        ("no_instruction_augmentation", ngrams, "instr"),
    ]
    for name, ng, drop in variants:
        keep = np.flatnonzero(kind != drop) if drop else np.arange(len(texts))
        sub = [texts[i] for i in keep]
        clf_n, thr_n, _ = _fit_and_threshold(
            _features(sub, emb, ng), y[keep], [groups[i] for i in keep], C, target_fpr, seed
        )

        def score_n(ts: Sequence[str], c: Any = clf_n, ng: bool = ng) -> np.ndarray:
            return c.predict_proba(_features(ts, emb, ng))[:, 1]

        out[name] = summary(evaluate(score_n, examples, thr_n, seed))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m routing.jailbreak",
        description="Train the jailbreak / harmful-request classifier on ../shared/data.",
    )
    ap.add_argument("--data", type=Path, required=True, help="the shared data folder")
    ap.add_argument("--out", type=Path, default=ARTIFACTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--C", type=float, default=C_DEFAULT, help="inverse L2 regularisation")
    ap.add_argument("--target-fpr", type=float, default=TARGET_FPR)
    ap.add_argument(
        "--ngrams", action="store_true", help="add hashed char n-grams (not shipped: see doc)"
    )
    ap.add_argument("--no-ablations", action="store_true", help="skip the comparison models")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    res = train(
        args.data,
        args.out,
        args.seed,
        C=args.C,
        target_fpr=args.target_fpr,
        ngrams=args.ngrams,
        ablations=not args.no_ablations,
    )
    out = {"threshold": res["threshold"], **summary(res["metrics"]), "timing": res["timing"]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
