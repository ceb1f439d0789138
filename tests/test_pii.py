"""Local PII detection, redaction and streamed restoration (routing.safety.pii). Pure CPU, no data
files, no network; the whole module runs in well under a second."""

from __future__ import annotations

import copy
import pickle

import pytest

from routing.safety import pii
from routing.safety.pii import (
    ALL_KINDS,
    API_KEY,
    CREDIT_CARD,
    DEFAULT_KINDS,
    EMAIL_ADDRESS,
    IBAN_CODE,
    IP_ADDRESS,
    PERSON,
    PHONE_NUMBER,
    STREET_ADDRESS,
    US_SSN,
    PiiSpan,
    Redactor,
    detect,
    kinds_found,
    redact_messages,
)


def found(text: str, kinds=None) -> list[tuple[str, str]]:
    return [(s.kind, s.text) for s in detect(text, kinds)]


def values(text: str, kind: str, kinds=None) -> list[str]:
    return [s.text for s in detect(text, kinds) if s.kind == kind]


# Secrets are assembled at run time so that this file does not itself look like it leaks
# credentials to secret scanners.
ALNUM = "aB3dE5fG7hJ9kL2mN4pQ6rS8tU0vW1xY"
OPENAI_KEY = "sk-" + "proj-" + ALNUM + "Zz9"
ANTHROPIC_KEY = "sk-" + "ant-api03-" + ALNUM * 3
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's own documentation example
GITHUB_TOKEN = "ghp_" + ALNUM + "Qw12"
SLACK_TOKEN = "xoxb-" + "123456789012-1234567890123-" + ALNUM[:24]
GOOGLE_KEY = "AIza" + ALNUM + "Zx9"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq98rXT\nq3Jp+W/x0vY=\n"
    "-----END " + "RSA PRIVATE KEY-----"
)


# --------------------------------------------------------------------------- positives


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("to john.doe+news@mail.example.co.uk.", EMAIL_ADDRESS, "john.doe+news@mail.example.co.uk"),
        ("send('ann.lee@example.org')", EMAIL_ADDRESS, "ann.lee@example.org"),
        ("Call +44 20 7946 0958 today", PHONE_NUMBER, "+44 20 7946 0958"),
        ("Desk: +41 (0)96 471 07 95", PHONE_NUMBER, "+41 (0)96 471 07 95"),
        ("reach me at (212) 555-0199 please", PHONE_NUMBER, "(212) 555-0199"),
        ("or 212-555-0199 ext. 12", PHONE_NUMBER, "212-555-0199 ext. 12"),
        ("Phone: 0490 75 40 81", PHONE_NUMBER, "0490 75 40 81"),
        ("Fax: 9498777106", PHONE_NUMBER, "9498777106"),
        ("card 4111 1111 1111 1111 expires", CREDIT_CARD, "4111 1111 1111 1111"),
        ("amex 3782-822463-10005", CREDIT_CARD, "3782-822463-10005"),
        ("cc 5555555555554444", CREDIT_CARD, "5555555555554444"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", IBAN_CODE, "DE89 3704 0044 0532 0130 00"),
        ("from gb82west12345698765432 to", IBAN_CODE, "gb82west12345698765432"),
        ("FR14 2004 1010 0505 0001 3M02 606", IBAN_CODE, "FR14 2004 1010 0505 0001 3M02 606"),
        ("Here's my SSN: 460-89-9847", US_SSN, "460-89-9847"),
        ("ssn 460 89 9847", US_SSN, "460 89 9847"),
        ("SSN: 460899847", US_SSN, "460899847"),
        ("blocked from 8.8.8.8.", IP_ADDRESS, "8.8.8.8"),
        ("client_ip = ?%20\\|106.31.73.20|%20/", IP_ADDRESS, "106.31.73.20"),
        ("v6 2a00:1450:4001:81b::200e here", IP_ADDRESS, "2a00:1450:4001:81b::200e"),
        ("at 221B Baker Street, London", STREET_ADDRESS, "221B Baker Street"),
        (
            "ship to 742 Evergreen Terrace, Apt 3, Springfield, IL 62704 please",
            STREET_ADDRESS,
            "742 Evergreen Terrace, Apt 3, Springfield, IL 62704",
        ),
        ("Friedhofstrasse 33", STREET_ADDRESS, "Friedhofstrasse 33"),
        ("PSC 3294, Box 9168\nAPO AA 61487", STREET_ADDRESS, "PSC 3294, Box 9168\nAPO AA 61487"),
    ],
)
def test_detects(text: str, kind: str, value: str) -> None:
    assert values(text, kind) == [value], found(text)


