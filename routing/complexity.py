"""Cheap text signals for the query features: readability, code and math markers.

All pure functions of a string, no model and no new dependency.

Complexity is the inverted Flesch reading ease (Flesch 1948):
    FRE = 206.835 - 1.015 * (words / sentences) - 84.6 * (syllables / words)
    complexity = clip((100 - FRE) / 100, 0, 1)
so plain text ("The cat sat on the mat.", FRE ~116) is 0 and dense academic prose (FRE < 0)
is 1. Bins follow Flesch's own bands: FRE >= 60 (plain English or easier) is EASY,
30 <= FRE < 60 (fairly difficult to difficult) MEDIUM, FRE < 30 (very difficult) HARD;
in complexity terms: <= 0.4 easy, <= 0.7 medium, above hard.

Flesch is defined for English. Fenced code blocks are left out of the count (prose only), and
text that is mostly non-Latin script (Chinese, Japanese, Cyrillic...) gets the neutral 0.5,
because a whitespace word / vowel-group syllable count means nothing there.
"""

from __future__ import annotations

import re
from functools import lru_cache

EASY, MEDIUM, HARD = 0, 1, 2
BIN_NAMES = ("easy", "medium", "hard")
N_BINS = 3
NEUTRAL = 0.5

_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*|\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n+")
_VOWEL_GROUPS = re.compile(r"[aeiouy]+")
_FENCED = re.compile(r"```.*?(?:```|\Z)", re.S)
_LETTER = re.compile(r"[^\W\d_]")
_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F]")


@lru_cache(maxsize=65536)
def syllables(word: str) -> int:
    """Vowel-group heuristic: groups of a/e/i/o/u/y, minus a silent final 'e' (but not
    '-le', '-ee', '-ye'), plus '-ed' only after t/d; at least 1. Numbers count 1."""
    w = word.lower().strip("'’")
    if not w or not w[0].isalpha():
        return 1
    w = re.sub(r"['’]s$", "", w)
    n = len(_VOWEL_GROUPS.findall(w))
    silent_e = len(w) > 2 and w.endswith("e") and not w.endswith(("le", "ee", "ye"))
    silent_ed = len(w) > 3 and w.endswith("ed") and w[-3] not in "td"
    silent_es = len(w) > 2 and w.endswith("es") and w[-3] not in "scxzhg"
    if silent_e or silent_ed or silent_es:
        n -= 1
    return max(1, n)


def flesch_reading_ease(text: str) -> float | None:
    """Flesch reading ease of the prose in `text` (fenced code removed); None without words."""
    prose = _FENCED.sub(" ", text) if "```" in text else text
    words = _WORD.findall(prose)
    if not words:
        words = _WORD.findall(text)
        prose = text
    if not words:
        return None
    sentences = sum(1 for s in _SENTENCE_END.split(prose) if _WORD.search(s))
    sentences = max(1, sentences)
    syl = sum(syllables(w) for w in words)
    return 206.835 - 1.015 * (len(words) / sentences) - 84.6 * (syl / len(words))


def mostly_non_latin(text: str) -> bool:
    if text.isascii():
        return False
    letters = _LETTER.findall(text[:4000])
    if not letters:
        return False
    return len(_LATIN.findall(text[:4000])) < 0.5 * len(letters)


def complexity(text: str) -> float:
    """Inverted Flesch reading ease in [0, 1]: 0 very easy, 1 very hard (see module doc)."""
    if mostly_non_latin(text):
        return NEUTRAL
    fre = flesch_reading_ease(text)
    if fre is None:
        return 0.0
    return min(1.0, max(0.0, (100.0 - fre) / 100.0))


def complexity_bin(c: float) -> int:
    """EASY (FRE >= 60), MEDIUM (30 <= FRE < 60), HARD (FRE < 30)."""
    if c <= 0.4:
        return EASY
    if c <= 0.7:
        return MEDIUM
    return HARD


# -- code -------------------------------------------------------------------------------------

# Each marker is a (needles, pattern) pair: the regex only runs when one of the plain
# substrings is present, which keeps the common case (prose) at a few microseconds.
_Rule = tuple[tuple[str, ...], "re.Pattern[str] | None"]


def _rules(*rules: tuple[tuple[str, ...], str | None]) -> list[_Rule]:
    return [(needles, re.compile(p, re.M) if p else None) for needles, p in rules]


