"""Person names in PII: the shipped MiniLM token classifier (routing.safety.person_names)
merged with the structured detectors of routing.safety.pii, redaction and streamed restoration
with names, bad input. Offline; the tagger is loaded once per module."""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from routing.safety import pii
from routing.safety.person_names import ARTIFACTS, NAME, NameSpan, PersonTagger

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def tagger() -> PersonTagger:
    return PersonTagger.load()


def names(tagger: PersonTagger, text: str) -> list[str]:
    return [text[s.start : s.end] for s in tagger.spans(text)]


def test_artifact_is_small_and_loads(tagger: PersonTagger) -> None:
    assert (ARTIFACTS / f"{NAME}.safetensors").stat().st_size < 5 * 2**20
    held = tagger.model.meta["heldout"]["all"]
    assert held["gold"] > 0 and held["recall"] is not None


def test_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train.person_names"):
        PersonTagger.load(tmp_path)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("My colleague Priya Raman will join the call.", ["Priya Raman"]),
        ("Best regards,\nTomasz Wójcik", ["Tomasz Wójcik"]),
        ("i had lunch with maria gonzalez yesterday", ["maria gonzalez"]),
        ("PLEASE FORWARD THIS TO JOHN MILLER", ["JOHN MILLER"]),
    ],
)
def test_names_in_any_case_and_place(tagger: PersonTagger, text: str, want: list[str]) -> None:
    assert names(tagger, text) == want


def test_ordinary_prompts_have_no_names(tagger: PersonTagger) -> None:
    texts = [
        "What is the capital of France?",
        "Write a Python function that sorts a list of tuples by the second item.",
        "Ask ChatGPT to rewrite the paragraph in a formal tone.",
        "How many clips did she sell altogether in April and May?",
    ]
    assert [names(tagger, t) for t in texts] == [[], [], [], []]


def test_spans_are_whole_words(tagger: PersonTagger) -> None:
    text = "Thanks, Oluwaseun Adeyemi-Okafor"
    for s in tagger.spans(text):
        assert s.start == 0 or not text[s.start - 1].isalnum()
        assert s.end == len(text) or not text[s.end].isalnum()


def test_merged_with_structured_kinds(tagger: PersonTagger) -> None:
    text = "Contact Anna Schmidt at anna.schmidt@example.com or +49 30 1234567."
    got = {(s.kind, s.text) for s in pii.detect(text, names=tagger)}
    # overlap, as bench/pii_eval.py counts it (exact boundaries are reported there too)
    assert any(k == pii.PERSON and "Anna" in t for k, t in got)
    assert (pii.EMAIL_ADDRESS, "anna.schmidt@example.com") in got  # the email wins its overlap
    assert not any(s.kind == pii.PERSON and "@" in s.text for s in pii.detect(text, names=tagger))
    # without a finder the default kinds stay structured only
    assert pii.PERSON not in {s.kind for s in pii.detect(text)}
    # a team that asks for emails only gets emails only
    assert {s.kind for s in pii.detect(text, [pii.EMAIL_ADDRESS], tagger)} == {pii.EMAIL_ADDRESS}


def test_redaction_and_stream_restoration_are_exact(tagger: PersonTagger) -> None:
    msgs = [{"role": "user", "content": "Write a thank-you note to Camille Dubois and "
             "Kenji Watanabe; cc camille@example.org."}]  # fmt: skip
    red = pii.Redactor()
    out, counts = pii.redact_messages(msgs, red, None, tagger)
    assert counts.get(pii.PERSON) == 2 and counts.get(pii.EMAIL_ADDRESS) == 1
    text = out[0]["content"]
    assert "Camille" not in text and "Kenji" not in text and "<PERSON_1>" in text
    answer = f"Dear {text.split('to ')[1].split(' and')[0]}, thank you."
    assert red.restore(answer) == "Dear Camille Dubois, thank you."
    sr = red.stream_restorer()
    pieces = [answer[i : i + 3] for i in range(0, len(answer), 3)]
    assert "".join(sr.feed(p) for p in pieces) + sr.flush() == red.restore(answer)


@pytest.mark.parametrize(
    "text",
    ["", " ", "😀" * 500, "x" * 200_000, b"\xff\xfeab".decode("utf-8", "surrogateescape")],
)
def test_bad_input(tagger: PersonTagger, text: str) -> None:
    spans = tagger.spans(text)
    assert all(isinstance(s, NameSpan) and 0 <= s.start < s.end <= len(text) for s in spans)
    pii.detect(text, names=tagger)


@pytest.mark.skipif(not (SHARED / "pii").exists(), reason="needs ../shared/data")
def test_split_shares_no_template() -> None:
    from train.person_names import build

    d = build(SHARED, n_faker=200)
    fam_tr = {s.family for s in d["train"] if s.source in ("presidio", "faker")}
    fam_te = {s.family for s in d["test"]}
    assert fam_tr and fam_te and not fam_tr & fam_te