@pytest.mark.parametrize(
    "secret",
    [OPENAI_KEY, ANTHROPIC_KEY, AWS_KEY, GITHUB_TOKEN, SLACK_TOKEN, GOOGLE_KEY, JWT, PEM],
    ids=["openai", "anthropic", "aws", "github", "slack", "google", "jwt", "pem"],
)
def test_detects_provider_secrets(secret: str) -> None:
    text = f"config:\n{secret}\nend"
    assert values(text, API_KEY) == [secret]


def test_detects_generic_secret_assignments() -> None:
    assert values("api_key = 'Zx81kQ0pLm3N7vB2cR5t'", API_KEY) == ["Zx81kQ0pLm3N7vB2cR5t"]
    assert values('{"client_secret": "q9W2e8R7t6Y5u4I3"}', API_KEY) == ["q9W2e8R7t6Y5u4I3"]
    assert values("Authorization: Bearer abcDEF123456ghiJKL789mno", API_KEY) == [
        "abcDEF123456ghiJKL789mno"
    ]
    # Placeholders and variable references are not secrets: no digits, or low entropy.
    assert values("api_key=YOUR_API_KEY_HERE", API_KEY) == []
    assert values("token: process.env.OPENAI_API_KEY", API_KEY) == []
    assert values("password = 1111111111111111", API_KEY) == []


def test_person_is_available_but_off_by_default() -> None:
    text = "My name is John Smith. Dear Mrs. Jane Doe, hello."
    assert PERSON not in DEFAULT_KINDS and PERSON in ALL_KINDS
    assert values(text, PERSON) == []
    assert values(text, PERSON, ALL_KINDS) == ["John Smith", "Jane Doe"]
    # Products and personas are not people.
    assert values("Hi ChatGPT. From now on", PERSON, ALL_KINDS) == []


# --------------------------------------------------------------------------- negatives


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 (Luhn fails)",
        "timestamp 1700000000000 ms",  # 13 digits starting with 1: no issuer has that
        "order 630427373398",  # 12-digit Maestro-shaped but no card cue
        "IBAN DE89 3704 0044 0532 0130 01",  # checksum off by one
        "XX89 3704 0044 0532 0130 00",  # no such country
        "SSN 000-12-3456",
        "SSN 666-12-3456",
        "SSN 900-12-3456",
        "SSN 123-00-4567",
        "SSN 123-45-0000",
        "order id 123456789",  # bare nine digits without an SSN cue
        "999.1.1.1 and 256.1.1.1 and 01.02.03.04",
        "router 192.168.1.1 mask 255.255.255.0 gw 10.0.0.1 lo 127.0.0.1",  # not global
        "version 1.2.3.4",
        "v1.2.3.4",
        "slice s[::2] and std::vector and dead::beef, at 12:30:45",
        "In 2024 it cost $1,299.99, up from €999.00.",
        "The years 2019 2020 2021 2022, call it a trend.",
        "ISBN 978-3-16-148410-0",
        "Meeting on 2024-01-15 at 10:30 in room 12, 3.5 hours; pi = 3.14159265358979",
        "Python 3.11.4, numpy 1.26.4",
        "binary s = '00110110'",
        "I ran 5 miles and ate 3 apples.",
        "user@localhost is not an email; neither is @handle",
    ],
)
def test_no_false_positive(text: str) -> None:
    assert found(text) == []