# One of these is enough to call it code.
_CODE_STRONG = _rules(
    (("```", "console.log(", "System.out.print", "printf(", "std::", "#include"), None),
    (("def ",), r"^[ \t]*(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(.*\)[ \t]*(?:->[^:\n]+)?:"),
    (("class ",), r"^[ \t]*class[ \t]+\w+[ \t]*(?:\([^)\n]*\))?[ \t]*[:{]"),
    (("function",), r"\bfunction\b[ \t]*\w*[ \t]*\([^)\n]*\)[ \t]*\{"),
    (("=>",), r"=>[ \t]*\{"),
    (
        ("public", "private", "protected"),
        r"\b(?:public|private|protected)[ \t]+(?:static[ \t]+)?[\w<>\[\]]+[ \t]+\w+[ \t]*\(",
    ),
    (("{",), r"\b(?:int|void|char|float|double|bool|auto)[ \t]+\w+[ \t]*\([^)\n]*\)[ \t]*\{"),
    (("fn ", "func "), r"\b(?:fn|func)[ \t]+\w+[ \t]*\("),
    (
        ("import ",),
        r"^[ \t]*(?:from[ \t]+[\w.]+[ \t]+)?import[ \t]+[\w.]+(?:[ \t]+as[ \t]+\w+)?"
        r"[ \t]*;?[ \t]*$",
    ),
    (("SELECT",), r"\bSELECT\b[^;\n]{1,200}\bFROM\b"),
)
# Two of these (occurrences) are needed.
_CODE_WEAK = _rules(
    (("{",), r"^[ \t]*(?:for|while|if)[ \t]*\(.*\)[ \t]*\{"),  # C-like blocks
    ((":\n", ": \n"), r"^[ \t]*(?:for|while|if|elif|else|try|except|with)\b.*:[ \t]*$"),
    (("return",), r"^[ \t]*return\b"),
    ((";", "{", "}"), r"[;{}][ \t]*$"),  # ; { } line ends
    ((">>>", "$ "), r"^\s*(?:>>>|\$)[ \t]+\w"),  # REPL / shell
    ((").",), r"\w+\.\w+\([^)\n]*\)\.\w+\("),  # chained calls
    (("__",), r"\b__\w+__\b"),  # dunder names
    (("=",), r"^[ \t]*\w+(?:\[[^\]\n]*\])?[ \t]*[-+*/]?=[ \t]*[\w\[({\"'].*$"),  # x = ...
    (("",), r"\b[a-z]{2,}[A-Z][a-z]+[A-Za-z0-9]*\b"),  # camelCase identifiers (setState)
    (("_",), r"\b(?=\w{5})[a-z][a-z0-9]*_[a-z0-9_]*[a-z0-9]\b"),  # snake_case (max_len, not p_x)
)
# Asking for code, on lower-cased text.
_CODE_REQUEST_NEEDLES = (
    "function",
    "program",
    "script",
    "class",
    "method",
    "code",
    "regex",
    "regular expression",
    "sql",
    "algorithm",
    "unit test",
    "api",
    "snippet",
    "module",
    "error",
    "bug",
    "exception",
    "loop",
    "component",
    "hook",
    "compiler",
    "library",
    "package",
    "query",
    "crash",
    "array",
    "trace",
    "segfault",
    "null pointer",
)
_CODE_REQUEST = re.compile(
    r"\b(?:write|implement|create|code|build|fix|debug|refactor|optimi[sz]e|complete|generate)\b"
    r"[^.?!\n]{0,60}?\b(?:function|program|script|class|method|code|regex|regular expression"
    r"|sql query|algorithm|unit tests?|api endpoint|snippet|module)\b"
    r"|\b(?:python|javascript|typescript|java|c\+\+|c#|golang|rust|kotlin|swift|php|ruby"
    r"|bash|powershell|sql|html|css|react|django|numpy|pandas)\b[^.?!\n]{0,40}?"
    r"\b(?:function|program|script|class|method|code|error|bug|exception|snippet|loop"
    r"|component|hook|compiler|library|package|query|crash|array|list|dict)\b"
    r"|\b(?:stack ?trace|traceback|segfault|compile error|syntax error|null pointer)\b"
)


def _bounded(text: str, limit: int = 20000) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n" + text[-limit // 2 :]


def _hits(t: str, rules: list[_Rule], enough: int) -> int:
    n = 0
    for needles, pattern in rules:
        if any(x in t for x in needles):
            if pattern is None:
                n += 1
            else:
                n += sum(1 for _ in zip(range(enough), pattern.finditer(t), strict=False))
            if n >= enough:
                break
    return n


