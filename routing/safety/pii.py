"""Local PII and secret detection, redaction and restoration for the safety stage.

Everything runs in-process with precompiled regular expressions plus checksum validation
(Luhn and ISO 7064 mod 97-10 from python-stdnum); no text leaves the machine and there is no
model to load. The design favours precision on the structured kinds (a gateway that mangles
prompts by redacting every long number is useless) and accepts lower recall on free-form
national phone formats and addresses. The IBAN registry lengths below stay ours: the cut of a
grouped IBAN at its country's length needs them, and stdnum keeps its registry private.

Kinds (``DEFAULT_KINDS``, detected unless ``kinds`` says otherwise):

* EMAIL_ADDRESS: pragmatic RFC 5322 subset (dot-atom local part, dotted domain, alpha TLD).
* PHONE_NUMBER: international ``+CC``/``00CC`` numbers and North-American ``(NXX) NXX-XXXX``
  shapes anywhere; other national groupings (``0490 75 40 81``, ``467 3395``) only next to a
  phone cue word ("phone", "call me", "fax", "mobile", ...), because on their own they look
  like any other run of digits. Dates, years, prices and digits glued to other numbers are
  rejected.
* CREDIT_CARD: 13-19 digits (contiguous or in 4-digit groups / Amex 4-6-5 with spaces or
  dashes), Luhn-valid and with a plausible issuer prefix for that length; 12-digit Maestro
  numbers only after a card cue word.
* IBAN_CODE: ISO 13616 mod-97 checksum and the registry length of the country, compact or
  printed in groups of four, any case.
* US_SSN: ``AAA-GG-SSSS`` (dashes or spaces; bare 9 digits only after an SSN cue), excluding
  area 000, 666 and 9xx, group 00 and serial 0000 (never issued).
* IP_ADDRESS: dotted-quad IPv4 with octets 0-255 and no leading zeros; IPv6 validated by the
  ``ipaddress`` module. Only globally routable addresses count: private, loopback,
  link-local, reserved (netmasks) and documentation ranges identify nobody, and networking
  questions are full of them. A dotted quad is reported even when it could be a version
  number (``1.2.3.4``): the two cannot be told apart and leaking an address costs more than
  redacting a version; only an explicit "version"/"v" prefix exempts it.
* API_KEY: provider key formats (OpenAI/Anthropic ``sk-``, AWS ``AKIA...``, GitHub ``ghp_``
  and ``github_pat_``, Slack ``xox?-`` and webhooks, Google ``AIza``/``ya29.``/``GOCSPX-``,
  Stripe, Hugging Face), JWTs, PEM private keys, ``Bearer`` tokens and ``api_key=...``-style
  assignments whose value is long, mixes letters and digits and has high character entropy.
* STREET_ADDRESS: house number + street name + street suffix ("221B Baker Street",
  "1600 Pennsylvania Ave NW"), continental "Rue/Via/Rua ... 12" and "...strasse 12" forms,
  PO boxes and US military APO/FPO/DPO addresses, each with an optional unit ("Apt. 4") and
  US "City, ST 12345" tail. Recall is partial (0.44 on the Presidio set) but precision is
  high (1.00 there; one hit, a real street in a novel excerpt, in 8,160 ordinary prompts;
  none in 24,475 LLM answers), so it is on by default.

PERSON: with a name finder (``names=``, in the gateway ``routing.safety.person_names.PersonTagger``,
a MiniLM token classifier fine-tuned on Presidio spans and faker sentences of many locales),
names are found wherever they are, in any case; its held-out figures are in
``routing/artifacts/person_lora.json`` and bench/pii_eval.py. With a finder, ``kinds=None``
means ``DEFAULT_KINDS | {PERSON}``: the structured kinds stay as they are and win overlaps.
Without one, PERSON is only the old cue heuristic (a capitalised name after "my name is",
"Dear", "Mr.", ...; recall 0.17, and on in-the-wild prompts half its hits are AI personas),
used only when asked for (``EXPERIMENTAL_KINDS``).

Cost: one ``detect`` over a 2 KB prompt takes about 0.1-0.4 ms of CPU (bench/pii_eval.py),
because every kind is gated by a literal or by one shared scan for digit runs before its
full pattern runs.

Redaction replaces each value with ``<KIND_n>``; the same value keeps the same placeholder
for the lifetime of a ``Redactor`` (one request), so the model can still tell that two
mentions refer to the same thing. The mapping lives only in that object, whose repr shows
counts, never values.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from stdnum import luhn
from stdnum.iso7064 import mod_97_10

EMAIL_ADDRESS = "EMAIL_ADDRESS"
PHONE_NUMBER = "PHONE_NUMBER"
CREDIT_CARD = "CREDIT_CARD"
IBAN_CODE = "IBAN_CODE"
US_SSN = "US_SSN"
IP_ADDRESS = "IP_ADDRESS"
API_KEY = "API_KEY"
PERSON = "PERSON"
STREET_ADDRESS = "STREET_ADDRESS"

DEFAULT_KINDS: frozenset[str] = frozenset(
    {
        EMAIL_ADDRESS,
        PHONE_NUMBER,
        CREDIT_CARD,
        IBAN_CODE,
        US_SSN,
        IP_ADDRESS,
        API_KEY,
        STREET_ADDRESS,
    }
)
EXPERIMENTAL_KINDS: frozenset[str] = frozenset({PERSON})
ALL_KINDS: frozenset[str] = DEFAULT_KINDS | EXPERIMENTAL_KINDS

# When two candidates overlap, the more specific (better validated) kind wins: a secret can
# contain anything, a card number can look like a phone number, an SSN like a phone number.
_PRIORITY = {
    API_KEY: 0,
    EMAIL_ADDRESS: 1,
    IBAN_CODE: 2,
    CREDIT_CARD: 3,
    US_SSN: 4,
    IP_ADDRESS: 5,
    PHONE_NUMBER: 6,
    STREET_ADDRESS: 7,
    PERSON: 8,
}


@dataclass(frozen=True, slots=True)
class PiiSpan:
    """One detected value: ``text == source[start:end]``. The value is left out of the repr
    so that a span that ends up in a log line or a traceback does not carry the PII."""

    kind: str
    start: int
    end: int
    text: str = field(repr=False)


# Python's regex engine only scans quickly for patterns that start with a literal (it then
# runs a substring search); a pattern that starts with a lookbehind or a common character
# class costs ~20 ns per input character, per pattern. So most kinds are found in two steps:
# a cheap gate (a literal, or one shared scan for runs of digits) picks small windows, and the
# validating pattern runs only inside them. Lookbehinds still see the text before a window.


class _Scan:
    """One detection call: the text plus the shared digit-run gate, computed once."""

    __slots__ = ("text", "_runs")

    def __init__(self, text: str) -> None:
        self.text = text
        self._runs: list[tuple[int, int]] | None = None

    @property
    def digit_runs(self) -> list[tuple[int, int]]:
        # Seven or more digits joined by short separator runs: every phone number, card,
        # SSN and (through its account number) IBAN contains one.
        if self._runs is None:
            self._runs = [m.span() for m in _DIGIT_RUN.finditer(self.text)]
        return self._runs


_DIGIT_RUN = re.compile(r"\d(?:[ .()/x-]{0,3}\d){6,}")


def _windowed(rx: re.Pattern[str], text: str, start: int, end: int) -> Iterator[re.Match[str]]:
    """Matches of rx inside text[start:end], dropping any that touch an artificial window end
    (there the lookahead saw a cut, not the real next character)."""
    start = max(0, start)
    end = min(len(text), end)
    for m in rx.finditer(text, start, end):
        if m.end() < end or end == len(text):
            yield m


# --------------------------------------------------------------------------- email

_EMAIL = re.compile(
    r"(?<![\w.%+-])"
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
    r"(?![\w-]|\.[A-Za-z0-9])"
)


def _emails(scan: _Scan) -> Iterator[tuple[int, int]]:
    text = scan.text
    seen: set[int] = set()
    at = text.find("@")
    while at != -1:
        # RFC 5321 caps the local part at 64 characters and the domain at 255, so this window
        # holds every address whose "@" lies in [at, at + 128); the next window starts there,
        # which keeps a text full of "@" linear.
        for m in _windowed(_EMAIL, text, at - 64, at + 400):
            if m.start() not in seen:
                seen.add(m.start())
                yield m.span()
        at = text.find("@", at + 128)


# --------------------------------------------------------------------------- credit card

_CARD = re.compile(
    r"(?<![\w.,/-])"
    r"(?:\d{12,19}"
    r"|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?"
    r"|\d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5})"
    r"(?![\w-]|[.,/]\d)"
)
_CARD_CUE = re.compile(
    r"(?i)\b(?:card|cc|credit|debit|visa|maestro|master ?card|amex|pan)\b[^\n\d]{0,24}$"
)


def _card_issuer_ok(d: str) -> bool:
    """Issuer identification prefixes and the lengths they issue. Cuts most Luhn-valid
    accidents, e.g. 13-digit millisecond timestamps (they start with 1)."""
    n = len(d)
    p2 = int(d[:2])
    p4 = int(d[:4])
    if d[0] == "4":
        return n in (13, 16, 19)  # Visa
    if p2 in (34, 37):
        return n == 15  # Amex
    if p2 in (30, 36, 38, 39):
        return 14 <= n <= 19  # Diners
    if p2 == 35:
        return 16 <= n <= 19  # JCB
    if d[0] == "1" or p4 == 2131:
        return n == 15  # UATP, old 15-digit JCB (1800, 2131)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16  # Mastercard
    if p2 == 50 or 56 <= p2 <= 69:
        return 12 <= n <= 19  # Maestro, Discover, UnionPay, RuPay
    return False


def _cards(scan: _Scan) -> Iterator[tuple[int, int]]:
    text = scan.text
    for s, e in scan.digit_runs:
        for m in _windowed(_CARD, text, s, e + 3):
            digits = m.group().replace(" ", "").replace("-", "")
            if not (luhn.is_valid(digits) and _card_issuer_ok(digits)):
                continue
            # 12 digits is Maestro-only and common for other identifiers: demand a card cue.
            if len(digits) == 12 and not _CARD_CUE.search(text, max(0, m.start() - 40), m.start()):
                continue
            yield m.span()


# --------------------------------------------------------------------------- IBAN

# ISO 13616 registry lengths (SWIFT IBAN registry), including the partial-IBAN countries.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
    # French overseas territories and others that use the FR / GB layout
    "BL": 27, "GF": 27, "GP": 27, "MF": 27, "MQ": 27, "NC": 27, "PF": 27, "PM": 27, "RE": 27,
    "TF": 27, "WF": 27, "YT": 27, "GG": 22, "IM": 22, "JE": 22,
}  # fmt: skip

_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}"
    r"(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,3})?)"
    r"(?![A-Za-z0-9])"
)


def _ibans(scan: _Scan) -> Iterator[tuple[int, int]]:
    text = scan.text
    seen: set[int] = set()
    for s, e in scan.digit_runs:
        # The digit run is the account number; country code and bank code come before it.
        for m in _windowed(_IBAN, text, s - 40, e + 44):
            if m.start() in seen:
                continue
            seen.add(m.start())
            end = _iban_end(text, m)
            if end:
                yield m.start(), end


def _iban_end(text: str, m: re.Match[str]) -> int:
    raw = m.group()
    n = _IBAN_LENGTHS.get(raw[:2].upper())
    if n is None:
        return 0
    compact = raw.replace(" ", "").upper()
    if len(compact) < n:
        return 0
    end = m.end()
    if len(compact) > n:
        # The grouped form may have swallowed a following 4-character word ("... 00 that"):
        # cut at the registry length, but only on a group boundary.
        seen = 0
        for i, ch in enumerate(raw):
            if ch != " ":
                seen += 1
                if seen == n:
                    end = m.start() + i + 1
                    break
        if text[end] != " ":
            return 0
        compact = compact[:n]
    # ISO 7064 MOD 97-10 over the rearranged IBAN (country code and check digits moved last).
    return end if mod_97_10.is_valid(compact[4:] + compact[:4]) else 0


# --------------------------------------------------------------------------- US SSN

_SSN = re.compile(r"(?<![\w.,/-])(\d{3})([ -]?)(\d{2})\2(\d{4})(?![\w-]|[.,/]\d)")
_SSN_CUE = re.compile(r"(?i)\b(?:ssn|ss#|social security(?: number| no\.?)?)\b[^\n\d]{0,20}$")


def _ssns(scan: _Scan) -> Iterator[tuple[int, int]]:
    text = scan.text
    for s, e in scan.digit_runs:
        for m in _windowed(_SSN, text, s, e + 3):
            area, sep, group, serial = m.groups()
            if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
                continue  # never issued
            # Nine bare digits are too common (order ids, ZIP+4) without a cue.
            if not sep and not _SSN_CUE.search(text, max(0, m.start() - 40), m.start()):
                continue
            yield m.span()


# --------------------------------------------------------------------------- IP

_IPV4_GATE = re.compile(r"\.\d{1,3}\.\d")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_VERSION_CUE = re.compile(r"(?i)\b(?:version|ver\.?|release|build|v)\s*$")
_IPV6_GATE = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:.]{2,45}(?<![.:])(?![\w:])")


def _ipv4_ok(s: str) -> bool:
    for octet in s.split("."):
        if len(octet) > 1 and octet[0] == "0":
            return False  # ambiguous (octal in some parsers), and rarely a real address
        if int(octet) > 255:
            return False
    return True


def _is_global(s: str) -> bool:
    # Private, loopback, link-local, reserved (netmasks like 255.255.255.0) and documentation
    # addresses identify no one on the Internet, and networking questions are full of them:
    # redacting them would cost answer quality for no privacy gain.
    try:
        return ipaddress.ip_address(s).is_global
    except ValueError:
        return False


def _ips(scan: _Scan) -> Iterator[tuple[int, int]]:
    text = scan.text
    seen: set[int] = set()
    for g in _IPV4_GATE.finditer(text):
        for m in _windowed(_IPV4, text, g.start() - 3, g.start() + 16):
            if m.start() in seen:
                continue
            seen.add(m.start())
            s = m.group()
            if not _ipv4_ok(s) or not _is_global(s):
                continue
            if _VERSION_CUE.search(text, max(0, m.start() - 10), m.start()):
                continue
            yield m.span()
    pos = 0
    while (g := _IPV6_GATE.search(text, pos)) is not None:
        # Any address holding a gate hit at i lies within [i - 45, i + 45]; windows overlap so
        # that skipping 45 characters after each hit loses nothing.
        i = g.start()
        for m in _windowed(_IPV6, text, i - 45, i + 90):
            if m.start() in seen:
                continue
            seen.add(m.start())
            s = m.group()
            # Three hex groups and a digit: keeps C++/Rust paths ("dead::beef") and Python
            # slices ("s[::2]") out.
            if sum(1 for g in s.split(":") if g) < 3 or not any(c.isdigit() for c in s):
                continue
            if _is_global(s):
                yield m.span()
        pos = i + 45


# --------------------------------------------------------------------------- secrets

_TOKEN_CHARS = "A-Za-z0-9_-"


def _token(literal: str, rest: str) -> re.Pattern[str]:
    # Literal first so the engine can substring-search for it; the lookbehind (placed after
    # the literal, and covering it) keeps matches from starting inside a longer token.
    lit = re.escape(literal)
    return re.compile(f"{lit}(?<![{_TOKEN_CHARS}]{lit}){rest}(?![{_TOKEN_CHARS}])")


_SECRET_FORMATS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("sk-", _token("sk-", r"(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")),  # OpenAI
    ("A", _token("A", r"(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|ROA|PKA|SCA)[A-Z0-9]{16}")),
    ("gh", _token("gh", r"[pousr]_[A-Za-z0-9]{36,255}")),  # GitHub classic tokens
    ("github_pat_", _token("github_pat_", r"[A-Za-z0-9_]{50,255}")),
    ("xox", _token("xox", r"[abposre]-[A-Za-z0-9-]{10,}")),  # Slack
    ("AIza", _token("AIza", r"[0-9A-Za-z_-]{35}")),  # Google API key
    ("ya29.", _token("ya29.", r"[0-9A-Za-z_-]{20,}")),  # Google OAuth access token
    ("GOCSPX-", _token("GOCSPX-", r"[0-9A-Za-z_-]{20,}")),  # Google OAuth client secret
    ("k_live_", re.compile(r"(?<![A-Za-z0-9_-])[srp]k_live_[0-9A-Za-z]{20,}")),  # Stripe
    ("k_test_", re.compile(r"(?<![A-Za-z0-9_-])[srp]k_test_[0-9A-Za-z]{20,}")),
    ("hf_", _token("hf_", r"[A-Za-z0-9]{30,}")),  # Hugging Face
    ("eyJ", _token("eyJ", r"[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),  # JWT
    ("hooks.slack", re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/]+")),
)
_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[^-]|-(?!----END))*"
    r"(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)?"
)
# `name = value`, `"name": "value"`, `name => value` where the name says it is a credential:
# find the operator and value first (cheap), then look for the name just before it.
_ASSIGN_VALUE = re.compile(r"(?:=>?|:)[ \t]*[\"']?(?:Bearer\s+)?([A-Za-z0-9_+/=.~-]{16,512})")
_SECRET_NAME = re.compile(
    r"(?i)(?:api[_-]?key|apikey|secret|client[_-]?secret|access[_-]?key|private[_-]?key"
    r"|token|passw(?:or)?d|passwd|pwd|credentials?|auth(?:orization)?)[\"']?[ \t]*$"
)
_BEARER = re.compile(r"Bearer\s+([A-Za-z0-9_+/=.~-]{20,512})", re.I)


def _entropy(s: str) -> float:
    counts = Counter(s)
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _random_looking(value: str) -> bool:
    # Names like "YOUR_API_KEY_HERE" or "process.env.OPENAI_API_KEY" have no digits; real
    # keys are long, mix letters and digits and use many distinct characters.
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return has_digit and has_alpha and _entropy(value) >= 3.0


def _secrets(scan: _Scan) -> Iterator[tuple[int, int]]:
    text = scan.text
    for probe, rx in _SECRET_FORMATS:
        if probe in text:
            for m in rx.finditer(text):
                yield m.span()
    if "-----BEGIN" in text:
        for m in _PEM.finditer(text):
            yield m.span()
    for m in _ASSIGN_VALUE.finditer(text):
        if _SECRET_NAME.search(text, max(0, m.start() - 40), m.start()) and _random_looking(
            m.group(1)
        ):
            yield m.span(1)
    if "earer" in text:
        for m in _BEARER.finditer(text):
            if _random_looking(m.group(1)):
                yield m.span(1)


# --------------------------------------------------------------------------- phone

_PHONE = re.compile(
    r"(?<![\w$€£¥+])(?<!\d[.,:/-])"
    r"(?:(?:\+|\b00)\d{1,3}[ .-]?(?:\(0\)[ .-]?)?)?"  # +CC / 00CC, optional "(0)" trunk
    r"(?:\(\d{1,4}\)[ .-]?)?"  # area code in parentheses
    r"\d{1,15}(?:[ .-]\d{1,8}){0,5}"
    r"(?:[ ]?(?:x|ext\.?|extension)[ ]?\d{1,5})?"
    r"(?!\d|[.,:/]\d|-\d|[A-Za-z])"
)
_NANP = re.compile(
    r"(?:\+?1[ .-]?|001[ .-])?"
    r"(?:\([2-9]\d\d\)[ ]?[2-9]\d\d[.-]\d{4}|[2-9]\d\d([.-])[2-9]\d\d\1\d{4})"
)
_DATE_LIKE = re.compile(r"\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{4}")
_EXT = re.compile(r"[ ]?(?:x|ext\.?|extension)[ ]?\d{1,5}$")
_GROUP_SEP = re.compile(r"[ .()-]+")
_PHONE_CUE_BEFORE = re.compile(
    r"(?i)\b(?:phone|telephone|tel|ph|mobile|mob|cell|cellphone|fax|desk|whats ?app|sms"
    r"|text|call|ring|dial|reach|contact|messages?|hotline|helpline)\b"
    r"(?:[^\w\n]{1,4}(?:me|us|him|her|them|at|on|to|is|number|no|my|via|or|the|#)\b){0,3}"
    r"[^\w]{0,6}$"
)
_PHONE_CUE_AFTER = re.compile(
    r"[ \t]*[-(]?[ \t]*(?:office|fax|mobile|cell|home|work|tel|phone|landline)\b", re.I
)


def _phones(scan: _Scan) -> Iterator[tuple[int, int]]:
    text = scan.text
    for s, e in scan.digit_runs:
        # Slack for a leading "+" or "(" and a trailing " ext. 123" the digit run leaves out.
        for m in _windowed(_PHONE, text, s - 2, e + 16):
            if _phone_ok(text, m):
                yield m.span()


def _phone_ok(text: str, m: re.Match[str]) -> bool:
    s = m.group()
    core = _EXT.sub("", s)
    digits = sum(c.isdigit() for c in core)
    if digits < 7 or digits > 15 or _DATE_LIKE.fullmatch(core):
        return False
    if digits >= 8 and (
        s[0] == "+" or (s.startswith("00") and s[2] != "0" and (" " in s or "-" in s))
    ):
        return True  # explicit international form (a bare "0011..." is more likely binary)
    if _NANP.fullmatch(core):
        return True
    # Everything else (bare digit runs, national groupings) needs a cue word nearby.
    groups = _GROUP_SEP.split(core.strip("()+"))
    if len(groups) > 1 and all(len(g) == 4 and g[:2] in ("19", "20") for g in groups):
        return False  # "2019 2020": a list of years
    return bool(
        _PHONE_CUE_BEFORE.search(text, max(0, m.start() - 48), m.start())
        or _PHONE_CUE_AFTER.match(text, m.end())
    )


# --------------------------------------------------------------------------- person

# A capitalised word, or an initial ("J." / "J"); a word never takes a trailing period, so a
# name stops at the end of its sentence ("named Ben. Ben liked...").
_NAME_TOKEN = r"[A-ZÀ-ÖØ-ÞĀ-Ž](?:[a-zß-öø-ÿā-žA-Z'’-]+|\.?)"
_NAME = rf"{_NAME_TOKEN}(?:[ \t]+(?:(?:van|von|de|da|del|der|di|le|la)[ \t]+)?{_NAME_TOKEN}){{0,3}}"
_PERSON = re.compile(
    r"\b(?:[Mm]y name is|[Nn]ame is|[Cc]all me|[Nn]amed|[Cc]alled|[Tt]his is|I'm|I am"
    r"|Dear|Hi|Hello|Hey|Sincerely,?|Regards,?|Thanks,?|Name:"
    r"|Mr\.?|Mrs\.?|Ms\.?|Miss|Mx\.?|Dr\.?|Prof\.?|Sir|Madam|Lady|Lord"
    r"|[Ss]peak (?:to|with)|[Aa]sk for)"
    # The name sits in a lookahead so that it is not consumed: "this is Dr. Kyle" yields the
    # honorific here and lets the "Dr." cue match next.
    rf"[ \t]*:?[ \t]+(?=({_NAME}))"
)
_TOKEN = re.compile(r"\S+")
# Capitalised words that follow those cues without being names.
_NOT_NAME_WORDS = """
    a an the i i'm it is this that there here what who how why when where which yes no not
    sorry good great fine ok okay thanks thank please hello hi hey dear sir madam all everyone
    world team guys folks customer support user bot assistant sure happy glad looking going trying
    writing calling new just also so very really still back interested available unable
    monday tuesday wednesday thursday friday saturday sunday january february march april may
    june july august september october november december"""
_NOT_NAMES = frozenset(_NOT_NAME_WORDS.split())
_HONORIFICS = frozenset(
    {"Mr", "Mrs", "Ms", "Mx", "Miss", "Dr", "Prof", "Sir", "Madam", "Lady", "Lord"}
)
# Acronyms ("DDT") and inner capitals ("ChatGPT", "BetterDAN") are products and personas, not
# people; Mc/Mac/O'/D' names are the exception.
_NOT_A_NAME = re.compile(r"^[A-Z]{2,}$|^(?!Mc|Mac|O'|D'|De|Di|La|Le)[A-Z]\w*?[a-z][A-Z]")


def _persons(scan: _Scan) -> Iterator[tuple[int, int]]:
    text = scan.text
    for m in _PERSON.finditer(text):
        start = end = -1
        for tok in _TOKEN.finditer(m.group(1)):
            word = tok.group().strip(".'’")
            if start == -1 and word in _HONORIFICS:
                continue  # "this is Dr. Kyle Kuefer": the name starts after the title
            if word.lower() in _NOT_NAMES or _NOT_A_NAME.search(word):
                break
            if start == -1:
                start = m.start(1) + tok.start()
            end = m.start(1) + tok.end()
            if tok.group().endswith(".") and len(word) > 1:
                end -= 1  # a sentence ends here ("... named Ben. Ben liked"); initials go on
                break
        if end > start >= 0:
            yield start, end


# --------------------------------------------------------------------------- street address

_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Av|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl"
    r"|Square|Sq|Terrace|Ter|Way|Highway|Hwy|Parkway|Pkwy|Circle|Cir|Trail|Trl|Crescent|Cres"
    r"|Close|Row|Alley|Plaza|Walk|Gardens|Grove|Hill|Heights|Park|Ridge|Mews|Parade|Esplanade"
    r"|Quay|Wharf|Causeway|Expressway|Freeway|Pike|Turnpike|Loop|Bend|Crossing|Forges?"
    r"|Cliffs?|Islands?|Junction|Meadows?|Mills?|Springs?|Stravenue|Summit|Valley|Views?)\b\.?"
)
_UNIT = r"(?:,?[ \t]*(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.?|#)[ \t]*\w{1,6})"
_CONT_PREFIX = (
    r"(?:Rue|Rua|Via|Viale|Vicolo|Piazza|Piazzale|Corso|Largo|Avenida|Avda\.?|Calle|Carrer"
    r"|Camino|Paseo|Plaza|Travessa|Praça|Estrada|Chemin|Allée|Place|Quai|Impasse|Boulevard"
    r"|Ulica|ul\.|Calea|Strada|Aleja)"
)
_GERMANIC = (
    r"[A-ZÀ-Þ][\wß-ÿ-]*(?:stra(?:ss|ß)e|str\.|weg|gasse|platz|allee|damm|laan|straat"
    r"|gracht|plein|gatan|vägen|gränd|vej|gade|veien|gata|katu|tie|kuja|polku|utca|út|tér)"
)
_WORD = r"[A-ZÀ-Þ0-9][\wß-ÿ'’.-]*"
# A unit may sit on the next line of a multi-line address; a US "City, ST 12345" tail may
# follow on the same line.
_TAIL = (
    rf"(?:,?[ \t]*\n?[ \t]*{_UNIT})?"
    r"(?:,[ \t]*[A-Z][\w .'-]{1,30},[ \t]*[A-Z]{2}[ \t]+\d{5}(?:-\d{4})?)?"
)
# Each address form is anchored at a position found by a cheap gate (see _Scan), because one
# big alternation that may start at any capital letter or digit costs ~5x more.
_STREET_NUMBERED = re.compile(  # 12 Main Street / 221B Baker St. / 55 North Orange Grove Blvd
    rf"\d{{1,6}}[A-Za-z]?(?:[ \t]+{_WORD}){{1,4}}?[ \t]+{_SUFFIX}"
    rf"(?:[ \t]+(?:[NS][EW]?|[EW])\b\.?)?{_TAIL}"
)
_NUMBER_THEN_WORD = re.compile(r"\d[A-Za-z]?[ \t]+[A-ZÀ-Þ]")
_STREET_PREFIXED = re.compile(  # Rue de Rivoli 12 / Via Roma 131 / Avenida Paulista 1578
    rf"{_CONT_PREFIX}(?:[ \t]+(?:de|da|do|dos|das|di|del|della|du|des|la|le|d'|l')?[ \t]*"
    rf"{_WORD}){{1,4}}(?:[ \t]+\d{{1,5}}[A-Za-z]?)?{_TAIL}"
)
_CONT_PREFIX_GATE = re.compile(rf"{_CONT_PREFIX}[ \t]")
_LEAD_NUMBER = re.compile(r"\d{1,5}[ \t,]+$")
_STREET_SUFFIXED = re.compile(rf"{_GERMANIC}[ \t]+\d{{1,5}}[A-Za-z]?{_TAIL}")
_GERMANIC_GATE = re.compile(
    r"(?:stra(?:ss|ß)e|str\.|weg|gasse|platz|allee|damm|laan|straat|gracht|plein|gatan|vägen"
    r"|gränd|vej|gade|veien|gata|katu|tie|kuja|polku|utca|út|tér)[ \t]+\d"
)
_STREET_BOX = re.compile(
    r"(?<!\w)(?:P\.?[ \t]?O\.?[ \t]+Box[ \t]+\d{1,6}"
    r"|(?:PSC|Unit|CMR)[ \t]+\d{1,5},?[ \t]+Box[ \t]+\d{1,5}(?:\s+[AFD]PO[ \t]+A[AEP][ \t]+\d{5})?"
    r"|[AFD]PO[ \t]+A[AEP][ \t]+\d{5})",
    re.I,
)


_BOX_PROBES = ("Box", "box", "BOX", "PO A", "po a")


def _streets(scan: _Scan) -> Iterator[tuple[int, int]]:
    text = scan.text
    for g in _NUMBER_THEN_WORD.finditer(text):
        start = g.start()
        while start > 0 and text[start - 1].isdigit():
            start -= 1
        if start > 0 and text[start - 1].isalnum():
            continue
        if m := _STREET_NUMBERED.match(text, start):
            yield m.span()
    for g in _CONT_PREFIX_GATE.finditer(text):
        if g.start() > 0 and text[g.start() - 1].isalnum():
            continue  # inside a word ("Boulevard" in "FooBoulevard")
        if m := _STREET_PREFIXED.match(text, g.start()):
            # "12 rue de la Paix": the house number may come first.
            lead = _LEAD_NUMBER.search(text, max(0, g.start() - 8), g.start())
            yield (g.start() - len(lead.group()) if lead else g.start()), m.end()
    for g in _GERMANIC_GATE.finditer(text):
        start = g.start()
        while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "-"):
            start -= 1
        if m := _STREET_SUFFIXED.match(text, start):
            yield m.span()
    seen: set[int] = set()
    for probe in _BOX_PROBES:
        i = text.find(probe)
        while i != -1:
            # "PSC 3294, Box 9168 APO AA 61487": the form starts at most ~20 characters
            # before "Box" and ends at most ~30 after it.
            for m in _windowed(_STREET_BOX, text, i - 25, i + 50):
                if m.start() not in seen:
                    seen.add(m.start())
                    yield m.span()
            i = text.find(probe, i + 1)


# --------------------------------------------------------------------------- detection

_DETECTORS: dict[str, Callable[[_Scan], Iterator[tuple[int, int]]]] = {
    API_KEY: _secrets,
    EMAIL_ADDRESS: _emails,
    IBAN_CODE: _ibans,
    CREDIT_CARD: _cards,
    US_SSN: _ssns,
    IP_ADDRESS: _ips,
    PHONE_NUMBER: _phones,
    STREET_ADDRESS: _streets,
    PERSON: _persons,
}


class NameFinder(Protocol):
    """Anything that finds person names: spans with `.start` and `.end` character offsets.
    A finder that also has `entities(text)` (names and addresses from one pass, as
    `routing.safety.person_names.PersonTagger` does) adds its addresses to STREET_ADDRESS."""

    def spans(self, text: str) -> list: ...


def _model_spans(names: NameFinder, text: str) -> dict[str, list[tuple[int, int]]]:
    entities = getattr(names, "entities", None)
    if entities is None:
        return {PERSON: [(n.start, n.end) for n in names.spans(text)]}
    e = entities(text)
    return {
        PERSON: [(n.start, n.end) for n in e.names],
        STREET_ADDRESS: [(a.start, a.end) for a in e.addresses],
    }


def _check_kinds(kinds: Collection[str] | None, names: NameFinder | None = None) -> Collection[str]:
    if kinds is None:
        return DEFAULT_KINDS | {PERSON} if names is not None else DEFAULT_KINDS
    unknown = set(kinds) - ALL_KINDS
    if unknown:
        raise ValueError(f"unknown PII kinds: {sorted(unknown)}")
    return kinds


def detect(
    text: str, kinds: Collection[str] | None = None, names: NameFinder | None = None
) -> list[PiiSpan]:
    """Non-overlapping spans sorted by start. ``kinds=None`` means ``DEFAULT_KINDS`` (plus
    PERSON when a name finder is given); PERSON without a finder is the cue heuristic."""
    wanted = _check_kinds(kinds, names)
    if not text:
        return []
    scan = _Scan(text)
    model = (
        _model_spans(names, text)
        if names is not None and (PERSON in wanted or STREET_ADDRESS in wanted)
        else {}
    )
    candidates: set[tuple[int, int, int, str]] = set()
    for kind, detector in _DETECTORS.items():
        if kind in wanted:
            prio = _PRIORITY[kind]
            if kind == PERSON and names is not None:
                found = list(model.get(PERSON, []))
            else:  # the patterns, plus the tagger's addresses when it has them
                found = [*detector(scan), *model.get(kind, [])] if kind in model else detector(scan)
            for start, end in found:
                if end > start:
                    candidates.add((prio, start - end, start, kind))  # longer first on ties
    if not candidates:
        return []
    taken: list[tuple[int, int]] = []
    spans: list[PiiSpan] = []
    for _, neg_len, start, kind in sorted(candidates):
        end = start - neg_len
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        spans.append(PiiSpan(kind, start, end, text[start:end]))
    spans.sort(key=lambda s: s.start)
    return spans


def kinds_found(
    text: str, kinds: Collection[str] | None = None, names: NameFinder | None = None
) -> dict[str, int]:
    """Count of detected values per kind (no values), e.g. for metrics and decision logs."""
    return dict(Counter(s.kind for s in detect(text, kinds, names)))


# --------------------------------------------------------------------------- redaction

_PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*)_(\d+)>")


class Redactor:
    """Per-request mapping between values and placeholders. Keep one per request and drop it
    when the answer has been restored; nothing is persisted."""

    __slots__ = ("_by_value", "_by_placeholder", "_next", "_max_len")

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._next: dict[str, int] = {}
        self._max_len = 0

    def __repr__(self) -> str:
        counts = Counter(p[1:].rsplit("_", 1)[0] for p in self._by_placeholder)
        return f"Redactor(values={len(self._by_placeholder)}, kinds={dict(sorted(counts.items()))})"

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self._by_placeholder)

    def __reduce__(self) -> object:
        # Pickling would be a way for the mapping to leave memory (caches, task queues).
        raise TypeError("Redactor holds PII and cannot be pickled")

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(self._by_placeholder)

    def placeholder_for(self, kind: str, value: str, avoid: str = "") -> str:
        key = (kind, value)
        found = self._by_value.get(key)
        if found is not None:
            return found
        n = self._next.get(kind, 0)
        while True:
            n += 1
            placeholder = f"<{kind}_{n}>"
            # A prompt that already contains this literal string would be restored wrongly.
            if placeholder not in avoid:
                break
        self._next[kind] = n
        self._by_value[key] = placeholder
        self._by_placeholder[placeholder] = value
        self._max_len = max(self._max_len, len(placeholder))
        return placeholder

    def redact(self, text: str, spans: list[PiiSpan]) -> str:
        """Replace each span (as returned by ``detect`` on this same text) by its
        placeholder."""
        if not spans:
            return text
        parts: list[str] = []
        pos = 0
        for span in sorted(spans, key=lambda s: s.start):
            if span.start < pos:
                raise ValueError("overlapping spans")
            if text[span.start : span.end] != span.text:
                raise ValueError("span does not match the text it is applied to")
            parts.append(text[pos : span.start])
            parts.append(self.placeholder_for(span.kind, span.text, avoid=text))
            pos = span.end
        parts.append(text[pos:])
        return "".join(parts)

    def _sub(self, m: re.Match[str]) -> str:
        return self._by_placeholder.get(m.group(), m.group())

    def restore(self, text: str) -> str:
        """Placeholders issued by this redactor back to their values; unknown ones are left."""
        if not self._by_placeholder or "<" not in text:
            return text
        return _PLACEHOLDER.sub(self._sub, text)

    def stream_restorer(self) -> StreamRestorer:
        return StreamRestorer(self)

    def _partial_start(self, buf: str) -> int:
        """Index where a possible prefix of a placeholder starts at the end of buf, or -1."""
        lo = max(0, len(buf) - self._max_len + 1)
        i = buf.find("<", lo)
        while i != -1:
            tail = buf[i:]
            if any(p.startswith(tail) for p in self._by_placeholder):
                return i
            i = buf.find("<", i + 1)
        return -1


class StreamRestorer:
    """Restores placeholders in a streamed answer. ``feed`` returns the text that is safe to
    emit now; only a trailing fragment that could still become a placeholder is held back
    (at most one placeholder's length), so a split like ``"<EMAIL_ADD" + "RESS_1>"`` comes
    out as the value, never as a half placeholder."""

    __slots__ = ("_redactor", "_buf")

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._buf = ""

    def __repr__(self) -> str:
        return f"StreamRestorer(held={len(self._buf)} chars)"

    def feed(self, delta: str) -> str:
        if not delta:
            return ""
        buf = self._buf + delta
        cut = self._redactor._partial_start(buf)
        if cut == -1:
            self._buf = ""
            return self._redactor.restore(buf)
        self._buf = buf[cut:]
        return self._redactor.restore(buf[:cut])

    def flush(self) -> str:
        rest, self._buf = self._buf, ""
        return self._redactor.restore(rest)


def redact_messages(
    messages: list[dict],
    redactor: Redactor,
    kinds: Collection[str] | None = None,
    names: NameFinder | None = None,
) -> tuple[list[dict], dict[str, int]]:
    """Redacted copies of OpenAI chat messages (inputs are not mutated) and counts per kind.

    Covers string ``content``, ``{"type": "text"}`` parts of multimodal content (images and
    audio parts pass through untouched) and the JSON ``arguments`` of earlier assistant tool
    calls, which are text the provider sees just like content.
    """
    wanted = _check_kinds(kinds, names)
    counts: Counter[str] = Counter()

    def scrub(text: str) -> str:
        spans = detect(text, wanted, names)
        if not spans:
            return text
        counts.update(s.kind for s in spans)
        return redactor.redact(text, spans)

    out: list[dict] = []
    for msg in messages:
        new = dict(msg)
        content = msg.get("content")
        if isinstance(content, str):
            new["content"] = scrub(content)
        elif isinstance(content, list):
            parts = []
            for part in content:
                if (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    part = {**part, "text": scrub(part["text"])}
                parts.append(part)
            new["content"] = parts
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            new_calls = []
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    call = {**call, "function": {**fn, "arguments": scrub(fn["arguments"])}}
                new_calls.append(call)
            new["tool_calls"] = new_calls
        out.append(new)
    return out, dict(counts)


__all__ = [
    "ALL_KINDS",
    "API_KEY",
    "CREDIT_CARD",
    "DEFAULT_KINDS",
    "EMAIL_ADDRESS",
    "EXPERIMENTAL_KINDS",
    "IBAN_CODE",
    "IP_ADDRESS",
    "NameFinder",
    "PERSON",
    "PHONE_NUMBER",
    "PiiSpan",
    "Redactor",
    "STREET_ADDRESS",
    "StreamRestorer",
    "US_SSN",
    "detect",
    "kinds_found",
    "redact_messages",
]