def test_version_like_dotted_quad_is_an_ip() -> None:
    # Documented decision: a bare dotted quad that is a valid global IPv4 address is reported
    # even if the writer meant a version; only a "version"/"v" prefix exempts it.
    assert values("upgrade to 1.2.3.4 now", IP_ADDRESS) == ["1.2.3.4"]


# --------------------------------------------------------------------------- detect API


def test_spans_are_sorted_non_overlapping_and_exact() -> None:
    text = (
        "Mail a@b.io, call +1-984-182-0190, card 4111-1111-1111-1111, "
        f"key {OPENAI_KEY}, ip 8.8.4.4, SSN 460-89-9847, IBAN GB82WEST12345698765432"
    )
    spans = detect(text)
    assert [s.kind for s in spans] == [
        EMAIL_ADDRESS,
        PHONE_NUMBER,
        CREDIT_CARD,
        API_KEY,
        IP_ADDRESS,
        US_SSN,
        IBAN_CODE,
    ]
    for a, b in zip(spans, spans[1:], strict=False):
        assert a.end <= b.start
    for s in spans:
        assert text[s.start : s.end] == s.text


def test_more_specific_kind_wins_an_overlap() -> None:
    # The card number also fits the phone pattern after a "call" cue: the card wins.
    assert found("call 4111 1111 1111 1111") == [(CREDIT_CARD, "4111 1111 1111 1111")]
    # An SSN after "phone" stays an SSN.
    assert found("SSN (phone it in): 460-89-9847") == [(US_SSN, "460-89-9847")]


def test_kinds_filter_and_validation() -> None:
    text = "a@b.io 8.8.8.8"
    assert found(text, {IP_ADDRESS}) == [(IP_ADDRESS, "8.8.8.8")]
    assert found(text, set()) == []
    with pytest.raises(ValueError):
        detect(text, {"NOT_A_KIND"})
    assert kinds_found("a@b.io, c@d.io, 8.8.8.8") == {EMAIL_ADDRESS: 2, IP_ADDRESS: 1}
    assert detect("") == []


def test_span_repr_hides_value() -> None:
    span = detect("a.secret.person@example.com")[0]
    assert "example.com" not in repr(span)
    assert isinstance(span, PiiSpan) and span.kind == EMAIL_ADDRESS


# --------------------------------------------------------------------------- redaction


def test_redaction_round_trip_and_stable_placeholders() -> None:
    text = (
        "Email ann@example.com and bob@example.com; again ann@example.com. "
        "Call +44 20 7946 0958. Key " + AWS_KEY
    )
    r = Redactor()
    red = r.redact(text, detect(text))
    assert red == (
        "Email <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_2>; again <EMAIL_ADDRESS_1>. "
        "Call <PHONE_NUMBER_1>. Key <API_KEY_1>"
    )
    assert r.restore(red) == text
    # The same value in a later message of the same request keeps its placeholder.
    assert r.redact("cc ann@example.com", detect("cc ann@example.com")) == "cc <EMAIL_ADDRESS_1>"
    # A fresh redactor (next request) starts over and knows nothing of the old values.
    assert Redactor().restore(red) == red


def test_restore_leaves_unknown_placeholders() -> None:
    r = Redactor()
    r.redact("a@b.io", detect("a@b.io"))
    assert r.restore("<EMAIL_ADDRESS_1> <EMAIL_ADDRESS_7> <b>") == "a@b.io <EMAIL_ADDRESS_7> <b>"


def test_placeholder_already_in_text_is_not_reused() -> None:
    text = "literal <EMAIL_ADDRESS_1> and real x@y.io"
    r = Redactor()
    red = r.redact(text, detect(text))
    assert red == "literal <EMAIL_ADDRESS_1> and real <EMAIL_ADDRESS_2>"
    assert r.restore(red) == text