def has_code(text: str) -> bool:
    """Code in the text (fences, def/class/#include, braces-and-semicolons lines...) or a
    request for code ("write a python function ...")."""
    t = _bounded(text)
    if _hits(t, _CODE_STRONG, 1):
        return True
    low = t.lower()
    if any(x in low for x in _CODE_REQUEST_NEEDLES) and _CODE_REQUEST.search(low):
        return True
    return _hits(t, _CODE_WEAK, 2) >= 2


# -- math -------------------------------------------------------------------------------------

_DIGIT = re.compile(r"\d")
_ARITH = re.compile(
    r"\d\s*[+*/^×÷=<>≤≥]\s*[-(]?\s*\d"  # 3 + 4, 2*3, 1/2, 4 = 4
    r"|\d\s+-\s+\d"  # 7 - 2 (spaced, so not a date)
)
_ALGEBRA = re.compile(r"\b[a-z]\s*\^\s*\d|\b\d*[a-z]\s*[+\-*/=]\s*\d+\s*[a-z]?\s*[=+\-]")
_LATEX = re.compile(
    r"\$[^$\n]{1,200}\$|\\\(|\\\[|\\(?:frac|sqrt|sum|int|prod|lim|cdot|times|alpha|beta"
    r"|theta|pi|sigma|infty|leq|geq|neq|begin\{(?:equation|align|matrix))"
)
_MATH_SYMBOL = re.compile(r"[∑∫√π∞≤≥≠±∂]")
_MATH_WORD_SET = frozenset(
    (
        "solve",
        "solving",
        "equation",
        "equations",
        "integral",
        "integrals",
        "derivative",
        "derivatives",
        "differentiate",
        "integrate",
        "theorem",
        "theorems",
        "calculate",
        "arithmetic",
        "algebra",
        "algebraic",
        "geometry",
        "calculus",
        "trigonometry",
        "trigonometric",
        "probability",
        "probabilities",
        "polynomial",
        "polynomials",
        "matrices",
        "determinant",
        "eigenvalue",
        "eigenvalues",
        "eigenvector",
        "eigenvectors",
        "logarithm",
        "logarithms",
        "quadratic",
        "fraction",
        "fractions",
        "percentage",
        "percentages",
        "factorise",
        "factorize",
        "factorization",
        "simplify",
        "gcd",
        "lcm",
        "modulo",
        "combinatorics",
        "permutations",
        "hypotenuse",
    )
)
_MATH_PHRASES = (
    "prove that",
    "greatest common",
    "least common",
    "prime factor",
    "evaluate the expression",
    "square root",
    "how many ways",
)
_LOWER_WORD = re.compile(r"[a-z]+")
_QUANTITY_NEEDLES = ("how ", "total", "altogether", "percent", "per cent", "what is the")
_QUANTITY_QUESTION = re.compile(
    r"\b(?:how many|how much|how long|how far|how old|what is the (?:total|sum|product"
    r"|difference|average|value|remainder|area|perimeter|volume|probability)|in total"
    r"|altogether|per cent|percent)\b"
)
_NUMBER = re.compile(
    r"(?<![\w.])\$?\d+(?:[.,]\d+)?%?|\b(?:half|twice|double|triple|thrice|dozens?|third"
    r"|quarter|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty"
    r"|forty|fifty|hundred|thousand)\b"
)


def has_math(text: str) -> bool:
    """Arithmetic/algebra (digits with operators, LaTeX, math symbols), math vocabulary
    ("solve", "equation", "integral"...), or a quantity question with at least two numbers
    (the grade-school word problem: "... 48 clips ... half as many ... how many ...")."""
    t = _bounded(text)
    digits = _DIGIT.search(t) is not None
    if digits and _ARITH.search(t):
        return True
    if ("^" in t or "=" in t) and _ALGEBRA.search(t):
        return True
    if ("\\" in t or "$" in t) and _LATEX.search(t):
        return True
    if not t.isascii() and _MATH_SYMBOL.search(t):
        return True
    low = t.lower()
    if not _MATH_WORD_SET.isdisjoint(_LOWER_WORD.findall(low)):
        return True
    if any(p in low for p in _MATH_PHRASES):
        return True
    return (
        any(x in low for x in _QUANTITY_NEEDLES)
        and _QUANTITY_QUESTION.search(low) is not None
        and len(_NUMBER.findall(low)) >= 2
    )
