"""Features of a (new question, cached question) pair for the cache's pair verifier.

Why these: the cosine of two MiniLM embeddings cannot see *which* words differ. On QQP the
look-alikes it serves are mostly a word swapped for another of the same kind ("... first
day at EP Energy?" / "... at CMS Energy?", Bulgaria / Slovenia, paddleboarding / sailing) or
an added qualifier, while true paraphrases change function words and word forms. So beside
the cosine: counts of the content words only one side has (and whether both sides have some,
a substitution), the same for capitalised words (names), word and character-trigram overlap,
a different question word, negation on one side only, the length ratio, and whether the
shared words come in another order (swapped roles: "Are cats afraid of tigers?").
Plus the two embeddings' elementwise product and absolute difference (the classic pair
features of a bi-encoder's classifier head): which directions differ, not just how much.

Pure functions of the two texts and their (unit) embeddings; nothing is loaded. Every
feature is symmetric, so it does not matter which question is the new one.
"""

from __future__ import annotations

import re

import numpy as np

_STOP_WORDS = (
    "a an the of to in on for and or is are was were be been being do does did i you he she "
    "it we they my your his her its our their me us them what how why when where which who "
    "whom can could should would will shall may might must there this that these those with "
    "by at from as about into than then so if"
)
STOP = frozenset(_STOP_WORDS.split())
QUESTION_WORDS = (
    "what", "how", "why", "when", "where", "which", "who", "whom", "whose",
    "is", "are", "can", "do", "does", "should", "will", "would",
)  # fmt: skip
_NEGATION_WORDS = "not no never n't without cannot isnt dont doesnt cant wont didnt arent"
NEGATIONS = frozenset(_NEGATION_WORDS.split())
LEXICAL = (
    "content_words_one_side",
    "content_words_fewer_side",
    "content_words_more_side",
    "content_substitution",
    "names_one_side",
    "names_substitution",
    "word_jaccard",
    "trigram_jaccard",
    "question_word_differs",
    "negation_differs",
    "length_ratio",
    "same_text",
    "shared_order_differs",
)
_WORD = re.compile(r"[A-Za-z0-9']+")
# "What's" / "What is", "don't" / "do not": the same words to every feature
_CONTRACTIONS = (
    (re.compile(r"\bcan[’']t\b", re.I), "can not"),
    (re.compile(r"\bwon[’']t\b", re.I), "will not"),
    (re.compile(r"n[’']t\b", re.I), " not"),
    (re.compile(r"[’']re\b", re.I), " are"),
    (re.compile(r"[’']ve\b", re.I), " have"),
    (re.compile(r"[’']ll\b", re.I), " will"),
    (re.compile(r"[’']m\b", re.I), " am"),
    (re.compile(r"[’']d\b", re.I), " would"),
    (
        re.compile(r"\b(what|who|where|how|when|why|it|that|there|here|he|she)[’']s\b", re.I),
        r"\1 is",
    ),
    (re.compile(r"[’']s\b", re.I), ""),  # a possessive
)
MAX_CHARS = 2000  # a question is a few hundred characters; the features cap the work


def _words(text: str) -> list[str]:
    t = text[:MAX_CHARS]
    for pattern, repl in _CONTRACTIONS:
        t = pattern.sub(repl, t)
    return _WORD.findall(t)


def _stem(word: str) -> str:
    w = word.lower().replace("'", "")
    for suffix in ("ing", "es", "s", "ed"):
        if len(w) > 4 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def _content(words: list[str]) -> list[str]:
    return [_stem(w) for w in words if w.lower() not in STOP]


def _names(words: list[str]) -> set[str]:
    """Capitalised words after the first (a question's first word is capitalised anyway)."""
    return {w.lower() for w in words[1:] if w[:1].isupper()}


def _trigrams(words: list[str]) -> set[str]:
    s = " ".join(w.lower() for w in words)
    return {s[i : i + 3] for i in range(len(s) - 2)}


def _question_word(words: list[str]) -> str:
    return next((w.lower() for w in words if w.lower() in QUESTION_WORDS), "")


def _order_differs(a: list[str], b: list[str]) -> float:
    """1 when the content words both sides share appear in another order."""
    shared = set(a) & set(b)
    first_a = [w for w in dict.fromkeys(a) if w in shared]
    first_b = [w for w in dict.fromkeys(b) if w in shared]
    return float(len(shared) > 1 and first_a != first_b)


def lexical(a: str, b: str) -> list[float]:
    """The `LEXICAL` features of a pair, in that order."""
    wa, wb = _words(a), _words(b)
    ca, cb = _content(wa), _content(wb)
    sa, sb = set(ca), set(cb)
    oa, ob = sa - sb, sb - sa
    na, nb = _names(wa) - _names(wb), _names(wb) - _names(wa)
    ta, tb = _trigrams(wa), _trigrams(wb)
    nega = bool(NEGATIONS & {w.lower() for w in wa})
    negb = bool(NEGATIONS & {w.lower() for w in wb})
    la, lb = len(wa), len(wb)
    return [
        float(len(oa) + len(ob)),
        float(min(len(oa), len(ob))),
        float(max(len(oa), len(ob))),
        float(bool(oa) and bool(ob)),
        float(len(na) + len(nb)),
        float(bool(na) and bool(nb)),
        len(sa & sb) / max(1, len(sa | sb)),
        len(ta & tb) / max(1, len(ta | tb)),
        float(_question_word(wa) != _question_word(wb)),
        float(nega != negb),
        min(la, lb) / max(1, la, lb),
        float(" ".join(wa).lower() == " ".join(wb).lower()),
        _order_differs(ca, cb),
    ]


def pair_matrix(
    pairs: list[tuple[str, str]], cosines: np.ndarray, va: np.ndarray, vb: np.ndarray
) -> np.ndarray:
    """One row per pair: cosine, `LEXICAL`, va * vb, |va - vb| (float32)."""
    lex = np.array([lexical(a, b) for a, b in pairs], dtype=np.float32).reshape(len(pairs), -1)
    va = np.asarray(va, dtype=np.float32).reshape(len(pairs), -1)
    vb = np.asarray(vb, dtype=np.float32).reshape(len(pairs), -1)
    cos = np.asarray(cosines, dtype=np.float32).reshape(-1, 1)
    return np.hstack([cos, lex, va * vb, np.abs(va - vb)])