def test_redact_rejects_spans_from_another_text() -> None:
    spans = detect("mail a@b.io")
    with pytest.raises(ValueError):
        Redactor().redact("mail c@d.io", spans)


def test_redactor_repr_and_pickle_hide_values() -> None:
    r = Redactor()
    text = "ann@example.com 460-89-9847 " + OPENAI_KEY
    r.redact(text, detect(text))
    for shown in (repr(r), str(r), f"{r}", repr(r.stream_restorer())):
        assert "ann@" not in shown and "460-89" not in shown and OPENAI_KEY not in shown
    assert "values=3" in repr(r)
    with pytest.raises(TypeError):
        pickle.dumps(r)
    with pytest.raises(TypeError):
        copy.deepcopy(r)


# --------------------------------------------------------------------------- streaming


def _make_redactor() -> tuple[Redactor, str]:
    r = Redactor()
    r.redact("ann@example.com bob@example.com", detect("ann@example.com bob@example.com"))
    return r, "Sure, <EMAIL_ADDRESS_1> ok, cc <EMAIL_ADDRESS_2>; a < b <not a tag> <EMAIL"


def test_stream_restorer_split_placeholder() -> None:
    r, _ = _make_redactor()
    sr = r.stream_restorer()
    first = sr.feed("Mail <EMAIL_ADD")
    assert first == "Mail "  # the fragment is held, never emitted half-done
    second = sr.feed("RESS_1> ok")
    assert second == "ann@example.com ok"
    assert sr.flush() == ""


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 1000])
def test_stream_restorer_any_chunking(size: int) -> None:
    r, answer = _make_redactor()
    sr = r.stream_restorer()
    prefixes = {p[:k] for p in r.placeholders for k in range(1, len(p))}
    out = []
    for i in range(0, len(answer), size):
        piece = sr.feed(answer[i : i + size])
        # Nothing emitted mid-stream ends in what could be the start of a placeholder.
        assert not any(piece.endswith(prefix) for prefix in prefixes), piece
        out.append(piece)
    out.append(sr.flush())
    assert "".join(out) == r.restore(answer)
    assert "<EMAIL_ADDRESS_1>" not in "".join(out)


def test_stream_restorer_does_not_hold_ordinary_text() -> None:
    r, _ = _make_redactor()
    sr = r.stream_restorer()
    assert sr.feed("if a < b and c > d") == "if a < b and c > d"
    assert sr.feed(" <") == " "  # the "<" could still become a placeholder
    assert sr.feed("div>") == "<div>"
    assert sr.feed("end <EMAIL_ADDRESS_1") == "end "
    assert sr.flush() == "<EMAIL_ADDRESS_1"  # the stream ended: give back what was held


def test_stream_restorer_without_placeholders_is_passthrough() -> None:
    sr = Redactor().stream_restorer()
    assert sr.feed("<EMAIL_ADD") == "<EMAIL_ADD"
    assert sr.feed("") == ""


# --------------------------------------------------------------------------- messages


def test_redact_messages_multimodal_and_tool_calls() -> None:
    messages = [
        {"role": "system", "content": "You are helpful."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "I am at ann@example.com, card 4111 1111 1111 1111"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "also ann@example.com"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"ip": "8.8.8.8"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "owner phone +1-984-182-0190"},
    ]
    original = copy.deepcopy(messages)
    r = Redactor()
    out, counts = redact_messages(messages, r)
    assert messages == original  # inputs untouched
    parts = out[1]["content"]
    assert parts[0]["text"] == "I am at <EMAIL_ADDRESS_1>, card <CREDIT_CARD_1>"
    assert parts[1] == original[1]["content"][1]
    assert parts[2]["text"] == "also <EMAIL_ADDRESS_1>"
    assert out[2]["tool_calls"][0]["function"]["arguments"] == '{"ip": "<IP_ADDRESS_1>"}'
    assert out[2]["content"] is None
    assert out[3]["content"] == "owner phone <PHONE_NUMBER_1>"
    assert out[0] == original[0]
    assert counts == {EMAIL_ADDRESS: 2, CREDIT_CARD: 1, IP_ADDRESS: 1, PHONE_NUMBER: 1}
    assert r.restore(parts[0]["text"]) == original[1]["content"][0]["text"]


def test_redact_messages_respects_kinds() -> None:
    out, counts = redact_messages(
        [{"role": "user", "content": "a@b.io 8.8.8.8"}], Redactor(), kinds={IP_ADDRESS}
    )
    assert out[0]["content"] == "a@b.io <IP_ADDRESS_1>"
    assert counts == {IP_ADDRESS: 1}


# --------------------------------------------------------------------------- large inputs
# Timings (2 KB, and worst-case inputs at 1x and 2x size) are measured in bench/pii_speed.py.


def test_detect_2kb_finds_every_repeat() -> None:
    unit = (
        "Hi, I'm writing about order 1234 from 2024-03-01. Please call me on 0490 75 40 81 or "
        "mail ann@example.com; card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00. "
        "The server 8.8.8.8 logged version 1.2.3 at 12:30. Ship to 742 Evergreen Terrace. "
    )
    text = (unit * (2048 // len(unit) + 1))[:2048]
    found = detect(text)
    assert len(found) >= 5 * (2048 // len(unit))
    assert {EMAIL_ADDRESS, CREDIT_CARD, IBAN_CODE, IP_ADDRESS} <= {f.kind for f in found}


@pytest.mark.parametrize(
    "text",
    ["a@" * 5000, "1 2 3 4 5 6 7 8 9 0 " * 500, "::1:" * 2500, "token=" + "a1" * 5000],
    ids=["at-signs", "spaced-digits", "colons", "long-value"],
)
def test_adversarial_input_has_no_false_spans_and_keeps_a_real_one(text: str) -> None:
    # 10 KB of worst-case input: nothing in it is PII, and a real value in its middle is still
    # found (the scan's windows and bounded repeats do not lose it).
    assert detect(text) == []
    half = len(text) // 2
    mixed = text[:half] + " mail ann@example.com now " + text[half:]
    assert [(f.kind, f.text) for f in detect(mixed)] == [(EMAIL_ADDRESS, "ann@example.com")]


def test_module_exports() -> None:
    for name in pii.__all__:
        assert hasattr(pii, name)


def test_name_finder_addresses_join_the_patterns() -> None:
    """A finder with `entities` adds its addresses to STREET_ADDRESS (the patterns still run
    and win ties by length); one with only `spans` adds names and nothing else."""
    from dataclasses import dataclass

    @dataclass
    class Span:
        start: int
        end: int

    @dataclass
    class Ents:
        names: list
        addresses: list

    text = "Send it to Anna at Mellemvej 32, 5000 Odense or to 221B Baker Street."

    class NamesOnly:
        def spans(self, t: str) -> list:
            return [Span(t.index("Anna"), t.index("Anna") + 4)]

    class WithAddresses(NamesOnly):
        def entities(self, t: str) -> Ents:
            a = t.index("5000 Odense")
            return Ents(self.spans(t), [Span(a, a + len("5000 Odense"))])

    base = {(s.kind, s.text) for s in pii.detect(text, names=NamesOnly())}
    more = {(s.kind, s.text) for s in pii.detect(text, names=WithAddresses())}
    assert (pii.PERSON, "Anna") in base and (pii.PERSON, "Anna") in more
    assert (pii.STREET_ADDRESS, "5000 Odense") in more - base
    assert {k for k, _ in base if k == pii.STREET_ADDRESS} <= {k for k, _ in more}
    # the tagger's addresses only count when STREET_ADDRESS is asked for
    only_names = pii.detect(text, [pii.PERSON], WithAddresses())
    assert {s.kind for s in only_names} == {pii.PERSON}
